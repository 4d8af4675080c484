"""The mixed trace through a real studioctl: the scheduler against plain FIFO swapping.

    PYTHONPATH=src python benchmarks/swap_trace.py [--policies fair,fifo] [--requests 120]
        [--clients 6] [--think-s 0.2] [--rate R] [--load-s 3] [--service-s 0.5]
        [--max-wait-s 30] [--min-resident-s 10] [--json] [--keep-home]

Per policy, one run on this machine, against 127.0.0.1 only: a real ``studioctl daemon run``
(``scheduler.policy`` set through ``STUDIOCTL_SCHEDULER_POLICY``) on a temporary
STUDIOCTL_HOME with three on-demand stand-in recipes (``tests/standin``) of 6 GiB each on a
host of 10 (``host.capacity_gb``): only one fits at a time. Each engine takes ``--load-s`` to
start and ``--service-s`` to answer a request (4 tokens, one every ``service_s / 4``).

The trace is the pattern A B A A C A B C …, replayed by ``--clients`` closed-loop clients
(each sends its next request after its answer and ``--think-s``, starting at its own offset
of the pattern), ``--requests`` in all; or, with ``--rate``, open-loop: one request every
``1 / rate`` seconds whatever the answers, the pattern in order.

Printed side by side: requests, swaps (evictions for another model: the daemon's
``studioctl_ondemand_events_total{kind="evicted_for"}``), loads (``load_requested``),
p50/p95/max request latency (sent to answered, seconds), failed requests (any answer but a
complete 200) and wall time; then fifo/fair for swaps and p95. The goal of issue 11: ≥ 3×
fewer swaps than FIFO, a lower p95, and zero failures.

It starts one daemon per policy (which starts the engines) and ends exactly those: the
daemon with ``daemon stop --stop-engines``, then by pid (with its create time) whatever
engine process it recorded and is still alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmark modules, also when imported

from soak import Daemon, engine_ports, free_port, pct  # noqa: E402

REPO = HERE.parent
HOST = "127.0.0.1"
PATTERN = "ABAACABC"
MODELS = {"A": "trace-a", "B": "trace-b", "C": "trace-c"}
MAX_TOKENS = 4
ADMIN_TOKEN = "swap-trace-admin-token"
CAPACITY_GB, MODEL_GB = 10, 6  # never two at once


@dataclass
class Result:
    policy: str
    latencies: list[float] = field(default_factory=list)  # seconds, complete 200 answers
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # the first few, for the report
    swaps: int = 0
    loads: int = 0
    wall_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.failed

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "policy": self.policy,
            "requests": self.requests,
            "swaps": self.swaps,
            "loads": self.loads,
            "p50_s": pct(lat, 50),
            "p95_s": pct(lat, 95),
            "max_s": lat[-1] if lat else float("nan"),
            "failed": self.failed,
            "wall_s": self.wall_s,
        }


# -- the daemon ---------------------------------------------------------------------------------


def make_daemon(args: argparse.Namespace, policy: str) -> Daemon:
    home = Path(tempfile.mkdtemp(prefix="swaptrace-", dir="/tmp"))
    low = engine_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env.pop("NOTIFY_SOCKET", None)
    port = free_port()
    env.update(
        {
            "STUDIOCTL_HOME": str(home),
            "STUDIOCTL_GATEWAY_PORT": str(port),
            "STUDIOCTL_DAEMON_AUTOSTART": "false",
            "STUDIOCTL_ENGINES_PORT_MIN": str(low),
            "STUDIOCTL_ENGINES_PORT_MAX": str(low + 49),
            "STUDIOCTL_ADMIN_TOKEN": ADMIN_TOKEN,
            "STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true",
            "STUDIOCTL_HOST_CAPACITY_GB": str(CAPACITY_GB),
            "STUDIOCTL_SCHEDULER_MAX_WAIT_S": str(args.max_wait_s),
            "STUDIOCTL_SCHEDULER_MIN_RESIDENT_S": str(args.min_resident_s),
            # Every request of the trace may wait at once: no queue_full, no 429.
            "STUDIOCTL_GATEWAY_QUEUE_DEPTH": "1000",
            "STUDIOCTL_GATEWAY_MAX_CONCURRENT": "2000",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        }
    )
    if policy != "fair":  # the default: left unset, so builds without the setting run it too
        env["STUDIOCTL_SCHEDULER_POLICY"] = policy
    recipes = home / "config" / "recipes"
    recipes.mkdir(parents=True)
    for name in MODELS.values():
        recipe = {
            "backend": "vllm",
            "model": "standin/model",
            "python": sys.executable,
            "served_model_name": name,
            "vram_gb": MODEL_GB,
            "readiness_timeout_s": 120,
            "env": {
                "PYTHONPATH": str(REPO / "tests" / "standin"),
                "STANDIN_STARTUP_S": str(args.load_s),
                "STANDIN_TOKEN_DELAY_S": str(args.service_s / MAX_TOKENS),
                "STANDIN_ACCESS_LOG": "0",
            },
        }
        (recipes / f"{name}.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    return Daemon(home=home, env=env, port=port)


def engine_processes(d: Daemon) -> set[tuple[int, float]]:
    """(pid, create time) of every process of every instance the daemon lists."""
    out = json.loads(d.cli("ps", "--all", "--json"))
    return {
        (int(p["pid"]), float(p["create_time"]))
        for inst in out["instances"]
        for p in inst.get("processes") or ()
    }


def end_leftovers(seen: set[tuple[int, float]], grace_s: float = 5.0) -> list[int]:
    """SIGKILL the recorded processes still alive (the same pid *and* create time) after
    ``grace_s``: an engine's workers notice their parent is gone within a moment."""
    import psutil

    def alive() -> list[int]:
        out = []
        for pid, created in seen:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.05 and p.status() != "zombie":
                    out.append(pid)
        return out

    deadline = time.monotonic() + grace_s
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def counters(port: int) -> dict[str, float]:
    """``studioctl_ondemand_events_total`` by kind, from the gateway's /metrics."""
    import httpx

    resp = httpx.get(
        f"http://{HOST}:{port}/metrics", headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=30
    )
    resp.raise_for_status()
    found = re.findall(r'^studioctl_ondemand_events_total\{kind="(\w+)"\} (\S+)$', resp.text, re.M)
    return {kind: float(value) for kind, value in found}


# -- the clients --------------------------------------------------------------------------------


async def one(client: Any, key: str, letter: str, out: Result) -> None:
    body = {
        "model": MODELS[letter],
        "messages": [{"role": "user", "content": "next step"}],
        "max_tokens": MAX_TOKENS,
    }
    t0 = time.monotonic()
    try:
        r = await client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == MAX_TOKENS
        why = f"{letter}: {r.status_code} {r.text[:200]}"
    except Exception as exc:  # a failed request is a result, not the end of the run
        ok, why = False, f"{letter}: {type(exc).__name__}: {exc}"
    if ok:
        out.latencies.append(time.monotonic() - t0)
    else:
        out.failed += 1
        if len(out.failures) < 5:
            out.failures.append(why)


async def closed_loop(args: argparse.Namespace, url: str, key: str, out: Result) -> None:
    """Client ``i`` starts at offset ``i`` of the pattern; next request after the answer
    and ``think_s``; ``requests`` shared out among the clients."""
    import httpx

    async def client(i: int, n: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=args.timeout_s) as c:
            for k in range(n):
                await one(c, key, PATTERN[(i + k) % len(PATTERN)], out)
                await asyncio.sleep(args.think_s)

    share = [args.requests // args.clients + (i < args.requests % args.clients)
             for i in range(args.clients)]  # fmt: skip
    await asyncio.gather(*(client(i, n) for i, n in enumerate(share) if n))


async def open_loop(args: argparse.Namespace, url: str, key: str, out: Result) -> None:
    """One request every ``1 / rate`` s, the pattern in order, whatever the answers."""
    import httpx

    limits = httpx.Limits(max_connections=args.requests, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout_s, limits=limits) as c:
        t0 = time.monotonic()
        tasks = []
        for k in range(args.requests):
            await asyncio.sleep(max(0.0, t0 + k / args.rate - time.monotonic()))
            letter = PATTERN[k % len(PATTERN)]
            tasks.append(asyncio.create_task(one(c, key, letter, out)))
        await asyncio.gather(*tasks)


# -- one run per policy -------------------------------------------------------------------------


def run_policy(args: argparse.Namespace, policy: str) -> Result:
    out = Result(policy)
    d = make_daemon(args, policy)
    seen: set[tuple[int, float]] = set()
    try:
        d.start()
        tenant = json.loads(
            d.cli("tenant", "create", "trace", "--rpm", "10000000", "--max-concurrent",
                  "2000", "--json")
        )  # fmt: skip
        url = f"http://{HOST}:{d.port}"
        t0 = time.monotonic()
        drive = open_loop if args.rate else closed_loop
        asyncio.run(drive(args, url, tenant["key"], out))
        out.wall_s = time.monotonic() - t0
        seen = engine_processes(d)
        events = counters(d.port)
        out.swaps = int(events.get("evicted_for", 0))
        out.loads = int(events.get("load_requested", 0))
    finally:
        with contextlib.suppress(Exception):
            seen |= engine_processes(d)
        d.stop()
        left = end_leftovers(seen)
        if left:
            print(f"warning: {policy}: engine processes left by the daemon, killed: {left}")
        if args.keep_home:
            print(f"{policy}: home kept at {d.home}")
        else:
            shutil.rmtree(d.home, ignore_errors=True)
    return out


def describe(args: argparse.Namespace) -> str:
    if args.rate:
        clients = f"open-loop at {args.rate:g} requests/s"
    else:
        clients = f"{args.clients} closed-loop clients (think {args.think_s:g} s)"
    return (
        f"swap trace {PATTERN}…: {args.requests} requests, {clients}; 3 models of "
        f"{MODEL_GB} GiB on {CAPACITY_GB} GiB; load {args.load_s:g} s, service "
        f"{args.service_s:g} s; max_wait_s {args.max_wait_s:g}, min_resident_s "
        f"{args.min_resident_s:g}"
    )


def table(rows: list[dict[str, Any]]) -> list[str]:
    cols = ["requests", "swaps", "loads", "p50_s", "p95_s", "max_s", "failed", "wall_s"]
    lines = [f"{'policy':<8}" + "".join(f"{c:>10}" for c in cols)]
    for row in rows:
        cells = [f"{row[c]:>10.1f}" if c.endswith("_s") else f"{row[c]:>10}" for c in cols]
        lines.append(f"{row['policy']:<8}" + "".join(cells))
    by = {row["policy"]: row for row in rows}
    if "fair" in by and "fifo" in by:
        fair, fifo = by["fair"], by["fifo"]
        swaps = fifo["swaps"] / fair["swaps"] if fair["swaps"] else float("inf")
        p95 = fifo["p95_s"] / fair["p95_s"] if fair["p95_s"] else float("nan")
        lines.append(f"fifo/fair: swaps {swaps:.1f}x, p95 {p95:.2f}x")
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", default="fair,fifo", help="scheduler.policy values, in order")
    p.add_argument("--requests", type=int, default=120)
    p.add_argument("--clients", type=int, default=6, help="closed-loop clients")
    p.add_argument("--think-s", type=float, default=0.2)
    p.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    p.add_argument("--load-s", type=float, default=3.0, help="an engine's start-up")
    p.add_argument("--service-s", type=float, default=0.5, help="one request's service time")
    p.add_argument("--max-wait-s", type=float, default=30.0)
    p.add_argument("--min-resident-s", type=float, default=10.0)
    p.add_argument("--timeout-s", type=float, default=600.0, help="a client's wait, at most")
    p.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    p.add_argument("--keep-home", action="store_true")
    args = p.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or (args.rate is not None and args.rate <= 0):
        p.error("--requests, --clients and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(describe(args), flush=True)
    results = []
    refused = []
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        try:
            results.append(run_policy(args, policy))
        except RuntimeError as exc:  # e.g. a build without that scheduler.policy
            refused.append(policy)
            print(f"{policy}: not run: {str(exc)[-500:]}")
            continue
        for why in results[-1].failures:
            print(f"  {policy} failed: {why}")
    rows = [r.row() for r in results]
    print("\n".join(table(rows)))
    if args.json:
        print(json.dumps({"rows": rows, "failures": {r.policy: r.failures for r in results}}))
    return 1 if refused or any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
