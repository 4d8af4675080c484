"""A soak of the daemon under mixed traffic: normal, malformed, slow and aborted, side by side.

One run, on this machine, against 127.0.0.1 only:

- a real ``studioctl daemon run`` on a temporary STUDIOCTL_HOME, the gateway on a free port,
  with its default bounds (``gateway.header_timeout_s`` …), one stand-in engine
  (``tests/standin``) and one tenant;
- an idle run: normal requests alone (``--concurrency`` clients, keep-alive, non-streamed chat)
  for ``--baseline`` seconds: their p50/p99;
- the soak, for ``--duration`` seconds: the same normal clients, and in a second process
  (so that its work does not slow the measuring client) hostile traffic, bounded:
  ``--slow`` connections at a time that never finish their head (slowloris), say nothing, or
  send a body shorter than its Content-Length; ``--malformed`` requests per second (bytes
  that are not HTTP, a 100 KB head, too many header fields, invalid JSON, a bad key, a
  300-deep JSON body, an unknown path); ``--aborts`` streams per second cut by the client
  after the first event (half with a reset).

Printed: the daemon's RSS and open descriptors at the start and end of the soak (and the
highest seen), the normal requests' p99 in the soak against the idle run, what the hostile
clients got back, and the accounting check: usage rows of the tenant == requests of it the
gateway accepted (answered, or aborted after its answer began). Verdicts: RSS and descriptors
flat (end within max(16 MiB, 10 %) and 16 descriptors of the start), p99 within 2x of the idle
run, every accepted request accounted, no normal request failed. Exit status 1 if one fails.

    python benchmarks/soak.py [--duration 180] [--baseline 20] [--concurrency 4]
                              [--slow 50] [--malformed 20] [--aborts 5] [--keep-home]

It starts the daemon (which starts the stand-in) and one helper process, and ends exactly
those: the daemon with ``daemon stop --stop-engines``, the helper by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rawhttp import chat_request, response_done

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
MODEL = "soak"
SLOW_MODEL = "soak-slow"


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def status_of(buf: bytes) -> int:
    try:
        return int(buf.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


# -- the daemon ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def engine_ports() -> int:
    """The first of 50 free ports below the ephemeral range (where no client port lands)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000)
        with contextlib.ExitStack() as stack:
            try:
                for p in (base, base + 49):
                    s = stack.enter_context(socket.socket())
                    s.bind((HOST, p))
            except OSError:
                continue
            return base
    raise RuntimeError("no free port block for the engine")


@dataclass
class Daemon:
    home: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, timeout: float = 120.0) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "studioctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError(f"studioctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r.stdout

    def start(self) -> None:
        with open(self.home / "daemon.out", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "studioctl", "daemon", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the daemon did not come up: {self.log()}")

    def log(self) -> str:
        p = self.home / "daemon.out"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.cli("daemon", "stop", "--stop-engines", "--timeout", "60", timeout=90)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # the daemon this script started, by pid
            self.proc.wait(10)

    def figures(self) -> tuple[int, int]:
        """(RSS bytes, open descriptors) of the daemon process."""
        import psutil

        assert self.proc is not None
        p = psutil.Process(self.proc.pid)
        return p.memory_info().rss, p.num_fds()


def make_daemon() -> Daemon:
    home = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    port = free_port()
    low = engine_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update(
        {
            "STUDIOCTL_HOME": str(home),
            "STUDIOCTL_GATEWAY_PORT": str(port),
            "STUDIOCTL_DAEMON_AUTOSTART": "false",
            "STUDIOCTL_ENGINES_PORT_MIN": str(low),
            "STUDIOCTL_ENGINES_PORT_MAX": str(low + 49),
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        }
    )
    recipes = home / "config" / "recipes"
    recipes.mkdir(parents=True)
    # MODEL answers at once; SLOW_MODEL streams 50 tokens a second (the aborted streams' model,
    # so that they are cut mid-stream).
    for name, delay in ((MODEL, "0"), (SLOW_MODEL, "0.02")):
        recipe = {
            "backend": "vllm",
            "model": "standin/model",
            "python": sys.executable,
            "served_model_name": name,
            "readiness_timeout_s": 60,
            "env": {
                "PYTHONPATH": str(REPO / "tests" / "standin"),
                "STANDIN_STARTUP_S": "0.3",
                "STANDIN_ACCESS_LOG": "0",
                "STANDIN_TOKEN_DELAY_S": delay,
            },
        }
        (recipes / f"{name}.yaml").write_text(_json(recipe))  # JSON is YAML
    return Daemon(home=home, env=env, port=port)


# -- normal clients (this process) --------------------------------------------------------------


@dataclass
class Normal:
    latencies: list[float] = field(default_factory=list)  # ms, non-streamed, answered 200
    answered: int = 0  # responses received (any status): each one is a usage row
    failed: int = 0  # sent, no response (connection lost): a row may or may not exist
    statuses: dict[int, int] = field(default_factory=dict)


def normal_client(port: int, key: str, deadline: float, out: Normal, lock: threading.Lock) -> None:
    req = chat_request(
        port, key, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4}
    )  # fmt: skip
    sock: socket.socket | None = None
    while time.monotonic() < deadline:
        try:
            if sock is None:
                sock = socket.create_connection((HOST, port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            sock.sendall(req)
            buf = b""
            while not response_done(buf):
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                buf += data
            ms = (time.perf_counter() - t0) * 1000.0
            status = status_of(buf)
            with lock:
                out.answered += 1
                out.statuses[status] = out.statuses.get(status, 0) + 1
                if status == 200:
                    out.latencies.append(ms)
            if b"connection: close" in buf[: buf.find(b"\r\n\r\n")].lower():
                sock.close()
                sock = None
        except OSError:
            with lock:
                out.failed += 1
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.05)
    if sock is not None:
        sock.close()


def probe_client(port: int, key: str, deadline: float, out: list[float]) -> None:
    """GET /v1/models on one keep-alive connection, one after another: the gateway alone
    (no engine in the path), so its own stalls show."""
    req = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            sock.sendall(req)
            buf = b""
            while not response_done(buf):
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError(f"probe connection closed: {buf[:200]!r}")
                buf += data
            if status_of(buf) != 200:
                raise RuntimeError(f"probe answered {buf[:300]!r}")
            out.append((time.perf_counter() - t0) * 1000.0)
            time.sleep(0.002)


def run_normal(
    port: int, key: str, probe_key: str, seconds: float, concurrency: int
) -> tuple[Normal, list[float]]:
    """``concurrency`` chat clients and one /v1/models prober for ``seconds``."""
    out = Normal()
    probes: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=normal_client, args=(port, key, deadline, out, lock))
        for _ in range(concurrency)
    ]
    threads.append(threading.Thread(target=probe_client, args=(port, probe_key, deadline, probes)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, probes


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


# -- hostile clients (the helper process) -------------------------------------------------------


@dataclass
class Hostile:
    port: int
    key: str
    deadline: float
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    aborted: int = 0  # streams cut after their answer began: each one is a usage row
    aborted_early: int = 0  # cut before any answer: a row may or may not exist

    def note(self, kind: str, outcome: str) -> None:
        d = self.outcomes.setdefault(kind, {})
        d[outcome] = d.get(outcome, 0) + 1


async def read_outcome(reader: asyncio.StreamReader, timeout: float) -> str:
    """What the server did: an answer's status, ``closed`` or ``reset`` (or ``open``)."""
    buf = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\r\n" not in buf:
                data = await reader.read(4096)
                if not data:
                    return "closed" if not buf else f"partial {buf[:20]!r}"
                buf += data
    except TimeoutError:
        return "open"
    except ConnectionResetError:
        return "reset"
    return str(status_of(buf))


async def slow_connection(h: Hostile, kind: str) -> None:
    """One hostile connection until the server ends it (then the caller opens another)."""
    reader, writer = await asyncio.open_connection(HOST, h.port)
    try:
        if kind == "slowloris":
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif kind == "short_body":
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                b'Content-Type: application/json\r\n\r\n{"model": "soak"'
            )
        # "silent": says nothing at all.
        while time.monotonic() < h.deadline:
            outcome = await read_outcome(reader, 1.0)
            if outcome != "open":
                h.note(kind, outcome)
                return
            if kind == "slowloris":
                writer.write(b"a")
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        h.note(kind, "still open at the end")
    except ConnectionError:
        h.note(kind, "reset")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def slow_keeper(h: Hostile, kind: str) -> None:
    while time.monotonic() < h.deadline:
        try:
            await slow_connection(h, kind)
        except OSError as exc:
            h.note(kind, f"connect {type(exc).__name__}")
            await asyncio.sleep(0.5)


def malformed_requests(port: int) -> list[tuple[str, bytes]]:
    nested = ('{"model":"soak","messages":[],"x":' + "[" * 300 + "]" * 300 + "}").encode()
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(400))
    return [
        ("not_http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64)),
        ("big_head", b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"),
        ("many_fields", b"GET /livez HTTP/1.1\r\n" + fields + b"\r\n"),
        ("invalid_json", chat_request(port, None, b"{x")),
        ("bad_key", chat_request(port, "sk-nope", {"model": MODEL, "messages": []})),
        ("deep_json", chat_request(port, "sk-nope", nested)),
        ("unknown_path", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]  # fmt: skip


async def malformed_one(h: Hostile, kind: str, data: bytes) -> None:
    try:
        reader, writer = await asyncio.open_connection(HOST, h.port)
    except OSError as exc:
        h.note(kind, f"connect {type(exc).__name__}")
        return
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        h.note(kind, await read_outcome(reader, 15.0))
    except ConnectionError:
        h.note(kind, "reset")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def abort_one(h: Hostile, rst: bool) -> None:
    body = {
        "model": SLOW_MODEL,
        "messages": [{"role": "user", "content": "stream and be cut"}],
        "max_tokens": 500,
        "stream": True,
    }
    try:
        reader, writer = await asyncio.open_connection(HOST, h.port)
    except OSError as exc:
        h.note("abort", f"connect {type(exc).__name__}")
        return
    began = False
    try:
        writer.write(chat_request(h.port, h.key, body))
        await writer.drain()
        async with asyncio.timeout(15):
            buf = b""
            while b"data:" not in buf:
                data = await reader.read(4096)
                if not data:
                    break
                buf += data
                began = began or b"\r\n" in buf
        h.note("abort", str(status_of(buf)) if buf else "closed")
    except (TimeoutError, ConnectionError):
        h.note("abort", "no answer")
    finally:
        if rst:
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close with a reset
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        if began:
            h.aborted += 1
        else:
            h.aborted_early += 1


async def every(rate: float, h: Hostile, make: Any) -> None:
    """Start ``make()`` ``rate`` times per second until the deadline (at most 200 at once)."""
    if rate <= 0:
        return
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while time.monotonic() < h.deadline:
        if len(tasks) < 200:
            t = asyncio.create_task(make(i))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        i += 1
        await asyncio.sleep(1.0 / rate)
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def hostile_main(args: argparse.Namespace) -> dict[str, Any]:
    h = Hostile(port=args.port, key=args.key, deadline=time.monotonic() + args.duration)
    kinds = ["slowloris", "silent", "short_body"]
    keepers = [slow_keeper(h, kinds[i % 3]) for i in range(args.slow)]
    bad = malformed_requests(args.port)

    async def malformed(i: int) -> None:
        kind, data = bad[i % len(bad)]
        await malformed_one(h, kind, data)

    async def abort(i: int) -> None:
        await abort_one(h, rst=bool(i % 2))

    await asyncio.gather(
        *keepers, every(args.malformed, h, malformed), every(args.aborts, h, abort)
    )
    return {"outcomes": h.outcomes, "aborted": h.aborted, "aborted_early": h.aborted_early}


def hostile_child(args: argparse.Namespace) -> None:
    try:
        import uvloop

        result = uvloop.run(hostile_main(args))
    except ImportError:
        result = asyncio.run(hostile_main(args))
    print("RESULT " + _json(result), flush=True)


# -- the run ------------------------------------------------------------------------------------


def tenant_rows(home: Path, tenant_id: str) -> int:
    import sqlite3  # read beside the daemon's store; it is stopped by now

    db = sqlite3.connect(f"file:{home / 'state' / 'studioctl.db'}?mode=ro", uri=True)
    try:
        (n,) = db.execute("SELECT COUNT(*) FROM usage WHERE tenant_id = ?", (tenant_id,)).fetchone()
        return int(n)
    finally:
        db.close()


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def soak(args: argparse.Namespace) -> int:
    d = make_daemon()
    helper: subprocess.Popen[str] | None = None
    try:
        d.start()
        d.cli("launch", MODEL, "--json", timeout=120)
        d.cli("launch", SLOW_MODEL, "--json", timeout=120)
        limits = ["--max-concurrent", "256", "--rpm", "100000000", "--tpm", "100000000000",
                  "--max-output", "4096", "--json"]  # fmt: skip
        created = json.loads(d.cli("tenant", "create", "soak", *limits))
        key, tenant_id = created["key"], created["tenant"]["id"]
        probe_key = json.loads(d.cli("tenant", "create", "probe", *limits))["key"]
        print(f"daemon pid {d.proc.pid if d.proc else '?'}, gateway {HOST}:{d.port}, home {d.home}")

        warm, _ = run_normal(d.port, key, probe_key, 2.0, args.concurrency)
        idle, idle_probes = run_normal(d.port, key, probe_key, args.baseline, args.concurrency)
        rss0, fds0 = d.figures()

        helper = subprocess.Popen(
            [sys.executable, __file__, "--hostile", "--port", str(d.port), "--key", key,
             "--duration", str(args.duration), "--slow", str(args.slow),
             "--malformed", str(args.malformed), "--aborts", str(args.aborts)],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        peak = [rss0, fds0]
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(2.0):
                with contextlib.suppress(Exception):
                    rss, fds = d.figures()
                    peak[0], peak[1] = max(peak[0], rss), max(peak[1], fds)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        loaded, soak_probes = run_normal(d.port, key, probe_key, args.duration, args.concurrency)
        out, _ = helper.communicate(timeout=args.duration + 120)
        stop_sampling.set()
        sampler.join(5)
        result = next(
            (json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")), None
        )
        if result is None:
            raise RuntimeError(f"the hostile helper printed no result (exit {helper.returncode})")

        # Let the bounds end what the hostile clients left (header timeout, linger), then
        # measure: the figures should be back where they started.
        settle_until = time.monotonic() + 20
        rss1, fds1 = d.figures()
        while fds1 > fds0 and time.monotonic() < settle_until:
            time.sleep(0.5)
            rss1, fds1 = d.figures()
        d.stop()
        rows = tenant_rows(d.home, tenant_id)
    finally:
        if helper is not None and helper.poll() is None:
            helper.send_signal(signal.SIGKILL)  # the helper this script started, by pid
            helper.wait(10)
        d.stop()
        if args.keep_home:
            print(f"kept {d.home} (daemon log: {d.home / 'daemon.out'})")
        else:
            shutil.rmtree(d.home, ignore_errors=True)

    accepted = warm.answered + idle.answered + loaded.answered + result["aborted"]
    uncertain = warm.failed + idle.failed + loaded.failed + result["aborted_early"]
    p99_idle, p99_soak = pct(idle.latencies, 99), pct(loaded.latencies, 99)
    rss_ok = rss1 <= rss0 + max(16 << 20, rss0 // 10)
    fds_ok = fds1 <= fds0 + 16
    probe_idle, probe_soak = pct(idle_probes, 99), pct(soak_probes, 99)
    p99_ok = p99_soak <= 2 * p99_idle
    probe_ok = probe_soak <= 2 * probe_idle
    rows_ok = rows == accepted if not uncertain else accepted <= rows <= accepted + uncertain
    normal_ok = loaded.failed == 0 and set(loaded.statuses) == {200}

    print()
    print(f"soak {args.duration:g} s after an idle run of {args.baseline:g} s; "
          f"{args.concurrency} normal clients, {args.slow} slow connections, "
          f"{args.malformed}/s malformed, {args.aborts}/s aborted streams")  # fmt: skip
    print(f"  normal idle: {len(idle.latencies)} requests, p50 {pct(idle.latencies, 50):.2f} ms, "
          f"p99 {p99_idle:.2f} ms")  # fmt: skip
    print(f"  normal soak: {len(loaded.latencies)} requests, p50 {pct(loaded.latencies, 50):.2f} "
          f"ms, p99 {p99_soak:.2f} ms ({p99_soak / p99_idle:.2f}x idle); statuses "
          f"{loaded.statuses}, failed {loaded.failed}")  # fmt: skip
    print(f"  /v1/models (no engine): idle p50 {pct(idle_probes, 50):.2f} ms, p99 "
          f"{probe_idle:.2f} ms; soak p50 {pct(soak_probes, 50):.2f} ms, p99 {probe_soak:.2f} ms "
          f"({probe_soak / probe_idle:.2f}x idle)")  # fmt: skip
    print(f"  daemon RSS: start {mib(rss0)}, end {mib(rss1)}, peak {mib(peak[0])}")
    print(f"  daemon open descriptors: start {fds0}, end {fds1}, peak {peak[1]}")
    print("  hostile clients got:")
    for kind, outcomes in sorted(result["outcomes"].items()):
        shown = ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))
        print(f"    {kind:<13} {shown}")
    print(f"  aborted streams: {result['aborted']} after the answer began, "
          f"{result['aborted_early']} before")  # fmt: skip
    print(f"  usage rows of the tenant: {rows}; accepted requests: {accepted}"
          + (f" (+ up to {uncertain} uncertain)" if uncertain else ""))  # fmt: skip
    verdicts = {
        "RSS flat": rss_ok,
        "descriptors flat": fds_ok,
        "chat p99 within 2x of idle": p99_ok,
        "/v1/models p99 within 2x of idle": probe_ok,
        "every accepted request accounted": rows_ok,
        "no normal request failed": normal_ok,
    }
    print()
    for name, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(verdicts.values()) else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="soak seconds (default 180)")
    ap.add_argument(
        "--baseline", type=float, default=None, help="idle-run seconds (default: duration/4, 10-30)"
    )
    ap.add_argument("--concurrency", type=int, default=4, help="normal clients (default 4)")
    ap.add_argument("--slow", type=int, default=50, help="slow connections at once (default 50)")
    ap.add_argument("--malformed", type=float, default=20.0, help="malformed requests per second")
    ap.add_argument("--aborts", type=float, default=5.0, help="aborted streams per second")
    ap.add_argument("--keep-home", action="store_true", help="keep the daemon's home and log")
    ap.add_argument("--hostile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.slow > 500 or args.malformed > 200 or args.aborts > 100 or args.concurrency > 64:
        ap.error("bounded: --slow <= 500, --malformed <= 200, --aborts <= 100, --concurrency <= 64")
    if args.hostile:
        hostile_child(args)
        return
    if args.baseline is None:
        args.baseline = max(10.0, min(30.0, args.duration / 4))
    sys.exit(soak(args))


if __name__ == "__main__":
    main()
