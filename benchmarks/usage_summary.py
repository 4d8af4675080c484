"""How long UsageRepo.summary() takes over a million usage rows (target: under 50 ms).

    python benchmarks/usage_summary.py [--rows 1000000] [--days 30] [--tenants 20]
                                       [--models 4] [--db PATH]

Inserts the rows (spread over the last --days, through UsageRepo.insert_many in batches,
as the UsageWriter does), then times summary() for the 1h, 24h, 7d and 30d windows, all
tenants and one tenant, and checks each answer's request count against a plain COUNT(*)
over the raw rows of the same window.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from studioctl.store import UsageRecord, UsageRepo, open_database

WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


def make_rows(n: int, days: float, tenants: int, models: int, now: float) -> list[UsageRecord]:
    rng = random.Random(42)
    span = days * 86400
    # Zipf-ish: a few tenants and models get most of the traffic.
    tenant_w = [1 / (i + 1) for i in range(tenants)]
    model_w = [1 / (i + 1) for i in range(models)]
    tenant_ids = rng.choices([f"t_{i:016x}" for i in range(tenants)], tenant_w, k=n)
    model_ids = rng.choices([f"model-{i}" for i in range(models)], model_w, k=n)
    rows = []
    for i in range(n):
        status = 200
        error_code = None
        r = rng.random()
        if r < 0.03:
            status, error_code = 429, "limit_rpm"
        elif r < 0.04:
            status, error_code = 503, "model_loading"
        streamed = rng.random() < 0.6
        duration = rng.lognormvariate(6.5, 0.8)  # ms: median ~665 ms
        rows.append(
            UsageRecord(
                ts=now - span + span * i / n,
                tenant_id=tenant_ids[i],
                key_prefix="sk-st-abcd",
                model=model_ids[i],
                instance_id=model_ids[i] + "-1",
                status=status,
                prompt_tokens=rng.randint(10, 2000),
                completion_tokens=rng.randint(1, 512) if status == 200 else 0,
                ttft_ms=duration * 0.1 if streamed and status == 200 else None,
                duration_ms=duration if status == 200 else 0.3,
                streamed=streamed,
                disconnected=rng.random() < 0.01,
                error_code=error_code,
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=float, default=30)
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--db", type=Path, help="database file (default: a temporary one)")
    args = ap.parse_args()

    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory()
        args.db = Path(tmp.name) / "usage.db"
    db = open_database(args.db)
    repo = UsageRepo(db)
    now = time.time()

    print(
        f"{args.rows:,} rows over {args.days:g} days, {args.tenants} tenants x "
        f"{args.models} models, batches of {args.batch:,}"
    )
    t0 = time.perf_counter()
    rows = make_rows(args.rows, args.days, args.tenants, args.models, now)
    t1 = time.perf_counter()
    for i in range(0, len(rows), args.batch):
        repo.insert_many(rows[i : i + args.batch])
    t2 = time.perf_counter()
    rollup = db.query_one("SELECT COUNT(*) AS n FROM usage_rollup")
    print(
        f"generated in {t1 - t0:.1f} s; inserted in {t2 - t1:.1f} s "
        f"({args.rows / (t2 - t1):,.0f} rows/s, rollup rows: {rollup['n'] if rollup else 0:,})"
    )
    print()
    print(f"{'window':>6} {'filter':>8} {'requests':>10} {'median':>9} {'max':>9}  check")
    one_tenant = f"t_{0:016x}"
    for label, window in WINDOWS.items():
        for tenant in (None, one_tenant):
            times = []
            summary = None
            for _ in range(args.repeat):
                s0 = time.perf_counter()
                summary = repo.summary(window, tenant=tenant, now=now)
                times.append((time.perf_counter() - s0) * 1000)
            assert summary is not None
            sql = "SELECT COUNT(*) AS n FROM usage WHERE ts >= ? AND ts <= ?"
            params: list[object] = [summary.start, now]
            if tenant:
                sql += " AND tenant_id = ?"
                params.append(tenant)
            raw = db.query_one(sql, params)
            expected = raw["n"] if raw else -1
            ok = "ok" if expected == summary.total.requests else f"MISMATCH (raw {expected})"
            print(
                f"{label:>6} {'1 tenant' if tenant else 'all':>8} "
                f"{summary.total.requests:>10,} {statistics.median(times):>7.1f}ms "
                f"{max(times):>7.1f}ms  {ok}"
            )
    total = repo.summary(WINDOWS["30d"], now=now).total
    print()
    print(
        f"30d: p50 latency {total.latency_p50_ms:.0f} ms, p95 {total.latency_p95_ms:.0f} ms, "
        f"TTFT p50 {total.ttft_p50_ms:.0f} ms, errors {total.errors:,}"
    )
    db.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
