"""Tenant limits, profiles and TenantService over the real SQLite store."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from studioctl.errors import ConflictError, GatewayError, NotFoundError, UsageError
from studioctl.gateway.auth import Authenticator
from studioctl.gateway.limits import Limiter
from studioctl.gateway.usage import MemoryUsageQueue, NullUsageQueue
from studioctl.store.migrations import migrate
from studioctl.store.sqlite import SqliteDatabase as Database
from studioctl.store.usage import UsageRecord, UsageRepo, UsageWriter
from studioctl.tenants import (
    LIMIT_FIELDS,
    PROFILES,
    TenantLimits,
    TenantService,
    normalize_allowed_models,
    profiles_dict,
    resolve_limits,
    validate_tenant_name,
)
from studioctl.tenants.keys import hash_key

# -- profiles and limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "values"),
    [
        ("conservative", (1, 60, 30_000, 4096, 256)),
        ("standard", (2, 180, 120_000, 8192, 512)),
        ("pro", (4, 600, 400_000, 16384, 1024)),
    ],
)
def test_profiles_have_the_seed_gateway_values(profile: str, values: tuple[int, ...]) -> None:
    limits = PROFILES[profile]
    assert tuple(getattr(limits, f) for f in LIMIT_FIELDS) == values
    assert limits.allowed_models is None
    assert resolve_limits(profile, {}) == limits


def test_overrides_replace_single_fields() -> None:
    limits = resolve_limits("standard", {"rpm": 30, "max_output_tokens": "128", "tpm": None})
    assert limits == TenantLimits(
        max_concurrent=2, rpm=30, tpm=120_000, max_context_tokens=8192, max_output_tokens=128
    )


def test_allowed_models_override() -> None:
    limits = resolve_limits("pro", {"allowed_models": ["tiny", "big", "tiny"]})
    assert limits.allowed_models == ("tiny", "big")
    assert limits.allows("tiny") and not limits.allows("other")
    assert PROFILES["pro"].allows("anything")


def test_unknown_profile_is_named() -> None:
    with pytest.raises(UsageError, match=r"unknown limits profile 'gold'.*conservative"):
        resolve_limits("gold", {})


def test_unknown_field_is_named() -> None:
    with pytest.raises(UsageError, match="unknown limit 'rps'") as info:
        resolve_limits("standard", {"rps": 3})
    assert info.value.to_dict()["param"] == "rps"


@pytest.mark.parametrize("bad", [0, -5, 1.5, "ten", "", True, [3]])
def test_bad_limit_values_are_named(bad: Any) -> None:
    with pytest.raises(UsageError, match="limit 'tpm' must be a whole number") as info:
        resolve_limits("standard", {"tpm": bad})
    assert info.value.exit_code == 2
    assert info.value.to_dict()["param"] == "tpm"


def test_limits_cannot_be_built_with_nonsense() -> None:
    with pytest.raises(UsageError, match="'rpm'"):
        TenantLimits(max_concurrent=1, rpm=0, tpm=1, max_context_tokens=1, max_output_tokens=1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ([], None),
        (["*"], None),
        ("*", None),
        ("tiny, big", ("tiny", "big")),
        (("a",), ("a",)),
        ([" a ", "b"], ("a", "b")),
    ],
)
def test_normalize_allowed_models(raw: Any, expected: tuple[str, ...] | None) -> None:
    assert normalize_allowed_models(raw) == expected


@pytest.mark.parametrize("raw", [[""], [3], {"a": 1}, ["*", "tiny"], 7])
def test_bad_allowed_models(raw: Any) -> None:
    with pytest.raises(UsageError, match="allowed_models"):
        normalize_allowed_models(raw)


@pytest.mark.parametrize("name", ["acme", "Team-7", "a", "x.y_z", "9lives"])
def test_valid_tenant_names(name: str) -> None:
    assert validate_tenant_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "has space", "t_123", "anonymous", "a" * 65, "é"])
def test_invalid_tenant_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid tenant name"):
        validate_tenant_name(name)


# -- TenantService over the real store ---------------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "state.db")
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def wall() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
def svc(db: Database, wall: Clock) -> TenantService:
    return TenantService(db, clock=wall)


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def wired(svc: TenantService, wall: Clock, ttl: float = 3600.0) -> Authenticator:
    """An authenticator with a long cache, invalidated by the service like in the daemon."""
    auth = Authenticator(svc.lookup, clock=wall, wall_clock=wall, cache_ttl_s=ttl)
    svc.subscribe(auth.invalidate)
    return auth


def status_of(auth: Authenticator, key: str) -> int:
    try:
        auth.authenticate(bearer(key))
    except GatewayError as exc:
        return exc.http_status
    return 200


def test_create_returns_the_tenant_and_a_working_key(svc: TenantService, wall: Clock) -> None:
    info, key = svc.create("acme", profile="pro", overrides={"rpm": 30})
    assert info.id.startswith("t_") and info.name == "acme" and info.enabled
    assert info.profile == "pro" and info.overrides == {"rpm": 30}
    assert info.limits == dataclasses.replace(PROFILES["pro"], rpm=30)
    assert info.created_at == info.updated_at == wall.t
    assert key.startswith("sk-st-")
    ctx = svc.lookup(hash_key(key))
    assert ctx is not None
    assert (ctx.tenant_id, ctx.name, ctx.enabled) == (info.id, "acme", True)
    assert ctx.limits == info.limits and ctx.key_prefix == key[:14]
    assert ctx.key_expires_at is None
    assert svc.lookup(hash_key(key + "x")) is None


def test_the_store_never_holds_the_plaintext_key(svc: TenantService, db: Database) -> None:
    _, key = svc.create("acme")
    svc.create_key("acme")
    rows = db.query("SELECT * FROM api_keys")
    assert len(rows) == 2
    cells = [str(row[k]) for row in rows for k in row.keys()]  # noqa: SIM118 - sqlite3.Row
    assert not any(key in c or key[14:] in c for c in cells)
    assert hash_key(key) in cells
    db.close()
    blob = b"".join(p.read_bytes() for p in db.path.parent.glob("state.db*"))
    assert key[14:].encode() not in blob


def test_create_with_allowed_models(svc: TenantService) -> None:
    info, key = svc.create("acme", allowed_models=["tiny", "tiny-alias"])
    assert info.limits.allowed_models == ("tiny", "tiny-alias")
    ctx = svc.lookup(hash_key(key))
    assert ctx is not None and ctx.limits.allows("tiny") and not ctx.limits.allows("big")
    info2, _ = svc.create("beta", overrides={"allowed_models": "a,b"})
    assert info2.limits.allowed_models == ("a", "b")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile": "gold"}, "unknown limits profile 'gold'"),
        ({"overrides": {"rps": 3}}, "unknown limit 'rps'"),
        ({"overrides": {"tpm": -1}}, "limit 'tpm' must be a whole number"),
        ({"allowed_models": [""]}, "allowed_models"),
    ],
)
def test_bad_create_is_refused_and_leaves_nothing(
    svc: TenantService, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        svc.create("acme", **kwargs)
    assert svc.list() == []


@pytest.mark.parametrize("name", ["anonymous", "t_abc", "bad name", ""])
def test_reserved_and_bad_names_are_refused(svc: TenantService, name: str) -> None:
    with pytest.raises(UsageError, match="invalid tenant name"):
        svc.create(name)


def test_duplicate_names_conflict_case_insensitively(svc: TenantService, db: Database) -> None:
    svc.create("acme")
    with pytest.raises(ConflictError, match="'Acme' already exists"):
        svc.create("Acme")
    assert [t.name for t in svc.list()] == ["acme"]
    assert len(db.query("SELECT * FROM api_keys")) == 1  # the refused create left no key


def test_get_by_id_or_name_and_not_found(svc: TenantService) -> None:
    info, _ = svc.create("acme")
    assert svc.get(info.id) == info == svc.get("acme")
    with pytest.raises(NotFoundError, match="'nobody'"):
        svc.get("nobody")


def test_list_is_sorted_by_name(svc: TenantService) -> None:
    for name in ("zeta", "alpha", "mid"):
        svc.create(name)
    assert [t.name for t in svc.list()] == ["alpha", "mid", "zeta"]


def test_set_merges_overrides_and_none_resets_one(svc: TenantService, wall: Clock) -> None:
    svc.create("acme", overrides={"rpm": 30, "tpm": 1000})
    wall.t += 5
    info = svc.set("acme", overrides={"rpm": None, "max_concurrent": "3"})
    assert info.overrides == {"tpm": 1000, "max_concurrent": 3}
    assert info.limits.rpm == PROFILES["standard"].rpm and info.limits.max_concurrent == 3
    assert info.updated_at == info.created_at + 5
    info = svc.set("acme", profile="pro")  # overrides stay on the new profile
    assert info.limits == dataclasses.replace(PROFILES["pro"], tpm=1000, max_concurrent=3)


def test_set_allowed_models_and_back_to_all(svc: TenantService) -> None:
    svc.create("acme")
    assert svc.set("acme", allowed_models=["tiny"]).limits.allowed_models == ("tiny",)
    assert svc.set("acme", enabled=False).limits.allowed_models == ("tiny",)  # untouched
    assert svc.set("acme", allowed_models=[]).limits.allowed_models is None
    assert svc.set("acme", overrides={"allowed_models": "a"}).limits.allowed_models == ("a",)
    assert svc.set("acme", overrides={"allowed_models": None}).limits.allowed_models is None


def test_bad_set_changes_nothing(svc: TenantService) -> None:
    before, _ = svc.create("acme", overrides={"rpm": 30})
    with pytest.raises(UsageError, match="unknown limit 'rpmm'"):
        svc.set("acme", overrides={"rpmm": 3})
    with pytest.raises(UsageError, match="unknown limits profile 'x'"):
        svc.set("acme", profile="x")
    with pytest.raises(NotFoundError):
        svc.set("ghost", enabled=False)
    assert svc.get("acme") == before


def test_limit_change_applies_to_the_next_request(svc: TenantService, wall: Clock) -> None:
    auth = wired(svc, wall)
    limiter = Limiter(global_max_concurrent=100, clock=wall)
    _, key = svc.create("acme")  # standard: 2 concurrent, 180 rpm
    held = limiter.admit(auth.authenticate(bearer(key)), prompt_tokens=1, max_output_tokens=1)
    svc.set("acme", overrides={"max_concurrent": 1, "rpm": 2})
    ctx = auth.authenticate(bearer(key))
    assert (ctx.limits.max_concurrent, ctx.limits.rpm) == (1, 2)
    with pytest.raises(GatewayError) as info:
        limiter.admit(ctx, prompt_tokens=1, max_output_tokens=1)
    assert info.value.code == "limit_concurrent"
    held.finish(actual_tokens=2)
    # The RPM bucket shrank to its new capacity of 2: one request left, then 30 s apart.
    limiter.admit(ctx, prompt_tokens=1, max_output_tokens=1).finish(actual_tokens=2)
    limiter.admit(ctx, prompt_tokens=1, max_output_tokens=1).finish(actual_tokens=2)
    with pytest.raises(GatewayError) as info:
        limiter.admit(ctx, prompt_tokens=1, max_output_tokens=1)
    assert info.value.code == "limit_rpm" and info.value.retry_after == pytest.approx(30.0)


def test_disable_and_enable_apply_to_the_next_request(svc: TenantService, wall: Clock) -> None:
    auth = wired(svc, wall)
    _, key = svc.create("acme")
    assert status_of(auth, key) == 200
    svc.set("acme", enabled=False)
    assert status_of(auth, key) == 403
    svc.set("acme", enabled=True)
    assert status_of(auth, key) == 200


def test_delete_removes_tenant_and_keys(svc: TenantService, db: Database, wall: Clock) -> None:
    auth = wired(svc, wall)
    info, key = svc.create("acme")
    svc.create_key(info)
    assert status_of(auth, key) == 200
    assert svc.delete("acme").id == info.id
    assert status_of(auth, key) == 401
    assert db.query("SELECT * FROM api_keys") == []
    with pytest.raises(NotFoundError):
        svc.delete("acme")


def test_several_keys_and_list_shows_prefixes_only(svc: TenantService, wall: Clock) -> None:
    info, first = svc.create("acme")
    wall.t += 1
    second = svc.create_key("acme")
    assert first != second
    assert svc.lookup(hash_key(first)) is not None
    assert svc.lookup(hash_key(second)) is not None
    keys = svc.list_keys("acme")
    assert [k.prefix for k in keys] == [first[:14], second[:14]]
    assert all(k.status == "active" and k.tenant_id == info.id for k in keys)
    for k in keys:
        data = k.to_dict()
        assert "key_hash" not in data and "hash" not in data
        text = repr(data)
        assert hash_key(first) not in text and hash_key(second) not in text
        assert first[14:] not in text and second[14:] not in text


def test_rotate_keeps_old_keys_for_the_grace_period(svc: TenantService, wall: Clock) -> None:
    auth = wired(svc, wall)
    _, old = svc.create("acme")
    assert status_of(auth, old) == 200
    wall.t += 1
    new = svc.rotate_key("acme", grace_s=600)
    assert status_of(auth, new) == 200
    assert status_of(auth, old) == 200
    expiry = {k.prefix: k.expires_at for k in svc.list_keys("acme")}
    assert expiry == {old[:14]: wall.t + 600, new[:14]: None}
    wall.t += 599
    assert status_of(auth, old) == 200  # served from the cache…
    wall.t += 2
    assert status_of(auth, old) == 401  # …but never past the key's expiry
    assert status_of(auth, new) == 200
    assert [k.status for k in svc.list_keys("acme")] == ["expired", "active"]


def test_rotate_default_grace_is_a_day(svc: TenantService, wall: Clock) -> None:
    _, old = svc.create("acme")
    svc.rotate_key("acme")
    ctx = svc.lookup(hash_key(old))
    assert ctx is not None and ctx.key_expires_at == wall.t + 86_400


def test_rotate_with_zero_grace_revokes_at_once(svc: TenantService, wall: Clock) -> None:
    auth = wired(svc, wall)
    _, old = svc.create("acme")
    wall.t += 1
    extra = svc.create_key("acme")
    assert status_of(auth, old) == status_of(auth, extra) == 200
    wall.t += 1
    new = svc.rotate_key("acme", grace_s=0)
    assert status_of(auth, old) == status_of(auth, extra) == 401
    assert status_of(auth, new) == 200
    assert [k.status for k in svc.list_keys("acme")] == ["revoked", "revoked", "active"]


def test_rotate_refuses_negative_grace(svc: TenantService) -> None:
    svc.create("acme")
    with pytest.raises(UsageError, match="grace"):
        svc.rotate_key("acme", grace_s=-1)
    assert len(svc.list_keys("acme")) == 1


def test_revoke_by_prefix_applies_to_the_very_next_request(svc: TenantService, wall: Clock) -> None:
    auth = wired(svc, wall)
    _, key = svc.create("acme")
    other = svc.create_key("acme")
    assert status_of(auth, key) == 200
    revoked = svc.revoke_key(key[:14])
    assert revoked.status == "revoked" and revoked.revoked_at == wall.t
    assert status_of(auth, key) == 401
    assert status_of(auth, other) == 200


def test_revoke_by_id_within_a_tenant(svc: TenantService, wall: Clock) -> None:
    auth = wired(svc, wall)
    svc.create("acme")
    _, beta_key = svc.create("beta")
    beta_id = svc.list_keys("beta")[0].id
    with pytest.raises(NotFoundError):
        svc.revoke_key(beta_id, tenant="acme")
    assert status_of(auth, beta_key) == 200
    svc.revoke_key(beta_id, tenant="beta")
    assert status_of(auth, beta_key) == 401
    with pytest.raises(NotFoundError, match="sk-st-nothing"):
        svc.revoke_key("sk-st-nothing")


def test_every_change_notifies(db: Database, wall: Clock) -> None:
    calls: list[int] = []
    svc = TenantService(db, clock=wall, on_change=lambda: calls.append(1))
    svc.create("acme")
    svc.set("acme", enabled=False)
    svc.create_key("acme")
    svc.rotate_key("acme", grace_s=10)
    svc.revoke_key(svc.list_keys("acme")[0].id)
    svc.delete("acme")
    assert len(calls) == 6
    svc.list()
    svc.lookup("0" * 64)
    assert len(calls) == 6  # reads do not


def test_last_used_is_kept_in_memory_and_flushed(
    svc: TenantService, db: Database, wall: Clock
) -> None:
    _, key = svc.create("acme")
    assert svc.list_keys("acme")[0].last_used_at is None
    wall.t += 30
    svc.lookup(hash_key(key))
    assert db.query("SELECT last_used_at FROM api_keys")[0]["last_used_at"] is None  # no I/O
    assert svc.list_keys("acme")[0].last_used_at == wall.t  # list flushes first
    assert db.query("SELECT last_used_at FROM api_keys")[0]["last_used_at"] == wall.t
    assert svc.flush_last_used() == 0


def test_profiles_dict() -> None:
    data = profiles_dict()
    assert list(data) == ["conservative", "standard", "pro"]
    assert data["standard"]["rpm"] == 180 and data["pro"]["allowed_models"] is None


def test_a_tenants_usage_rows_reach_the_store_through_the_writer(
    svc: TenantService, db: Database, wall: Clock
) -> None:
    # The gateway's rows are the store's UsageRecord (built by keyword): the real
    # UsageWriter takes them and the summary counts them for the tenant.
    info, key = svc.create("acme")
    ctx = svc.lookup(hash_key(key))
    assert ctx is not None
    common = {"ts": wall.t, "tenant_id": ctx.tenant_id, "key_prefix": ctx.key_prefix}
    rows = [
        UsageRecord(**common, model="tiny", instance_id="tiny-1", status=200, prompt_tokens=12,
                    completion_tokens=30, ttft_ms=15.0, duration_ms=120.0, streamed=True),
        UsageRecord(**common, model="tiny", instance_id="tiny-1", status=200, prompt_tokens=12,
                    completion_tokens=4, ttft_ms=15.0, duration_ms=40.0, streamed=True,
                    disconnected=True, error_code="client_disconnected"),
        UsageRecord(**common, model="tiny", status=429, duration_ms=0.3, error_code="limit_rpm"),
    ]  # fmt: skip
    repo = UsageRepo(db)
    writer = UsageWriter(repo)
    try:
        for row in rows:
            writer.submit(row)
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    assert writer.dropped == 0 and writer.written == 3
    stored = repo.rows(tenant=info.id)
    assert sorted(r.completion_tokens for r in stored) == [0, 4, 30]
    assert {r.key_prefix for r in stored} == {key[:14]}
    summary = repo.summary(3600, tenant=info.id, now=wall.t)
    stats = summary.by_tenant[info.id]
    assert (stats.requests, stats.errors, stats.disconnected) == (3, 2, 1)
    assert (stats.prompt_tokens, stats.completion_tokens) == (24, 34)


def test_usage_queues() -> None:
    row = UsageRecord(ts=1.5, tenant_id="t_1", key_prefix="sk-st-x", model="m", status=200)
    sink = MemoryUsageQueue()
    sink.submit(row)
    NullUsageQueue().submit(row)
    assert sink.rows == [row]
