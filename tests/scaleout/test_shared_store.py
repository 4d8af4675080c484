"""Two daemons sharing one PostgreSQL store: tenants and keys made on one work on the other,
a key revoked on one is refused by the other on the very next request (the change feed,
LISTEN/NOTIFY, drained before each authentication), usage rows from both land in the one
database and equal the requests answered, and each daemon sees only its own instances."""

from __future__ import annotations

import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import assert_error, chat, create_tenant
from helpers import wait_for
from studioctl.store import UsageRepo
from studioctl.store.postgres import PostgresDatabase

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def control(d: Daemon, method: str, path: str, body: object = None) -> dict[str, object]:
    with d.client() as c:
        out: dict[str, object] = c.request(method, path, json_body=body)
    return out


def test_a_tenant_created_on_a_works_on_b(shared_pair: tuple[Daemon, Daemon]) -> None:
    a, b = shared_pair
    _, key = create_tenant(a, "made-on-a")
    resp = chat(b, key, "alpha")
    assert resp.status_code == 200, resp.text
    listed = {t["name"] for t in b.cli_json("tenant", "list", "--json")["tenants"]}
    assert "made-on-a" in listed


def test_a_key_revoked_on_a_is_refused_on_b_at_once(shared_pair: tuple[Daemon, Daemon]) -> None:
    a, b = shared_pair
    create_tenant(a, "revokes")
    for _ in range(25):
        key = str(control(a, "POST", "/tenants/revokes/keys")["key"])
        assert chat(b, key, "alpha").status_code == 200  # B has it cached now
        control(a, "POST", f"/keys/{key[:14]}/revoke", {})
        assert_error(chat(b, key, "alpha"), 401, "invalid_api_key")


def test_a_tenant_disabled_on_b_is_refused_on_a_at_once(
    shared_pair: tuple[Daemon, Daemon],
) -> None:
    a, b = shared_pair
    _, key = create_tenant(a, "toggles")
    for _ in range(10):
        assert chat(a, key, "alpha").status_code == 200
        control(b, "PATCH", "/tenants/toggles", {"enabled": False})
        assert_error(chat(a, key, "alpha"), 403, "tenant_disabled")
        control(b, "PATCH", "/tenants/toggles", {"enabled": True})


def test_usage_of_both_lands_in_the_one_database(
    shared_pair: tuple[Daemon, Daemon], shared_url: str
) -> None:
    a, b = shared_pair
    tenant, key = create_tenant(a, "counted")
    answered = 0
    for i in range(60):
        resp = chat(a if i % 2 else b, key, "alpha")
        assert resp.status_code == 200, resp.text
        answered += 1
    with PostgresDatabase(shared_url) as db:
        repo = UsageRepo(db)

        def rows() -> int:
            return len(repo.rows(tenant=str(tenant["id"]), limit=1000))

        wait_for(lambda: rows() == answered, timeout=10, what="every usage row")
        by_instance = {r.instance_id for r in repo.rows(tenant=str(tenant["id"]), limit=1000)}
    assert len(by_instance) == 2  # each daemon served from its own engine


def test_instance_rows_are_each_daemons_own(
    shared_pair: tuple[Daemon, Daemon], shared_url: str
) -> None:
    a, b = shared_pair
    mine_a = {i["id"] for i in a.ps()}
    mine_b = {i["id"] for i in b.ps()}
    assert mine_a and mine_b and not mine_a & mine_b
    with PostgresDatabase(shared_url) as db:
        owners = {r["id"]: r["owner"] for r in db.query("SELECT id, owner FROM instances")}
    assert set(owners) >= mine_a | mine_b
    assert len({owners[i] for i in mine_a}) == 1
    assert {owners[i] for i in mine_a}.isdisjoint({owners[i] for i in mine_b})
