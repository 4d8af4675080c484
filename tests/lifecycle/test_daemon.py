"""The daemon process and the read-only commands: one daemon per home, start/stop/status,
autostart, systemd notify, the control socket's mode, engines outliving a daemon stop, and
``ps``, ``status``, ``logs`` (-n, -f, --since, daemon down) and ``events``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon_helpers import REPO, Daemon, alive, running_daemon
from standin.helpers import http_status
from studioctl.daemon import connection_budget
from studioctl.daemon_lock import lock_holder
from studioctl.errors import EXIT_CONFLICT, EXIT_DAEMON_UNREACHABLE, EXIT_NOT_FOUND

pytestmark = pytest.mark.integration


def lock_file(d: Daemon) -> Path:
    return d.home / "state" / "daemon.lock"


def survivors(procs: list[dict[str, Any]]) -> list[int]:
    return [p["pid"] for p in procs if alive(p["pid"], p["create_time"])]


# --------------------------------------------------------------------------- one daemon


def test_second_daemon_run_is_refused_naming_the_pid() -> None:
    with running_daemon() as d:
        assert d.proc is not None
        r = d.cli("daemon", "run", timeout=60)
        assert r.returncode == EXIT_CONFLICT, r.stderr
        assert f"a daemon is already running for this STUDIOCTL_HOME (pid {d.proc.pid})" in r.stderr
        assert "studioctl daemon stop" in r.stderr  # the hint
        # The first one is untouched and `daemon start` just reports it.
        assert d.proc.poll() is None
        info = d.cli_json("daemon", "start", "--json")
        assert info["pid"] == d.proc.pid
        assert lock_holder(lock_file(d)) == d.proc.pid


def test_daemon_status_json_up_and_down() -> None:
    with running_daemon() as d:
        assert d.proc is not None
        st = d.cli_json("daemon", "status", "--json")
        assert st["running"] is True
        assert st["pid"] == d.proc.pid
        assert st["api_version"] == 1
        assert st["socket"] == str(d.socket)
        r = d.cli("daemon", "stop")
        assert r.returncode == 0, r.stderr
        assert f"daemon stopped (pid {d.proc.pid})" in r.stdout
        assert d.proc.wait(20) == 0
        r = d.cli("daemon", "status", "--json")
        assert r.returncode == EXIT_DAEMON_UNREACHABLE
        assert json.loads(r.stdout)["running"] is False
        assert "the studioctl daemon is not running" in r.stderr
        assert not d.socket.exists()  # removed on a graceful stop
        r = d.cli("status", "--json")
        assert r.returncode == EXIT_DAEMON_UNREACHABLE
        assert json.loads(r.stdout) == {"daemon": {"running": False}}
        assert d.cli("daemon", "stop").stdout.strip() == "daemon is not running"


def test_control_socket_is_0600_and_systemd_is_notified() -> None:
    folder = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    addr = os.path.join(folder, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind(addr)
        notify.settimeout(20)
        with running_daemon({"NOTIFY_SOCKET": addr}) as d:
            assert notify.recv(256) == b"READY=1"
            mode = os.stat(d.socket).st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o600
            assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) & 0o077 == 0
            d.stop()
            assert notify.recv(256) == b"STOPPING=1"
            notify.settimeout(0.3)
            with pytest.raises(TimeoutError):
                notify.recv(256)  # nothing more
    finally:
        notify.close()
        with contextlib.suppress(OSError):
            os.unlink(addr)
        os.rmdir(folder)


def test_autostart_off_is_exit_4_with_a_hint() -> None:
    with running_daemon(start=False) as d:
        d.recipe("never-started")
        for args in (("ps",), ("launch", "never-started"), ("evict", "x"), ("events",)):
            r = d.cli(*args)
            assert r.returncode == EXIT_DAEMON_UNREACHABLE, (args, r.stderr)
            assert "the studioctl daemon is not running" in r.stderr
            assert "daemon.autostart is off" in r.stderr
            assert "studioctl daemon start" in r.stderr
        assert not d.socket.exists()
        assert lock_holder(lock_file(d)) is None


def _stop_detached(d: Daemon) -> None:
    """Stop a daemon started with `daemon start` (ours: by the pid in its lock)."""
    pid = lock_holder(lock_file(d))
    d.cli("daemon", "stop", "--timeout", "30")
    if pid and pid > 0 and psutil.pid_exists(pid) and lock_holder(lock_file(d)) == pid:
        os.kill(pid, signal.SIGKILL)


def test_daemon_start_detached_then_stop() -> None:
    with running_daemon(start=False) as d:
        try:
            info = d.cli_json("daemon", "start", "--json")
            pid = info["pid"]
            assert psutil.Process(pid).is_running()
            assert lock_holder(lock_file(d)) == pid
            assert d.cli_json("daemon", "status", "--json")["pid"] == pid
            assert d.cli_json("daemon", "start", "--json")["pid"] == pid  # already running
            assert (d.home / "log" / "daemon.log").read_text().count(f"daemon {pid} ready") == 1
            r = d.cli("daemon", "stop")
            assert r.returncode == 0 and f"daemon stopped (pid {pid})" in r.stdout
            deadline = time.monotonic() + 10
            while psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
                assert time.monotonic() < deadline, "the detached daemon did not exit"
                time.sleep(0.1)
        finally:
            _stop_detached(d)


def test_autostart_on_starts_the_daemon() -> None:
    with running_daemon({"STUDIOCTL_DAEMON_AUTOSTART": "true"}, start=False) as d:
        try:
            assert lock_holder(lock_file(d)) is None
            data = d.cli_json("ps", "--json")
            assert data == {"instances": [], "queued": []}
            pid = lock_holder(lock_file(d))
            assert pid is not None and pid > 0
            assert d.cli_json("daemon", "status", "--json")["pid"] == pid
        finally:
            _stop_detached(d)


# --------------------------------------------------------------------------- engines outlive it


def test_daemon_stop_leaves_engines_and_the_next_daemon_adopts_them() -> None:
    with running_daemon() as d:
        d.recipe("stay", env={"STANDIN_ACCESS_LOG": "0"})
        inst = d.launch("stay")
        assert d.proc is not None
        first_pid = d.proc.pid
        r = d.cli("daemon", "stop")
        assert r.returncode == 0, r.stderr
        assert d.proc.wait(20) == 0
        # The engine keeps serving without its daemon.
        assert survivors(inst["processes"]) == [p["pid"] for p in inst["processes"]]
        assert http_status(f"{inst['url']}/health") == 200

        # logs with the daemon down: straight from the file.
        r = d.cli("logs", "stay", "-n", "4")
        assert r.returncode == 0, r.stderr
        assert f"daemon not running: reading {inst['log_path']}" in r.stderr
        lines = Path(inst["log_path"]).read_text().splitlines()
        assert r.stdout.splitlines() == lines[-4:]
        r = d.cli("logs", "stay-1", "-n", "1000")
        assert r.stdout.splitlines() == lines
        r = d.cli("logs", "nope")
        assert r.returncode == EXIT_NOT_FOUND
        assert "no log for 'nope'" in r.stderr
        assert d.cli("status").returncode == EXIT_DAEMON_UNREACHABLE

        d.start()
        assert d.proc.pid != first_pid
        adopted = d.wait_state(inst["id"], "ready", timeout=10)
        assert adopted["pid"] == inst["pid"] and adopted["adopted"] is True
        assert any(
            e["kind"] == "adopt" and f"adopted pid {inst['pid']}" in e["message"]
            for e in d.events(instance=inst["id"])
        )
        daemon_events = [e["message"] for e in d.events() if e["kind"] == "daemon"]
        assert daemon_events == [
            f"daemon started (pid {first_pid})",
            f"daemon stopped (pid {first_pid})",
            f"daemon started (pid {d.proc.pid})",
        ]

        # --stop-engines: this time they go too.
        r = d.cli("daemon", "stop", "--stop-engines")
        assert r.returncode == 0, r.stderr
        assert d.proc.wait(30) == 0
        assert survivors(inst["processes"]) == []


# --------------------------------------------------------------------------- queries


@pytest.fixture(scope="module")
def qd() -> Iterator[Daemon]:
    """One daemon with one quiet instance (no access log: its log file stays still)."""
    with running_daemon() as d:
        d.recipe("q", gpus=[7], env={"STANDIN_ACCESS_LOG": "0"})
        d.recipe("chatty")  # access log on: a line per request
        d.launch("q")
        d.launch("chatty")
        yield d


def test_ps_json_and_table(qd: Daemon) -> None:
    data = qd.cli_json("ps", "--json")
    assert "foreign" not in data
    by_id = {i["id"]: i for i in data["instances"]}
    q = by_id["q-1"]
    assert q["recipe"] == "q" and q["backend"] == "vllm" and q["model"] == "standin/model"
    assert q["state"] == "ready" and q["restarts"] == 0 and q["gpus"] == [7]
    assert q["uptime_s"] > 0
    assert psutil.Process(q["pid"]).is_running()
    assert http_status(f"http://127.0.0.1:{q['port']}/health") == 200
    r = qd.cli("ps")
    assert r.returncode == 0
    header = r.stdout.lower().splitlines()[0].split()
    assert header[:7] == ["instance", "recipe", "backend", "model", "pid", "port", "state"]
    row = next(line for line in r.stdout.splitlines() if line.startswith("q-1"))
    pid, port = str(q["pid"]), str(q["port"])
    assert row.split()[:7] == ["q-1", "q", "vllm", "standin/model", pid, port, "ready"]


def test_status_json(qd: Daemon) -> None:
    st = qd.cli_json("status", "--json")
    assert qd.proc is not None
    assert st["daemon"]["pid"] == qd.proc.pid
    assert st["daemon"]["api_version"] == 1
    assert st["daemon"]["socket"] == str(qd.socket)
    assert st["daemon"]["uptime_s"] > 0
    assert st["gateway"]["url"] is None  # the gateway is off in these tests
    assert {i["id"] for i in st["instances"]} == {"q-1", "chatty-1"}
    assert st["operations"] == []
    r = qd.cli("status")
    assert r.returncode == 0
    assert f"daemon:  running (pid {qd.proc.pid}" in r.stdout


def test_logs_last_lines_and_since(qd: Daemon) -> None:
    path = Path(qd.instance("q-1")["log_path"])
    lines = path.read_text().splitlines()
    assert len(lines) > 10
    r = qd.cli("logs", "q", "-n", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == lines[-3:]
    assert qd.cli("logs", "q-1", "-n", "1000").stdout.splitlines() == lines
    # --since: the launch marker and everything after it carry today's stamps.
    r = qd.cli("logs", "q", "--since", "1h")
    assert r.stdout.splitlines() == lines
    future = str(time.time() + 3600)
    assert qd.cli("logs", "q", "--since", future).stdout == ""
    r = qd.cli("logs", "q", "--since", "yesterday-ish")
    assert r.returncode == 2 and "--since" in r.stderr
    r = qd.cli("logs", "nope")
    assert r.returncode == EXIT_NOT_FOUND
    assert "no instance or recipe named 'nope'" in r.stderr


def test_logs_follow_reads_new_lines(qd: Daemon) -> None:
    inst = qd.instance("chatty-1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "studioctl", "logs", "chatty", "-f", "-n", "0"],
        env=qd.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    got: list[str] = []
    marker = f"/follow-{uuid.uuid4().hex}"

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while not any(marker in line for line in got):
            assert time.monotonic() < deadline, f"no line with {marker} in {got[-5:]}"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            http_status(f"{inst['url']}{marker}")  # a 404, logged by the engine
            time.sleep(0.3)
    finally:
        proc.kill()  # the CLI process this test started
        proc.wait(10)
        reader.join(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert not any(line.startswith("=== studioctl") for line in got)  # -n 0: no old lines
    assert all(line in Path(inst["log_path"]).read_text() for line in got if line)


def test_events_json(qd: Daemon) -> None:
    r = qd.cli("events", "--json", "-n", "500")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0]["kind"] == "daemon"
    q = [e for e in events if e["instance_id"] == "q-1"]
    kinds = [e["kind"] for e in q]
    assert kinds[0] == "launch"
    assert {"stage", "state", "ready"} <= set(kinds)
    assert [e["data"]["to"] for e in q if e["kind"] == "state"][-1] == "ready"
    out = qd.cli("events", "--json", "--instance", "q-1").stdout
    only = [json.loads(x) for x in out.splitlines()]
    assert only and {e["instance_id"] for e in only} == {"q-1"}
    last3 = qd.cli("events", "--json", "-n", "3").stdout.splitlines()
    assert len(last3) == 3
    text = qd.cli("events", "-n", "5")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 5


# --------------------------------------------------------------------------- limits and drain

# This checkout's code in the daemons below (running_daemon's PYTHONPATH is the repository
# root, where an editable install of another checkout would win).
_HERE = {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


@pytest.mark.parametrize(
    ("wanted", "nofile", "budget"),
    [(4096, 1048576, 4096), (4096, 1024, 384), (4096, 300, 22), (50, 20000, 50), (10, 100, 1)],
)
def test_the_connection_limit_fits_the_open_file_limit(
    wanted: int, nofile: int, budget: int
) -> None:
    # Two descriptors per connection (it and its upstream) after 256 for the rest.
    assert connection_budget(wanted, nofile) == budget
    assert connection_budget(wanted, -1) == wanted  # RLIM_INFINITY


def test_daemon_raises_its_soft_open_file_limit_to_the_hard_one() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 512)
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip(f"the hard open-file limit ({hard}) leaves nothing to raise")
    with running_daemon(_HERE, start=False) as d:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # inherited by the daemon
        try:
            d.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert d.proc is not None
        daemon_soft, daemon_hard = psutil.Process(d.proc.pid).rlimit(psutil.RLIMIT_NOFILE)
        assert daemon_hard == hard
        assert daemon_soft > low
        if hard != resource.RLIM_INFINITY:
            assert daemon_soft == hard
        assert f"open-file limit {daemon_soft} (hard {daemon_hard})" in d.log_text()


def _stream_through_gateway(
    d: Daemon, key: str, max_tokens: int, seen: list[str], first: threading.Event
) -> None:
    """POST a streamed chat; every SSE ``data:`` line goes to ``seen`` (errors too)."""
    import httpx

    body = {
        "model": "slow",
        "messages": [{"role": "user", "content": "stream please"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{d.gateway_port}", timeout=60) as c,
            c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp,
        ):
            seen.append(f"status {resp.status_code}")
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    seen.append(line[6:])
                    first.set()
    except Exception as exc:  # the test asserts on what arrived
        seen.append(f"error {type(exc).__name__}: {exc}")
    finally:
        first.set()


def _gateway_refuses_connections(d: Daemon) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", d.gateway_port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_sigterm_mid_stream_lets_the_stream_finish_and_records_its_usage() -> None:
    from gateway_daemon.helpers import create_tenant, gateway_daemon, usage_rows

    # 0.25 s per token: a 40-token stream runs ~10 s: beyond uvicorn's 5 s grace, well inside
    # gateway.drain_timeout_s (30).
    recipes = {"slow": {"env": {"STANDIN_TOKEN_DELAY_S": "0.25", "STANDIN_ACCESS_LOG": "0"}}}
    with gateway_daemon(recipes, env=_HERE) as d:
        d.launch("slow")
        key = create_tenant(d, "drainer")[1]
        seen: list[str] = []
        first = threading.Event()
        reader = threading.Thread(target=_stream_through_gateway, args=(d, key, 40, seen, first))
        reader.start()
        try:
            assert first.wait(20), "no first chunk"
            assert d.proc is not None
            d.proc.send_signal(signal.SIGTERM)
            # The gateway stops accepting at once, while the stream runs on.
            deadline = time.monotonic() + 5
            while not _gateway_refuses_connections(d):
                assert time.monotonic() < deadline, "the gateway still accepts connections"
                time.sleep(0.05)
            assert reader.is_alive(), "the stream ended before the gateway stopped accepting"
            reader.join(40)
            assert d.proc.wait(40) == 0
        finally:
            reader.join(40)
        assert seen[0] == "status 200", seen
        assert seen[-1] == "[DONE]", seen[-3:]
        text = "".join(
            c["choices"][0]["delta"].get("content") or ""
            for c in map(json.loads, seen[1:-1])
            if c.get("choices")
        )
        assert text.split() == [f"tok{i}" for i in range(40)]
        rows = usage_rows(d)
        assert len(rows) == 1, rows
        assert (rows[0].status, rows[0].completion_tokens, rows[0].disconnected) == (200, 40, False)
        d.start()  # adopts the engine, so that the teardown stops it


def test_sigterm_past_the_drain_timeout_ends_the_stream_with_an_error_event_and_a_row() -> None:
    import httpx

    from gateway_daemon.helpers import create_tenant, gateway_daemon, usage_rows

    # 0.25 s per token, 200 tokens: ~50 s, far beyond a 1 s drain.
    recipes = {"slow": {"env": {"STANDIN_TOKEN_DELAY_S": "0.25", "STANDIN_ACCESS_LOG": "0"}}}
    env = {**_HERE, "STUDIOCTL_GATEWAY_DRAIN_TIMEOUT_S": "1"}
    with gateway_daemon(recipes, env=env) as d:
        d.launch("slow")
        key = create_tenant(d, "drainer")[1]
        kept = httpx.Client(base_url=f"http://127.0.0.1:{d.gateway_port}", timeout=30)
        assert kept.get("/livez").status_code == 200  # a keep-alive connection, open before
        seen: list[str] = []
        first = threading.Event()
        reader = threading.Thread(target=_stream_through_gateway, args=(d, key, 200, seen, first))
        reader.start()
        try:
            assert first.wait(20), "no first chunk"
            assert d.proc is not None
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            # Refused connections: the stop has begun (the drain starts in the same step).
            deadline = time.monotonic() + 5
            while not _gateway_refuses_connections(d):
                assert time.monotonic() < deadline, "the gateway still accepts connections"
                time.sleep(0.05)
            # A new request on an open connection while draining: 503 shutting_down.
            late = kept.post(
                "/v1/chat/completions",
                json={
                    "model": "slow",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 1,
                },
                headers={"Authorization": f"Bearer {key}"},
            )
            assert late.status_code == 503, late.text
            assert late.json()["error"]["code"] == "shutting_down"
            reader.join(40)
            assert d.proc.wait(40) == 0
            assert time.monotonic() - t0 < 20  # ended at the drain timeout, not the stream's
        finally:
            kept.close()
            reader.join(40)
        assert seen[0] == "status 200", seen
        assert seen[-1] == "[DONE]", seen[-3:]
        assert "error" in json.loads(seen[-2]), seen[-3:]  # an error event before [DONE]
        rows = [r for r in usage_rows(d) if r.streamed]
        assert len(rows) == 1, rows
        assert 0 < rows[0].completion_tokens < 200
        d.start()  # adopts the engine, so that the teardown stops it
