"""Gateway overhead with each shared backend, side by side in one run: limits in memory vs
Redis, usage rows in SQLite vs PostgreSQL.

The setup of ``benchmarks/gateway_overhead.py`` (its helpers, reused: a fixed upstream and
the load on one CPU, the gateway pinned to the other with auth, every limit, metrics and
SQLite usage rows), run once per column, each gateway a process of its own:

- ``memory``: ``limits.backend: memory`` (the default);
- ``redis``: ``limits.backend: redis`` against a private ``redis-server`` (no persistence) on
  the load CPU: one round trip to admit (slot, RPM and TPM), one to release (not waited
  for);
- ``postgres``: memory limits, usage rows written to a private PostgreSQL (the tests'
  ``tests/pg_server.py``) by the store's batched writer, off the request path;
- ``redis+postgres``: both, as the replicas of "More than one gateway" run.

Without PostgreSQL installed (or with ``--no-postgres``) the last two are left out.

Printed per column: added p50 and p99 per request against the direct upstream (one
connection), requests/s at 32 connections, and the gateway's CPU per request (what one core
can serve). Goal: Redis adds at most 0.3 ms p50 over memory.

    python benchmarks/limits_backends.py [--duration 3] [--repeat 2] [--no-wrk]

Loopback only; ends exactly the processes it started (by pid).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gateway_overhead as go

GOAL_ADDED_P50_MS = 0.3


@contextlib.contextmanager
def redis_server(cpu: int, folder: Path) -> Iterator[str]:
    """A private redis-server pinned to ``cpu``; its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = go.free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            go.HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    try:
        go.wait_port(port, proc, timeout=10)  # type: ignore[arg-type]
        yield f"redis://{go.HOST}:{port}/0"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def columns(redis_url: str, store_url: str | None) -> list[tuple[str, list[str]]]:
    """Each column: its label and the gateway child's extra arguments."""
    out = [("memory", []), ("redis", ["--redis-url", redis_url])]
    if store_url:
        out.append(("postgres", ["--store-url", store_url]))
        out.append(("redis+postgres", ["--redis-url", redis_url, "--store-url", store_url]))
    return out


@contextlib.contextmanager
def postgres_server(args: argparse.Namespace) -> Iterator[str | None]:
    """A private PostgreSQL (tests/pg_server.py) with a fresh database, its URL; None when
    PostgreSQL is not installed or ``--no-postgres``."""
    if args.no_postgres:
        yield None
        return
    sys.path.insert(0, str(go.HERE.parent / "tests"))
    import pg_server  # type: ignore[import-not-found]  # tests/, on the path above

    if not (pg_server.BIN / "pg_ctl").exists():
        print(f"no PostgreSQL in {pg_server.BIN}: the postgres columns are left out")
        yield None
        return
    with pg_server.private_server() as server:
        yield server.new_database()


@contextlib.contextmanager
def gateway(up_port: int, cpu: int, home: Path, extra: list[str]) -> Iterator[tuple[int, str, int]]:
    port = go.free_port()
    argv = [
        sys.executable, str(go.HERE / "gateway_overhead.py"), "--serve-gateway",
        "--upstream-port", str(up_port), "--port", str(port), "--cpu", str(cpu),
        "--home", str(home), "--usage", "sqlite", *extra,
    ]  # fmt: skip
    with go.started(argv) as proc:
        key = go.read_line(proc, "KEY ")
        go.read_line(proc, "USAGE ")
        go.wait_port(port, proc)
        yield port, key, proc.pid


def report(
    direct: dict[str, dict[str, float]], results: dict[str, dict[str, dict[str, float]]]
) -> bool:
    labels = list(results)
    print()
    print(f"{'':44}" + "".join(f"{label:>16}" for label in labels))
    rows = [
        ("added p50 per request, 1 conn (ms)", "seq", "p50", True),
        ("added p99 per request, 1 conn (ms)", "seq", "p99", True),
        ("requests/s, 32 conns", "c32", "rps", False),
        ("gateway CPU per request (µs)", "c32", "cpu_us", False),
    ]
    for text, group, field, added in rows:
        cells = []
        for label in labels:
            value = results[label][group].get(field, float("nan"))
            if added:
                cells.append(f"{value - direct[group][field]:+16.3f}")
            else:
                cells.append(f"{value:16,.0f}")
        print(f"{text:44}" + "".join(cells))
    cpu = {label: results[label]["c32"].get("cpu_us", float("nan")) for label in labels}
    print(f"{'requests/s on one core (1e6 / CPU per request)':44}"
          + "".join(f"{1e6 / cpu[label]:16,.0f}" for label in labels))  # fmt: skip
    extra = results["redis"]["seq"]["p50"] - results["memory"]["seq"]["p50"]
    ok = extra <= GOAL_ADDED_P50_MS
    print(f"\n  [{'ok' if ok else 'MISSED'}] Redis adds {extra:+.3f} ms p50 over memory "
          f"(goal ≤ {GOAL_ADDED_P50_MS} ms)")  # fmt: skip
    if "postgres" in results:
        pg = results["postgres"]["seq"]["p50"] - results["memory"]["seq"]["p50"]
        print(f"  PostgreSQL usage rows add {pg:+.3f} ms p50 over SQLite (memory limits)")
    errors = {label: sum(r.get("errors", 0.0) for r in results[label].values()) for label in labels}
    if any(errors.values()):
        print(f"  non-2xx answers / socket errors: {errors}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="gateway overhead per limits backend")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    p.add_argument("--ttft-requests", type=int, default=500)
    p.add_argument("--repeat", type=int, default=1, help="runs per column, best kept")
    p.add_argument("--no-wrk", action="store_true", help="use the Python load generator")
    p.add_argument("--no-postgres", action="store_true", help="leave the PostgreSQL columns out")
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs (gateway on one, load, upstream and Redis on the other)")
        return 2
    gw_cpu, load_cpu = cpus[0], cpus[1]
    use_wrk = not args.no_wrk and shutil.which("wrk") is not None
    print(f"gateway on CPU {gw_cpu}; upstream, Redis and load on CPU {load_cpu}; load: "
          + ("wrk" if use_wrk else "python raw sockets"))  # fmt: skip
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.1f}: wall-clock figures are noisy")
    with tempfile.TemporaryDirectory(prefix="studioctl-limits-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with (
            redis_server(load_cpu, tmp) as url,
            postgres_server(args) as store_url,
            go.started(
                [sys.executable, str(go.HERE / "upstream_fixed.py"), "--cpu", str(load_cpu)]
            ) as upstream,
        ):
            up_port = int(go.read_line(upstream, "READY "))
            direct: dict[str, dict[str, float]] = {}
            results: dict[str, dict[str, dict[str, float]]] = {}
            for _ in range(args.repeat):  # interleaved: a stall hits every column alike
                go.best(direct, go.measure(up_port, "", args, tmp, load_cpu, use_wrk))
                for label, extra in columns(url, store_url):
                    home = tmp / f"home-{label}"
                    with gateway(up_port, gw_cpu, home, extra) as (port, key, pid):
                        got = go.measure(port, key, args, tmp, load_cpu, use_wrk, pid)
                    go.best(results.setdefault(label, {}), got)
        ok = report(direct, results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
