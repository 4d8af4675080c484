"""The key cache and the change feed without daemons: two ``TenantService``s on one
PostgreSQL database stand for two replicas. A key revoked (a tenant disabled) through one is
refused by the other's ``Authenticator`` on its very next call, every time; while the feed
or the store is down the authenticator fails closed with 503 ``store_unavailable``, or with
``fail_open`` keeps answering from its cache, even past the cache's TTL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import wait_for
from pg_server import PgServer
from studioctl.errors import GatewayError, StoreUnavailable
from studioctl.gateway.auth import Authenticator
from studioctl.store.feed import ChangeFeed
from studioctl.store.migrations import migrate
from studioctl.store.postgres import PostgresDatabase
from studioctl.tenants import TenantContext, TenantService


@pytest.fixture
def replicas(pg_server: PgServer) -> Iterator[tuple[TenantService, Authenticator]]:
    """Replica A's service (where changes are made) and replica B's authenticator."""
    url = pg_server.new_database()
    with PostgresDatabase(url) as a, PostgresDatabase(url) as b:
        migrate(a)
        feed_a, feed_b = a.change_feed(), b.change_feed()
        assert feed_a is not None and feed_b is not None
        service_a = TenantService(a)
        service_a.subscribe(feed_a.announce)  # as the daemon wires it
        service_b = TenantService(b)
        auth_b = Authenticator(service_b.lookup, refresh=feed_b.poll)
        service_b.subscribe(auth_b.invalidate)
        feed_b.subscribe(service_b.changed_elsewhere)
        wait_for(lambda: feed_a.up and feed_b.up, timeout=10)
        try:
            yield service_a, auth_b
        finally:
            feed_a.close()
            feed_b.close()


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def code(auth: Authenticator, key: str) -> str | None:
    try:
        auth.authenticate(bearer(key))
    except GatewayError as exc:
        return exc.code
    return None


def test_revocation_on_a_is_refused_by_b_on_the_next_call(
    replicas: tuple[TenantService, Authenticator],
) -> None:
    service_a, auth_b = replicas
    service_a.create("acme")
    for _ in range(200):
        key = service_a.create_key("acme")
        assert code(auth_b, key) is None  # now cached on B
        assert code(auth_b, key) is None
        service_a.revoke_key(key[:14])
        assert code(auth_b, key) == "invalid_api_key"


def test_a_tenant_disabled_on_a_is_refused_by_b_on_the_next_call(
    replicas: tuple[TenantService, Authenticator],
) -> None:
    service_a, auth_b = replicas
    service_a.create("acme")
    key = service_a.create_key("acme")
    for _ in range(50):
        assert code(auth_b, key) is None
        service_a.set("acme", enabled=False)
        assert code(auth_b, key) == "tenant_disabled"
        service_a.set("acme", enabled=True)


class Switch:
    """A change feed or a lookup that can be made to fail like an unreachable store."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def poll(self) -> bool:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("PostgreSQL at postgresql://h/db is unreachable")
        return False


def context() -> TenantContext:
    from studioctl.tenants import DEFAULT_LIMITS

    return TenantContext("t_1", "acme", True, DEFAULT_LIMITS, "sk-st-abcdefgh")


@pytest.mark.parametrize("fail_open", [False, True])
def test_an_unreachable_store_fails_closed_or_open(fail_open: bool) -> None:
    feed, store = Switch(), Switch()
    now = [0.0]

    def lookup(_: str) -> TenantContext | None:
        store.poll()
        return context()

    auth = Authenticator(
        lookup, refresh=feed.poll, fail_open=fail_open, clock=lambda: now[0], cache_ttl_s=30
    )
    key = "sk-st-" + "k" * 43
    assert code(auth, key) is None
    feed.down = store.down = True
    now[0] = 100.0  # past the cache's TTL as well
    auth.invalidate()  # as a feed coming back does, before the store answers again
    expected = None if fail_open else "store_unavailable"
    for _ in range(5):
        assert code(auth, key) == expected
    assert code(auth, "sk-st-" + "u" * 43) == "store_unavailable"  # never seen: no answer
    feed.down = store.down = False
    assert code(auth, key) is None


def test_polling_costs_no_io(pg_server: PgServer) -> None:
    """poll() runs before every request: with nothing pending it is an attribute read."""
    import time

    with PostgresDatabase(pg_server.new_database()) as db:
        feed = db.change_feed()
        assert isinstance(feed, ChangeFeed)
        try:
            wait_for(lambda: feed.up, timeout=10)
            feed.poll()
            t0 = time.perf_counter()
            for _ in range(10_000):
                assert feed.poll() is False
            assert (time.perf_counter() - t0) / 10_000 < 0.0001
        finally:
            feed.close()
