"""UsageRepo: rows, the minute/10-minute/hour/day rollup, windows exact to the minute,
percentiles from the histogram buckets, filters."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from pathlib import Path

import pytest

from studioctl.store import Store, UsageRecord, UsageRepo
from studioctl.store.sqlite import SqliteDatabase as Database
from studioctl.store.usage.rollup import (
    BOUNDS_MS,
    N_BUCKETS,
    RESOLUTIONS,
    bucket_of,
    cover,
    quantile,
)

DAY = 86400


def rec(ts: float, **kw: object) -> UsageRecord:
    base: dict[str, object] = {
        "status": 200,
        "tenant_id": "t_a",
        "model": "tiny",
        "duration_ms": 100.0,
    }
    base.update(kw)
    return UsageRecord(ts=ts, **base)  # type: ignore[arg-type]


def test_one_row_lands_in_every_resolution(db: Database) -> None:
    repo = UsageRepo(db)
    ts = 10 * DAY + 3 * 3600 + 25 * 60 + 7.5
    assert repo.insert_many([rec(ts, prompt_tokens=5, completion_tokens=7, ttft_ms=12.0)]) == 1
    rows = db.query("SELECT * FROM usage_rollup ORDER BY res, scope")
    assert [(r["res"], r["scope"], r["period"], r["tenant_id"], r["model"]) for r in rows] == [
        (res, scope, int(ts // res), tenant, model)
        for res in RESOLUTIONS
        for scope, tenant, model in (
            (0, "t_a", "tiny"),
            (1, "t_a", ""),
            (2, "", "tiny"),
            (3, "", ""),
        )
    ]
    for r in rows:
        assert (r["requests"], r["prompt_tokens"], r["completion_tokens"]) == (1, 5, 7)
        assert (r["lat_count"], r["lat_sum_ms"], r["lat_max_ms"]) == (1, 100.0, 100.0)
        assert r[f"lat_b{bucket_of(100.0)}"] == 1
        assert r[f"ttft_b{bucket_of(12.0)}"] == 1
    assert len(repo.rows()) == 1
    assert repo.insert_many([]) == 0


def test_upserts_accumulate_across_batches(db: Database) -> None:
    repo = UsageRepo(db)
    repo.insert_many([rec(60.0, duration_ms=5.0), rec(61.0, duration_ms=50.0)])
    repo.insert_many([rec(62.0, duration_ms=20.0, status=500)])
    row = db.query_one("SELECT * FROM usage_rollup WHERE res = 60 AND scope = 0 AND period = 1")
    assert row is not None
    assert (row["requests"], row["errors"], row["lat_count"]) == (3, 1, 2)
    assert row["lat_max_ms"] == 50.0  # max, not sum
    assert row["lat_sum_ms"] == 55.0


def test_what_counts_where(store: Store) -> None:
    now = 1000 * DAY
    store.usage.insert_many(
        [
            rec(now - 10, duration_ms=100.0, ttft_ms=10.0, streamed=True),
            rec(now - 10, status=429, error_code="limit_rpm", duration_ms=0.1),
            rec(now - 10, status=200, error_code="upstream_error", duration_ms=5.0),  # mid-stream
            rec(now - 10, duration_ms=3.0, ttft_ms=1.0, disconnected=True, streamed=True),
            rec(now - 10, status=401, tenant_id=None, model=None, duration_ms=0.05),
        ]
    )
    s = store.usage.summary(3600, now=now)
    t = s.total
    assert (t.requests, t.errors, t.disconnected, t.streamed) == (5, 3, 1, 2)
    # Latency: successful requests the client did not abandon. TTFT: successful with a
    # first token (a disconnect after the first token still has a valid TTFT).
    assert t.latency_max_ms == 100.0 and t.latency_mean_ms == 100.0
    assert t.ttft_p50_ms is not None and 1.0 <= t.ttft_p50_ms <= 10.0
    assert set(s.by_tenant) == {"t_a", ""}  # '' = refused before a tenant was known
    assert set(s.by_model) == {"tiny", ""}
    assert s.by_tenant[""].errors == 1
    json.dumps(s.to_dict())  # the admin API's JSON
    assert s.to_dict()["total"]["total_tokens"] == 0


def test_windows_are_exact_to_the_minute(db: Database) -> None:
    """Random rows over 40 days against a brute-force count, at random 'now's."""
    rng = random.Random(7)
    repo = UsageRepo(db)
    end = 2000 * DAY + 12345.6
    rows = [
        rec(
            end - rng.uniform(0, 40 * DAY),
            tenant_id=rng.choice(["t_a", "t_b", "t_c"]),
            model=rng.choice(["m1", "m2"]),
            status=rng.choice([200, 200, 200, 429]),
            prompt_tokens=rng.randint(0, 100),
            completion_tokens=rng.randint(0, 100),
        )
        for _ in range(5000)
    ]
    for i in range(0, len(rows), 700):
        repo.insert_many(rows[i : i + 700])
    for _ in range(25):
        now = end - rng.uniform(0, 8 * DAY)
        window = rng.choice([60, 600, 3600, 5000, DAY, 7 * DAY, 30 * DAY, rng.uniform(1, 9e5)])
        tenant = rng.choice([None, "t_b"])
        s = repo.summary(window, tenant=tenant, now=now)
        assert s.start % 60 == 0 and now - window - 60 < s.start <= now - window + 60
        inside = [
            r
            for r in rows
            if s.start <= r.ts < (now // 60 + 1) * 60 and (tenant is None or r.tenant_id == tenant)
        ]
        assert s.total.requests == len(inside), (now, window)
        assert s.total.errors == sum(r.status >= 400 for r in inside)
        assert s.total.prompt_tokens == sum(r.prompt_tokens for r in inside)
        assert s.total.completion_tokens == sum(r.completion_tokens for r in inside)
        per_tenant = Counter(r.tenant_id for r in inside)
        assert {k: v.requests for k, v in s.by_tenant.items()} == dict(per_tenant)
        per_model = Counter(r.model for r in inside)
        assert {k: v.requests for k, v in s.by_model.items()} == dict(per_model)


def test_filters(store: Store) -> None:
    now = 50 * DAY + 30  # a 60 s window is the current minute: [50 d, now]
    store.usage.insert_many(
        [
            rec(now - 5, tenant_id="t_a", model="m1"),
            rec(now - 5, tenant_id="t_a", model="m2"),
            rec(now - 5, tenant_id="t_b", model="m1"),
        ]
    )
    s = store.usage.summary(60, tenant="t_a", now=now)
    assert s.total.requests == 2
    assert set(s.by_tenant) == {"t_a"}
    assert set(s.by_model) == {"m1", "m2"}
    s = store.usage.summary(60, tenant="t_a", model="m1", now=now)
    assert s.total.requests == 1 and (s.tenant, s.model) == ("t_a", "m1")
    assert store.usage.summary(60, tenant="t_zzz", now=now).total.requests == 0


def test_empty_window(store: Store) -> None:
    s = store.usage.summary(3600, now=1e9)
    assert s.total.requests == 0 and s.by_tenant == {} and s.by_model == {}
    assert s.total.latency_p50_ms is None and s.total.ttft_p95_ms is None
    with pytest.raises(ValueError, match="usage window must be positive"):
        store.usage.summary(0)


def test_percentiles_follow_the_data(store: Store) -> None:
    rng = random.Random(3)
    now = 10 * DAY
    lat = [rng.lognormvariate(5.5, 1.0) for _ in range(4000)]  # ~250 ms median, long tail
    ttft = [rng.lognormvariate(3.0, 0.5) for _ in range(4000)]
    store.usage.insert_many(
        [rec(now - 100, duration_ms=d, ttft_ms=t) for d, t in zip(lat, ttft, strict=True)]
    )
    s = store.usage.summary(3600, now=now).total
    q = statistics.quantiles(lat, n=100)
    tq = statistics.quantiles(ttft, n=100)
    assert s.latency_p50_ms == pytest.approx(q[49], rel=0.05)
    assert s.latency_p95_ms == pytest.approx(q[94], rel=0.05)
    assert s.ttft_p50_ms == pytest.approx(tq[49], rel=0.05)
    assert s.ttft_p95_ms == pytest.approx(tq[94], rel=0.05)
    assert s.latency_mean_ms == pytest.approx(statistics.fmean(lat))
    assert s.latency_max_ms == pytest.approx(max(lat))


def test_quantile_edges() -> None:
    empty = [0] * N_BUCKETS
    assert quantile(empty, 0.5, 0.0) is None
    one = list(empty)
    one[bucket_of(0.5)] = 1  # the first bucket [0, 1 ms]: linear
    assert bucket_of(0.5) == 0 and quantile(one, 0.5, 0.5) == pytest.approx(0.25)
    # Above the last bound: the largest value seen caps the answer.
    over = list(empty)
    over[-1] = 4
    assert quantile(over, 0.95, 2_000_000.0) <= 2_000_000.0  # type: ignore[operator]
    assert quantile(over, 0.5, 2_000_000.0) >= BOUNDS_MS[-1]  # type: ignore[operator]
    # Inside a bucket, never above the max seen.
    mid = list(empty)
    mid[bucket_of(100.0)] = 10
    assert quantile(mid, 0.99, 100.0) <= 100.0  # type: ignore[operator]
    # Bucket i holds (BOUNDS[i-1], BOUNDS[i]].
    assert bucket_of(BOUNDS_MS[3]) == 3 and bucket_of(BOUNDS_MS[3] * 1.0001) == 4
    assert bucket_of(1e12) == N_BUCKETS - 1


@pytest.mark.parametrize("seed", range(5))
def test_cover_splits_a_window_exactly(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        lo = rng.randrange(0, 100 * 1440) * 60
        hi = lo + rng.randrange(0, 40 * 1440) * 60
        parts = cover(lo, hi)
        spans = sorted((p0 * res, p1 * res) for res, p0, p1 in parts)
        pos = lo
        for a, b in spans:
            assert a == pos and b > a  # contiguous, no overlap, nothing empty
            pos = b
        assert pos == hi
        # Few ranges whatever the length: at most 2 per finer resolution plus the days.
        assert len(parts) <= 7
        assert all(res in RESOLUTIONS for res, _, _ in parts)


def test_rows(store: Store) -> None:
    repo = store.usage
    repo.insert_many([rec(float(DAY * d + 1), tenant_id=f"t_{d}") for d in range(5)])
    assert [r.tenant_id for r in repo.rows(limit=2)] == ["t_4", "t_3"]
    assert [r.tenant_id for r in repo.rows(since=DAY * 2, until=DAY * 4)] == ["t_3", "t_2"]
    assert [r.tenant_id for r in repo.rows(tenant="t_1")] == ["t_1"]
    got = repo.rows(tenant="t_0")[0]
    assert got == rec(1.0, tenant_id="t_0")


def test_accepts_the_gateways_record_type(db: Database) -> None:
    from studioctl.store.usage import UsageRecord as GatewayRecord

    row = GatewayRecord(
        ts=120.0,
        tenant_id="t_a",
        key_prefix="sk-st-ab",
        model="tiny",
        instance_id="tiny-1",
        status=200,
        prompt_tokens=3,
        completion_tokens=4,
        ttft_ms=None,
        duration_ms=9.0,
        streamed=False,
        disconnected=False,
        error_code=None,
    )
    repo = UsageRepo(db)
    repo.insert_many([row])
    assert repo.rows()[0].key_prefix == "sk-st-ab"
    assert repo.summary(60, now=121.0).total.completion_tokens == 4


def test_queue_ms_is_stored_and_read_back(db: Database) -> None:
    repo = UsageRepo(db)
    repo.insert_many([rec(60.0, queue_ms=1234.5), rec(61.0)])
    by_ts = {r.ts: r for r in repo.rows()}
    assert by_ts[60.0].queue_ms == 1234.5
    assert by_ts[61.0].queue_ms == 0.0  # the default: a request that did not wait


def test_a_row_with_a_bad_queue_ms_is_refused_alone() -> None:
    from studioctl.store.usage.record import invalid_reason

    assert invalid_reason(rec(1.0, queue_ms=-1.0)) == "queue_ms=-1.0"
    assert invalid_reason(rec(1.0, queue_ms=float("nan"))) is not None
    assert invalid_reason(rec(1.0, queue_ms=5.0)) is None


def test_rows_written_before_m007_read_back_with_queue_ms_0(tmp_path: Path) -> None:
    from studioctl.store import migrations as mig

    path = tmp_path / "old.db"
    with Database(path) as old:
        mig.migrate(old, target="m005_instance_api_key")
        old.execute(
            "INSERT INTO usage (ts, tenant_id, model, status, duration_ms)"
            " VALUES (60.0, 't_a', 'tiny', 200, 5.0)"
        )
    with Database(path) as db:
        assert mig.migrate(db) == [m.name for m in mig.MIGRATIONS][5:]
        (row,) = UsageRepo(db).rows()
        assert (row.status, row.queue_ms) == (200, 0.0)
