"""The ceiling of `studioctl bench`'s load generator: requests/s it drives on one core.

It runs ``upstream_fixed.py`` (a fixed-response server: a chat completion with usage, or a
100-chunk SSE stream) pinned to one CPU and the load generator pinned to the other, closed
loop at ``--concurrency`` for ``--duration`` seconds, with every request timed as in a real
run (records, TTFT, inter-token gaps, usage). Beside it, the upstream's direct figure from
``wrk`` (one thread, same CPU, same connections), which shows how much of the upstream the
load generator uses. ``--compare`` also times httpx's and aiohttp's async clients the same
way (why the load generator has its own HTTP client).

    python benchmarks/bench_ceiling.py [--duration 5] [--concurrency 64] [--compare]

Target (issue 12): at least 5,000 requests/s non-streamed. Loopback only; it starts the
upstream (and wrk) and ends exactly those, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from studioctl.bench import loadgen, runner  # noqa: E402
from studioctl.bench.httpconn import Pool  # noqa: E402
from studioctl.bench.metrics import summarize  # noqa: E402
from studioctl.bench.prompts import Prompt  # noqa: E402

TARGET_RPS = 5000.0


def start_upstream(cpu: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "upstream_fixed.py"), "--cpu", str(cpu)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"upstream_fixed did not start: {line!r}")
    return proc, int(line.split()[1])


def ours(port: int, stream: bool, concurrency: int, duration: float) -> dict[str, float]:
    ep = loadgen.Endpoint("127.0.0.1", port, False, "", "bench")
    w = loadgen.Workload(
        stream=stream, requests=None, duration_s=duration, concurrency=concurrency, warmup=200
    )
    data = loadgen.payload(ep, Prompt("hello there", 100), w)

    async def go() -> tuple[list[loadgen.RequestRecord], float]:
        pool = Pool(ep.host, ep.port, limit=concurrency)
        try:
            return await loadgen.run(pool, [data], w)
        finally:
            pool.close()

    records, dur = runner.run_loop(go)
    s = summarize(records, dur)
    return {"rps": s.request_rps, "failed": s.requests_failed, "itl": s.distributions["itl"].count}


def wrk(port: int, stream: bool, concurrency: int, duration: float, cpu: int) -> float:
    body = '{"model":"bench","messages":[{"role":"user","content":"hello there"}]'
    body += ',"stream":true,"stream_options":{"include_usage":true}}' if stream else "}"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f'wrk.method = "POST"\nwrk.body = [[{body}]]\n')
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(duration))}s",
                "-s",
                f.name,
                f"http://127.0.0.1:{port}/v1/chat/completions",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        ).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def other_client(kind: str, port: int, concurrency: int, duration: float) -> float:
    """Closed loop with a library client, each request timed and its usage read."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "bench", "messages": [{"role": "user", "content": "hello there"}]}

    async def go() -> float:
        done = 0
        stop = time.perf_counter() + duration
        if kind == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(limits=limits) as c:

                async def client() -> None:
                    nonlocal done
                    while time.perf_counter() < stop:
                        t = time.perf_counter()
                        r = await c.post(url, json=body)
                        _ = (r.json()["usage"], time.perf_counter() - t)
                        done += 1

                t0 = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(concurrency)))
        else:
            import aiohttp

            conn = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=conn) as c:

                async def client() -> None:
                    nonlocal done
                    while time.perf_counter() < stop:
                        t = time.perf_counter()
                        async with c.post(url, json=body) as r:
                            _ = ((await r.json())["usage"], time.perf_counter() - t)
                        done += 1

                t0 = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)

    return runner.run_loop(go)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--compare", action="store_true", help="also time httpx and aiohttp")
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs (upstream on one, load on the other)", file=sys.stderr)
        return 2
    load_cpu, up_cpu = cpus[0], cpus[1]
    print(
        f"load generator on CPU {load_cpu}, upstream_fixed on CPU {up_cpu}, "
        f"{args.concurrency} connections, {args.duration:g}s each; load average "
        f"{os.getloadavg()[0]:.1f} (other work on these CPUs lowers every figure)"
    )
    upstream, port = start_upstream(up_cpu)
    try:
        os.sched_setaffinity(0, {load_cpu})
        rows = []
        for stream in (False, True):
            mine = ours(port, stream, args.concurrency, args.duration)
            direct = (
                wrk(port, stream, args.concurrency, args.duration, load_cpu)
                if shutil.which("wrk")
                else float("nan")
            )
            label = "stream (100 events)" if stream else "non-stream"
            rows.append((label, mine["rps"], direct, mine["failed"]))
        for label, mine_rps, direct, failed in rows:
            print(
                f"{label:20s} studioctl bench {mine_rps:9,.0f} req/s   "
                f"upstream direct (wrk) {direct:9,.0f} req/s   failed {failed:g}"
            )
        if args.compare:
            for kind in ("httpx", "aiohttp"):
                rps = other_client(kind, port, args.concurrency, args.duration)
                print(f"{'non-stream':20s} {kind:15s} {rps:9,.0f} req/s")
        ok = rows[0][1] >= TARGET_RPS
        print(
            f"ceiling non-stream {rows[0][1]:,.0f} req/s: "
            f"{'meets' if ok else 'BELOW'} the {TARGET_RPS:,.0f} req/s target"
        )
        return 0 if ok else 1
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
