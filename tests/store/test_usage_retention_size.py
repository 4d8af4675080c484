"""The usage database stops growing: a long synthetic run (a fake clock, one day of rows per
step, pruned as the usage writer prunes) keeps its page count flat once every horizon is
reached, and the 30-day summary still counts every request of those 30 days after their
rows are gone (it answers from the roll-ups)."""

from __future__ import annotations

from pathlib import Path

from studioctl.store import UsageRecord, UsageRepo, open_database
from studioctl.store.usage import Pruner, Retention

DAY = 86400
STEP_S = 300  # one request every 5 minutes: 288 a day
TENANTS = ("t_a", "t_b")
# Short horizons so that the run reaches the steady state in a test's time: rows 7 days,
# hour roll-ups 14, day roll-ups 35 (the daemon: 90, 400, 3660).
RETENTION = Retention(days=7, hour_days=14, day_days=35)
DAYS = 60


def day_rows(day: int) -> list[UsageRecord]:
    start = day * DAY
    return [
        UsageRecord(
            ts=float(start + i * STEP_S + 7),
            status=200 if i % 10 else 500,
            tenant_id=TENANTS[i % 2],
            model="tiny",
            prompt_tokens=10 + i % 7,
            completion_tokens=20 + i % 5,
            duration_ms=50.0 + i % 100,
            request_id=f"r{day}-{i}",
        )
        for i in range(DAY // STEP_S)
    ]


def test_the_database_size_is_flat_over_a_long_run(tmp_path: Path) -> None:
    db = open_database(tmp_path / "long.db")
    clock = [0.0]
    repo = UsageRepo(db, retention=RETENTION)
    pruner = Pruner(db, retention=RETENTION, body_retention_days=1, clock=lambda: clock[0])
    pages: list[int] = []
    written: list[UsageRecord] = []
    try:
        for day in range(1000, 1000 + DAYS):
            rows = day_rows(day)
            for i in range(0, len(rows), 50):  # the writer's batches
                repo.insert_many(rows[i : i + 50])
            written += rows
            clock[0] = float((day + 1) * DAY)  # midnight after the day
            pruner.run()
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages.append(db.query_one("PRAGMA page_count")[0])  # type: ignore[index]
        now = clock[0]
        # Steady state from day 35 on (the longest horizon): no growth past a few pages of
        # B-tree slack, while the rows written kept growing by 288 a day.
        steady = pages[40:]
        assert max(steady) <= steady[0] * 1.03, pages
        assert pages[-1] < pages[10] * 3, pages  # and not an ever larger plateau
        remaining = db.query_one("SELECT count(*) FROM usage")[0]  # type: ignore[index]
        assert remaining <= (RETENTION.days + 1) * DAY // STEP_S
        assert len(written) == DAYS * DAY // STEP_S
        # The 30-day summary after most of its rows are pruned: every request counted.
        expected = [r for r in written if r.ts >= now - 30 * DAY]
        summary = repo.summary(30 * DAY, now=now)
        assert summary.total.requests == len(expected)
        assert summary.total.errors == sum(1 for r in expected if r.status >= 400)
        assert summary.total.prompt_tokens == sum(r.prompt_tokens for r in expected)
        assert summary.total.completion_tokens == sum(r.completion_tokens for r in expected)
        assert set(summary.by_tenant) == set(TENANTS)
        for t in TENANTS:
            assert summary.by_tenant[t].requests == sum(1 for r in expected if r.tenant_id == t)
        print(f"pages per day (page size 4096): {pages}")
    finally:
        db.close()
