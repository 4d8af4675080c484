"""PostgreSQL going away and coming back, on a private server each test stops and starts:
calls fail fast with StoreUnavailable (no hang), the store reconnects by itself, the usage
writer holds its rows meanwhile and writes them all when the server is back (beyond
``max_pending``, the oldest are dropped and counted), and the change feed raises while
down and reports the gap once it listens again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pg_server import PgServer, private_server
from studioctl.errors import StoreUnavailable
from studioctl.store import TenantRepo, UsageRecord, UsageRepo, UsageWriter
from studioctl.store.migrations import migrate
from studioctl.store.postgres import PostgresDatabase


@pytest.fixture
def server() -> Iterator[PgServer]:
    """A server of this test's own: stopping it must not disturb the session's."""
    with private_server() as pg:
        yield pg


def row(i: int) -> UsageRecord:
    return UsageRecord(ts=1000.0 + i, status=200, tenant_id="t_a", model="m", duration_ms=1.0)


def wait_for(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_calls_fail_fast_while_down_and_recover_by_themselves(server: PgServer) -> None:
    with PostgresDatabase(server.new_database(), connect_timeout_s=2) as db:
        migrate(db)
        TenantRepo(db).create("acme")
        server.stop("fast")
        for _ in range(20):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                TenantRepo(db).list()
            assert time.monotonic() - t0 < 2.5  # never a hang
        assert "***" not in str(info.value) and "unreachable" in str(info.value)
        assert not db.check()
        server.start()
        wait_for(db.check)  # reconnected without anyone asking
        assert [t.name for t in TenantRepo(db).list()] == ["acme"]


def test_no_usage_row_is_lost_in_a_short_outage(server: PgServer) -> None:
    with PostgresDatabase(server.new_database()) as db:
        migrate(db)
        repo = UsageRepo(db)
        writer = UsageWriter(repo, interval_s=0.02)
        try:
            for i in range(200):
                writer.submit(row(i))
            assert writer.flush(10)
            server.stop("fast")
            for i in range(200, 700):  # requests answered while the store is down
                writer.submit(row(i))
                time.sleep(0.002)
            wait_for(lambda: writer.failing)
            server.start()
            assert writer.flush(30)
            assert not writer.failing and writer.dropped == 0
        finally:
            writer.close()
        assert len(repo.rows()) == 700
        assert repo.summary(3600, now=1700.0).total.requests == 700


def test_beyond_the_bound_the_oldest_rows_are_dropped_and_counted(server: PgServer) -> None:
    with PostgresDatabase(server.new_database()) as db:
        migrate(db)
        repo = UsageRepo(db)
        writer = UsageWriter(repo, interval_s=0.02, max_pending=100)
        try:
            server.stop("fast")
            for i in range(300):
                writer.submit(row(i))
            wait_for(lambda: writer.dropped == 200)
            server.start()
            assert writer.flush(30)
        finally:
            writer.close()
        kept = sorted(r.ts for r in repo.rows())
        assert kept == [1000.0 + i for i in range(200, 300)]  # the newest 100


def test_the_change_feed_raises_while_down_and_reports_the_gap(server: PgServer) -> None:
    url = server.new_database()
    with PostgresDatabase(url) as a, PostgresDatabase(url) as b:
        migrate(a)
        feed_a, feed_b = a.change_feed(), b.change_feed()
        heard: list[int] = []
        feed_b.subscribe(lambda: heard.append(1))
        try:
            wait_for(lambda: feed_a.up and feed_b.up, 10)
            feed_b.poll()  # the start: everything is new
            heard.clear()
            assert feed_b.poll() is False
            feed_a.announce()  # returns once B's feed acknowledged
            assert feed_b.poll() is True and heard == [1]
            server.stop("fast")
            wait_for(lambda: not feed_b.up, 10)
            with pytest.raises(StoreUnavailable):
                feed_b.poll()
            server.start()

            def back() -> bool:
                try:
                    return feed_b.poll()
                except StoreUnavailable:
                    return False

            wait_for(back)  # True: changes may have been missed meanwhile
            assert len(heard) == 2
            wait_for(lambda: feed_a.up, 10)
            feed_a.announce()
            assert feed_b.poll() is True and len(heard) == 3
        finally:
            feed_a.close()
            feed_b.close()
