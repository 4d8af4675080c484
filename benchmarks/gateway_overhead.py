"""What the gateway adds: direct to a fixed upstream vs through the gateway, side by side.

One run on this machine (needs 2 CPUs):

- ``benchmarks/upstream_fixed.py``: a fast fixed-response upstream (a chat completion, or a
  100-chunk SSE stream), on the load CPU;
- the gateway (``GatewayApp`` under uvicorn with httptools + uvloop) pinned to the other CPU,
  with a real tenant key (``Authenticator``), every limit checked (``Limiter``: concurrency,
  RPM, TPM; output cap; context cap via ``PromptCounter``), metrics, and usage rows written to
  SQLite by the store's ``UsageWriter`` (an in-memory sink if the store is not there: the
  report says which);
- load from ``wrk`` on the load CPU (Debian package ``wrk``; without it, a lean asyncio
  raw-socket generator), and a raw-socket client for time to first chunk.

Printed: sequential p50/p99 latency, requests/s at 32 connections, non-streaming and
streaming (time to first chunk), direct vs gateway and the difference, against the targets
(added p50 ≤ 0.3 ms, added p99 ≤ 1.5 ms, ≥ 4,000 req/s at 32 connections, streaming adds
≤ 0.5 ms to the first chunk).

    python benchmarks/gateway_overhead.py [--duration 5] [--ttft-requests 2000] [--no-wrk]

Loopback only; it starts two Python processes (and wrk) and ends exactly those, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rawhttp import chat_request, response_done

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MODEL = "bench"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
TARGETS = {"p50": 0.3, "p99": 1.5, "rps": 4000.0, "ttft": 0.5}


# -- the gateway process ------------------------------------------------------------------------


def serve_gateway(args: argparse.Namespace) -> None:
    """Child mode: run the gateway pinned to ``args.cpu`` until SIGTERM/SIGINT."""
    os.sched_setaffinity(0, {args.cpu})
    os.environ["STUDIOCTL_HOME"] = args.home
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval / 1000.0)
    import uvicorn

    from studioctl.gateway.app import GatewayApp
    from studioctl.gateway.auth import Authenticator
    from studioctl.gateway.core import GatewayCore, new_pool
    from studioctl.gateway.limits import Limiter
    from studioctl.gateway.metrics import GatewayMetrics
    from studioctl.gateway.routing import RouteTable, Upstream
    from studioctl.gateway.tokenize import PromptCounter
    from studioctl.settings import GatewaySettings
    from studioctl.tenants import TenantContext, TenantLimits
    from studioctl.tenants.keys import generate_key

    settings = GatewaySettings(host=HOST, port=args.port)
    plaintext, prefix, digest = generate_key()
    limits = TenantLimits(
        max_concurrent=1000,
        rpm=1_000_000_000,
        tpm=1_000_000_000_000,
        max_context_tokens=8192,
        max_output_tokens=512,
    )
    tenant = TenantContext("t_bench", "bench", True, limits, prefix)
    keys = {digest: tenant}
    routes = RouteTable()
    routes.update(
        [Upstream("i-bench", "bench", HOST, args.upstream_port, "ready", (MODEL,))],
        {MODEL: "bench"},
    )
    limiter: Any = Limiter(global_max_concurrent=settings.max_concurrent)
    if args.redis_url:  # limits.backend: redis (benchmarks/limits_backends.py)
        from studioctl.gateway.limits_redis import RedisLimiter
        from studioctl.gateway.redis_client import RedisClient

        limiter = RedisLimiter(
            RedisClient(args.redis_url),
            global_max_concurrent=settings.max_concurrent,
            lease_s=30.0,
            namespace=f"bench{os.getpid()}",
        )
    metrics = GatewayMetrics(tenant_labels=True, inflight_source=limiter.inflight)

    writer: Any = None
    usage_kind = "sqlite"
    try:
        if args.usage == "memory":
            raise ImportError("--usage memory")
        from studioctl.store.migrations import migrate
        from studioctl.store.usage import UsageRepo, UsageWriter

        if args.store_url:  # store.backend: postgres (benchmarks/limits_backends.py)
            from studioctl.store.postgres import PostgresDatabase

            db: Any = PostgresDatabase(args.store_url)
            usage_kind = "postgres"
        else:
            from studioctl.store.sqlite import SqliteDatabase

            db = SqliteDatabase(Path(args.home) / "usage.db")
        migrate(db)
        writer = UsageWriter(UsageRepo(db))
        usage: Any = writer
    except ImportError as exc:
        from studioctl.gateway.usage import MemoryUsageQueue

        usage = MemoryUsageQueue()
        usage_kind = f"memory (store not available: {exc})"

    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    class BenchGateway(GatewayApp):
        async def shutdown(self) -> None:
            # uvicorn re-raises SIGTERM once it has stopped, so flush here, in the lifespan.
            await super().shutdown()
            if writer is not None:
                writer.close()
                print(f"WRITTEN {writer.written}", flush=True)
            else:
                print(f"WRITTEN {len(usage.rows)}", flush=True)

    pool = new_pool()
    core = GatewayCore(
        routes=routes,
        auth=Authenticator(keys.get),
        limiter=limiter,
        usage=usage,
        metrics=metrics,
        pool=pool,
        tokenizer=PromptCounter(new_pool()),
    )
    app = BenchGateway(
        core,
        settings=settings,
        admin_app=None,
        admin_token=None,
        health=health,
        version={"version": "bench"},
    )
    print(f"KEY {plaintext}", flush=True)
    print(f"USAGE {usage_kind}", flush=True)
    uvicorn.run(
        app,
        host=HOST,
        port=args.port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=2048,
        proxy_headers=False,  # the gateway is the edge: no X-Forwarded-* rewriting
    )


# -- process handling -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


@contextlib.contextmanager
def started(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=HERE.parent
    )
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def read_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise RuntimeError(f"process {proc.pid} ended before printing {prefix!r}")


# -- load: wrk --------------------------------------------------------------------------------


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, separators=(",", ":"))


def wrk_script(path: Path, body: dict[str, Any], key: str) -> Path:
    lua = (
        'wrk.method = "POST"\n'
        f"wrk.body = [[{_json(body)}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    path.write_text(lua)
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, script: Path, conns: int, duration: float, cpu: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        check=True,
    ).stdout
    res: dict[str, float] = {}
    for pct, num, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        res[f"p{pct}"] = float(num) * _UNITS[unit]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["errors"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors:.*", out)
    if m:
        res["errors"] += sum(int(x) for x in re.findall(r"\d+", m.group(0)))
    return res


# -- load: the raw-socket fallback and the time-to-first-chunk client ---------------------------


def sequential(port: int, req: bytes, n: int, *, first_chunk: bool) -> list[float]:
    """Latencies (ms) of ``n`` requests one after another on one keep-alive connection;
    with ``first_chunk``, the time to the first SSE event instead of the whole response."""
    out: list[float] = []
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(req)
            buf = b""
            t_first = 0.0
            while True:
                data = s.recv(65536)
                if not data:
                    raise RuntimeError("connection closed")
                buf += data
                if not t_first and first_chunk and b"data:" in buf:
                    t_first = time.perf_counter()
                if response_done(buf):
                    break
            t_end = time.perf_counter()
            if not buf.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(buf[:300].decode(errors="replace"))
            out.append(((t_first if first_chunk else t_end) - t0) * 1000.0)
    return out


async def _conn_loop(port: int, req: bytes, deadline: float, lat: list[float]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(req)
            buf = b""
            while not response_done(buf):
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
            lat.append((time.perf_counter() - t0) * 1000.0)
    finally:
        writer.close()


def python_load(port: int, req: bytes, conns: int, duration: float) -> dict[str, float]:
    lat: list[float] = []

    async def main() -> None:
        deadline = time.perf_counter() + duration
        await asyncio.gather(*(_conn_loop(port, req, deadline, lat) for _ in range(conns)))

    t0 = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - t0
    return {
        **percentiles(lat),
        "rps": len(lat) / elapsed,
        "requests": float(len(lat)),
        "errors": 0.0,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p99": q[98]}


# -- the run --------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    port: int,
    key: str,
    args: argparse.Namespace,
    tmp: Path,
    load_cpu: int,
    use_wrk: bool,
    pid: int | None = None,
) -> dict[str, dict[str, float]]:
    url = f"http://{HOST}:{port}/v1/chat/completions"
    plain = CHAT
    streamed = {**CHAT, "stream": True}
    res: dict[str, dict[str, float]] = {}
    # warm-up: connections, caches, the upstream pool
    sequential(port, chat_request(port, key, plain), 200, first_chunk=False)
    sequential(port, chat_request(port, key, streamed), 50, first_chunk=True)
    if use_wrk:
        s_plain = wrk_script(tmp / f"plain-{port}.lua", plain, key)
        s_stream = wrk_script(tmp / f"stream-{port}.lua", streamed, key)
        res["seq"] = run_wrk(url, s_plain, 1, args.duration, load_cpu)
        cpu0, w0 = cpu_seconds(pid), time.perf_counter()
        res["c32"] = run_wrk(url, s_plain, 32, args.duration, load_cpu)
        cpu1, w1 = cpu_seconds(pid), time.perf_counter()
        res["stream_c32"] = run_wrk(url, s_stream, 32, args.duration, load_cpu)
        cpu2 = cpu_seconds(pid)
    else:
        os.sched_setaffinity(0, {load_cpu})
        req = chat_request(port, key, plain)
        res["seq"] = python_load(port, req, 1, args.duration)
        cpu0, w0 = cpu_seconds(pid), time.perf_counter()
        res["c32"] = python_load(port, req, 32, args.duration)
        cpu1, w1 = cpu_seconds(pid), time.perf_counter()
        res["stream_c32"] = python_load(port, chat_request(port, key, streamed), 32, args.duration)
        cpu2 = cpu_seconds(pid)
    ttft = sequential(port, chat_request(port, key, streamed), args.ttft_requests, first_chunk=True)
    res["ttft"] = percentiles(ttft)
    if pid is not None:
        # CPU the gateway spent per request: what one core can serve, whatever else runs
        res["c32"]["cpu_us"] = (cpu1 - cpu0) / max(res["c32"]["requests"], 1.0) * 1e6
        res["c32"]["core_share"] = (cpu1 - cpu0) / (w1 - w0)
        res["stream_c32"]["cpu_us"] = (cpu2 - cpu1) / max(res["stream_c32"]["requests"], 1.0) * 1e6
    return res


def best(acc: dict[str, dict[str, float]], new: dict[str, dict[str, float]]) -> None:
    """Keep the best of repeated runs: highest req/s, lowest latency and CPU per request
    (and every error seen)."""
    for group, values in new.items():
        cur = acc.setdefault(group, {})
        for field, value in values.items():
            if field not in cur:
                cur[field] = value
            elif field in ("rps", "requests", "core_share", "errors"):
                cur[field] = max(cur[field], value)
            else:
                cur[field] = min(cur[field], value)


def report(direct: dict[str, dict[str, float]], gw: dict[str, dict[str, float]]) -> bool:
    rows = [
        ("non-streaming, 1 conn: p50 latency", "seq", "p50", "ms"),
        ("non-streaming, 1 conn: p99 latency", "seq", "p99", "ms"),
        ("non-streaming, 1 conn: req/s", "seq", "rps", "req/s"),
        ("non-streaming, 32 conns: req/s", "c32", "rps", "req/s"),
        ("non-streaming, 32 conns: p50 latency", "c32", "p50", "ms"),
        ("streaming (100 chunks), 1 conn: p50 first chunk", "ttft", "p50", "ms"),
        ("streaming (100 chunks), 1 conn: p99 first chunk", "ttft", "p99", "ms"),
        ("streaming (100 chunks), 32 conns: req/s", "stream_c32", "rps", "req/s"),
    ]
    print()
    print(f"{'':50} {'direct':>10} {'gateway':>10} {'added':>10}")
    for label, group, field, unit in rows:
        d, g = direct[group].get(field, float("nan")), gw[group].get(field, float("nan"))
        if unit == "ms":
            print(f"{label:50} {d:9.3f}  {g:9.3f}  {g - d:+9.3f}  ms")
        else:
            print(f"{label:50} {d:10.0f} {g:10.0f} {'':>10}  {unit}")
    checks = [
        ("added p50 ≤ 0.3 ms", gw["seq"]["p50"] - direct["seq"]["p50"] <= TARGETS["p50"]),
        ("added p99 ≤ 1.5 ms", gw["seq"]["p99"] - direct["seq"]["p99"] <= TARGETS["p99"]),
        ("≥ 4,000 req/s at 32 conns", gw["c32"]["rps"] >= TARGETS["rps"]),
        (
            "first chunk added ≤ 0.5 ms",
            gw["ttft"]["p50"] - direct["ttft"]["p50"] <= TARGETS["ttft"],
        ),
    ]
    for group, label in (("c32", "non-streaming"), ("stream_c32", "streaming (100 chunks)")):
        cpu = gw[group].get("cpu_us")
        if cpu:
            print(
                f"{'gateway CPU per request, ' + label:50} {cpu:9.0f}  µs"
                f"  (one core: ≈{1e6 / cpu:,.0f} req/s)"
            )
    share = gw["c32"].get("core_share")
    if share is not None:
        print(
            f"gateway's share of its core during the 32-conn run: {share:.0%}"
            + (
                "  (the machine is busy: wall-clock numbers understate the gateway)"
                if share < 0.85
                else ""
            )
        )
    print()
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {label}")
    errors = sum(r.get("errors", 0.0) for r in gw.values())
    if errors:
        print(f"  gateway answered {errors:.0f} non-2xx responses / socket errors")
    return all(ok for _, ok in checks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="gateway overhead: direct vs through the gateway")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    p.add_argument("--ttft-requests", type=int, default=2000)
    p.add_argument("--no-wrk", action="store_true", help="use the Python load generator")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure N times (direct and gateway interleaved) and keep the best of each",
    )
    p.add_argument(
        "--usage",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="usage rows to SQLite (the store's UsageWriter) or kept in memory",
    )
    p.add_argument(
        "--switch-interval",
        type=float,
        default=0.0,
        help="the gateway's sys.setswitchinterval in ms (0: Python's default, 5 ms)",
    )
    p.add_argument(
        "--boost", action="store_true", help="run everything at nice -10 (busy machines)"
    )
    p.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--home", default="", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", default="", help="tenant limits in this Redis (else memory)")
    p.add_argument(
        "--store-url", default="", help="usage rows in this PostgreSQL (else a SQLite file)"
    )
    args = p.parse_args(argv)
    if args.serve_gateway:
        serve_gateway(args)
        return 0

    if args.boost:
        # Inherited by the upstream, the gateway and wrk: fewer preemptions by other work
        # on a shared machine (needs root; the run is bounded by --duration).
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs (gateway on one, load + upstream on the other)", file=sys.stderr)
        return 2
    gw_cpu, load_cpu = cpus[0], cpus[1]
    use_wrk = not args.no_wrk and shutil.which("wrk") is not None
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(
            f"warning: load average {load1:.1f} — other work shares these CPUs; wall-clock "
            "numbers will be noisy (use --repeat 3; CPU per request stays meaningful)"
        )
    print(
        f"gateway on CPU {gw_cpu}; upstream + load on CPU {load_cpu}; load generator: "
        + ("wrk" if use_wrk else "python raw sockets (wrk not found: apt-get install wrk)")
    )
    with tempfile.TemporaryDirectory(prefix="studioctl-bench-") as tmp_s:
        tmp = Path(tmp_s)
        with started(
            [sys.executable, str(HERE / "upstream_fixed.py"), "--cpu", str(load_cpu)]
        ) as upstream:
            up_port = int(read_line(upstream, "READY "))
            gw_port = free_port()
            with started(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-gateway",
                    "--upstream-port",
                    str(up_port),
                    "--port",
                    str(gw_port),
                    "--cpu",
                    str(gw_cpu),
                    "--home",
                    str(tmp / "home"),
                    "--usage",
                    args.usage,
                    "--switch-interval",
                    str(args.switch_interval),
                    "--redis-url",
                    args.redis_url,
                    "--store-url",
                    args.store_url,
                ]
            ) as gateway:
                key = read_line(gateway, "KEY ")
                usage_kind = read_line(gateway, "USAGE ")
                wait_port(gw_port, gateway)
                print(f"usage sink: {usage_kind}")
                direct: dict[str, dict[str, float]] = {}
                through: dict[str, dict[str, float]] = {}
                for _ in range(args.repeat):  # interleaved, so a stall hits both sides alike
                    best(direct, measure(up_port, key, args, tmp, load_cpu, use_wrk))
                    best(
                        through,
                        measure(gw_port, key, args, tmp, load_cpu, use_wrk, gateway.pid),
                    )
                stop(gateway)
                written = read_line(gateway, "WRITTEN ")
        ok = report(direct, through)
        print(f"  usage rows written by the gateway: {written}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
