"""The request log in SQLite: migration m009, listing by filter and by cursor, one request
with its capped bodies, and retention (batched pruning, roll-ups kept for long windows)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.store.conftest import query_plan

from studioctl.store import Database, UsageRecord, UsageRepo, UsageWriter, open_database
from studioctl.store.usage import MAX_ROWS, Pruner, RequestFilter, RequestLog, Retention
from studioctl.store.usage.log import TRUNCATED_MARK, cap_body
from studioctl.store.usage.retention import HOUR_KEEP_DAYS

DAY = 86400.0


def rec(ts: float, rid: str, **kw: object) -> UsageRecord:
    base: dict[str, object] = {
        "status": 200,
        "tenant_id": "t_a",
        "model": "tiny",
        "duration_ms": 100.0,
        "prompt_tokens": 3,
        "completion_tokens": 5,
    }
    base.update(kw)
    return UsageRecord(ts=ts, request_id=rid, **base)  # type: ignore[arg-type]


def test_m009_adds_the_request_id_column_its_index_and_the_bodies_table(db: Database) -> None:
    schema = db.schema()
    assert "request_id" in schema["usage"]
    plan = query_plan(db, "SELECT * FROM usage WHERE request_id = 'x'")
    assert "usage_request_id" in plan  # `requests show ID` is an index lookup
    body_cols = set(schema["request_bodies"])
    assert body_cols == {"request_id", "ts", "request", "response", "truncated"}


def test_listing_filters_orders_and_follows(db: Database) -> None:
    repo, log = UsageRepo(db), RequestLog(db)
    now = time.time()
    repo.insert_many(
        [
            rec(now - 7200, "old", status=200),
            rec(now - 60, "r429", status=429, error_code="limit_rpm"),
            rec(now - 50, "r500", status=500, error_code="upstream_500", model="big"),
            rec(now - 40, "rb", tenant_id="t_b", status=404),
            rec(now - 30, "ok", status=200),
        ]
    )
    ids = [r["request_id"] for r in log.list(RequestFilter())]
    assert ids == ["ok", "rb", "r500", "r429", "old"]  # newest first
    four = log.list(RequestFilter(status=(400, 499)))
    assert [r["request_id"] for r in four] == ["rb", "r429"]
    assert [r["request_id"] for r in log.list(RequestFilter(status=(429, 429)))] == ["r429"]
    assert [r["request_id"] for r in log.list(RequestFilter(tenant_id="t_b"))] == ["rb"]
    assert [r["request_id"] for r in log.list(RequestFilter(model="big"))] == ["r500"]
    recent = log.list(RequestFilter(since=now - 3600))
    assert "old" not in [r["request_id"] for r in recent] and len(recent) == 4
    assert len(log.list(RequestFilter(limit=2))) == 2
    assert len(log.list(RequestFilter(limit=MAX_ROWS * 10))) == 5  # capped, not refused
    row = log.list(RequestFilter(limit=1))[0]
    assert row["error_code"] is None and row["streamed"] is False
    assert row["prompt_tokens"] == 3 and row["completion_tokens"] == 5
    # Following: the rows after a row id, oldest first.
    last = log.last_id()
    assert log.list(RequestFilter(after_id=last)) == []
    repo.insert_many([rec(now, "n1"), rec(now, "n2", tenant_id="t_b")])
    assert [r["request_id"] for r in log.list(RequestFilter(after_id=last))] == ["n1", "n2"]
    assert [r["request_id"] for r in log.list(RequestFilter(after_id=last, tenant_id="t_b"))] == [
        "n2"
    ]


def test_bodies_are_stored_apart_capped_and_found_by_request_id(db: Database) -> None:
    repo, log = UsageRepo(db, body_max_bytes=100), RequestLog(db)
    now = time.time()
    big = "é" * 80  # 160 bytes of UTF-8: cut on a character boundary
    repo.insert_many(
        [
            rec(now - 1, "with", request_body='{"a": 1}', response_body=big),
            rec(now, "without"),
        ]
    )
    (with_row,) = log.get("with")
    assert with_row["request_body"] == '{"a": 1}'
    assert with_row["response_body"].endswith(TRUNCATED_MARK) and with_row["truncated"] is True
    kept = with_row["response_body"][: -len(TRUNCATED_MARK)]
    assert kept == "é" * 50 and len(kept.encode()) == 100
    (without,) = log.get("without")
    assert "request_body" not in without
    assert db.query_one("SELECT count(*) AS n FROM request_bodies")["n"] == 1  # type: ignore[index]
    assert log.get("nope") == []
    # A client that reuses its id: both requests, newest first, each with its own bodies.
    repo.insert_many([rec(now + 1, "with", request_body="second")])
    rows = log.get("with")
    assert [r.get("request_body") for r in rows] == ["second", '{"a": 1}']


def test_cap_body() -> None:
    assert cap_body("short", 100) == ("short", False)
    assert cap_body("x" * 100, 100) == ("x" * 100, False)
    assert cap_body("x" * 101, 100) == ("x" * 100 + TRUNCATED_MARK, True)


def test_pruner_deletes_in_batches_what_is_past_retention(db: Database) -> None:
    now = 1000 * DAY
    repo = UsageRepo(db)
    old = [rec(now - 5 * DAY - i, f"o{i}", request_body="b") for i in range(25)]
    young = [rec(now - DAY - i, f"y{i}", request_body="b") for i in range(5)]
    repo.insert_many(old + young)
    pruner = Pruner(db, retention=Retention(3), body_retention_days=2, batch=10, clock=lambda: now)
    steps = []
    while n := pruner.step():
        steps.append(n)
    assert max(steps) <= 10  # never more than a batch under one write lock
    left = {r["request_id"] for r in RequestLog(db).list(RequestFilter(limit=100))}
    assert left == {f"y{i}" for i in range(5)}
    assert db.query_one("SELECT count(*) AS n FROM request_bodies")["n"] == 5  # type: ignore[index]
    # Minute and 10-minute roll-ups follow the rows; hours and days stay for long windows.
    by_res = {
        r["res"]: r["n"]
        for r in db.query(
            "SELECT res, count(*) AS n FROM usage_rollup WHERE period * res < ? GROUP BY res",
            (now - 3 * DAY,),
        )
    }
    assert 60 not in by_res and 600 not in by_res
    assert by_res[3600] > 0 and by_res[86400] > 0
    # The summary over 7 days still counts the pruned rows (from the hour and day rollups).
    summary = repo.summary(7 * DAY, now=now)
    assert summary.total.requests == 30 and summary.total.prompt_tokens == 90


def test_hour_rollups_are_pruned_past_their_horizon(db: Database) -> None:
    now = 5000 * DAY
    UsageRepo(db).insert_many([rec(now - (HOUR_KEEP_DAYS + 2) * DAY, "ancient")])
    Pruner(db, retention=Retention(3), body_retention_days=1, clock=lambda: now).run()
    left = {r["res"] for r in db.query("SELECT DISTINCT res FROM usage_rollup")}
    assert left == {86400}  # only the day roll-up remains of a year-old request


def test_a_window_longer_than_retention_answers_from_coarser_rollups(db: Database) -> None:
    now = 1000 * DAY + 12 * 3600 + 17 * 60  # 12:17 on day 1000
    repo = UsageRepo(db, retention=Retention(3))
    # One request each day for 20 days at 06:30, then everything past 3 days pruned.
    repo.insert_many([rec(now - d * DAY - 5 * 3600 - 47 * 60, f"d{d}") for d in range(20)])
    Pruner(db, retention=Retention(3), body_retention_days=1, clock=lambda: now).run()
    # 10 days back from 12:17 is 12:17 ten days ago: that day's 06:30 request is before it.
    # Rounded down to the hour (12:00) the edge still excludes it: the same answer as exact.
    assert repo.summary(10 * DAY, now=now).total.requests == 10
    assert repo.summary(30 * DAY, now=now).total.requests == 20


def test_the_usage_writer_prunes_in_its_own_thread(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    try:
        now = time.time()
        repo = UsageRepo(db)
        repo.insert_many([rec(now - 100 * DAY, "old"), rec(now - 10, "new")])
        threads: list[str] = []
        pruner = Pruner(db, retention=Retention(90), body_retention_days=1)

        def prune() -> int:
            threads.append(threading.current_thread().name)
            return pruner.step()

        with UsageWriter(repo, prune=prune, prune_every_s=3600) as writer:
            writer.submit(rec(now, "fresh"))
            deadline = time.monotonic() + 10
            while pruner.deleted == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert writer.flush(5)
        assert pruner.deleted >= 1
        assert set(threads) == {"usage-writer"}  # never the caller's (the event loop's)
        ids = {r["request_id"] for r in RequestLog(db).list(RequestFilter())}
        assert ids == {"new", "fresh"}
    finally:
        db.close()
