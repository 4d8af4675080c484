"""Run a real ``studioctl daemon run`` in a subprocess for integration tests.

The daemon gets a short STUDIOCTL_HOME under /tmp (Unix socket paths are limited to 108
bytes), free ports, and stand-in recipes. Teardown stops the daemon, then kills whatever
process groups its instances left (by the pids the daemon recorded), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

try:  # pytest puts tests/ on sys.path (tests/ has no __init__.py)
    from standin.helpers import STANDIN_DIR, free_port, free_port_block
except ImportError:  # the repository root on sys.path instead
    from tests.standin.helpers import (  # type: ignore[import-not-found,no-redef]
        STANDIN_DIR,
        free_port,
        free_port_block,
    )

REPO = Path(__file__).resolve().parent.parent

# Variables of the caller's environment that would leak into the daemon (its config, a
# systemd socket, another daemon's settings): dropped before the test's own are set.
_LEAKY_PREFIXES = ("STUDIOCTL_",)
_LEAKY = ("NOTIFY_SOCKET",)


@dataclass
class Daemon:
    home: Path
    env: dict[str, str]
    gateway_port: int
    proc: subprocess.Popen[bytes] | None = None
    cwd: str | None = None  # the daemon's working directory ("/" as under systemd)
    seen_pids: set[tuple[int, float]] = field(default_factory=set)

    @property
    def recipes_dir(self) -> Path:
        return self.home / "config" / "recipes"

    @property
    def socket(self) -> Path:
        return self.home / "run" / "control.sock"

    def recipe(self, rid: str, **fields: Any) -> Path:
        """Write a stand-in recipe (vLLM flavour unless backend says otherwise)."""
        env = {"PYTHONPATH": str(STANDIN_DIR), "STANDIN_STARTUP_S": "0.3"}
        env.update({k: str(v) for k, v in (fields.pop("env", None) or {}).items()})
        body: dict[str, Any] = {
            "backend": "vllm",
            "model": "standin/model",
            "python": sys.executable,
            "served_model_name": rid,
            "readiness_timeout_s": 30,
            "env": env,
        }
        body.update(fields)
        self.recipes_dir.mkdir(parents=True, exist_ok=True)
        path = self.recipes_dir / f"{rid}.yaml"
        path.write_text(yaml.safe_dump(body))
        return path

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.home / "daemon-test.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "studioctl", "daemon", "run"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.cwd,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log_text()}")
            if self.socket.exists() and self.cli("daemon", "status").returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not come up: {self.log_text()}")

    def log_text(self) -> str:
        p = self.home / "daemon-test.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "studioctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_json(self, *args: str, timeout: float = 120.0) -> Any:
        """Run a CLI command that prints one JSON object; assert exit 0, return it parsed."""
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, f"studioctl {' '.join(args)} exited {r.returncode}: {r.stderr}"
        return json.loads(r.stdout)

    def launch(self, rid: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """``studioctl launch RID --json ARGS``: assert exit 0; return the result (ready unless
        ``--no-wait``) and remember its processes for the leak check."""
        r = self.cli("launch", rid, "--json", *args, timeout=timeout)
        assert r.returncode == 0, f"launch {rid} exited {r.returncode}: {r.stderr}"
        lines = json_lines(r.stdout)
        assert lines, f"launch {rid} printed nothing"
        inst = lines[-1]
        if "--no-wait" not in args:
            assert inst.get("type") == "result" and inst["state"] == "ready", inst
        self.track(inst)
        return inst

    def instances(self, *, include_stopped: bool = True) -> list[dict[str, Any]]:
        """The daemon's instances (through the client, no CLI start-up cost)."""
        with self.client() as c:
            out: list[dict[str, Any]] = c.instances(include_stopped=include_stopped)["instances"]
        return out

    def instance(self, iid: str) -> dict[str, Any]:
        for inst in self.instances():
            if inst["id"] == iid:
                self.track(inst)
                return inst
        raise KeyError(f"no instance {iid} in {[i['id'] for i in self.instances()]}")

    def wait_state(self, iid: str, *states: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll until instance ``iid`` is in one of ``states``; return it."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            with contextlib.suppress(KeyError):
                last = self.instance(iid)
                if last["state"] in states:
                    return last
            time.sleep(0.1)
        raise TimeoutError(f"{iid} not in {states} after {timeout}s; last: {last}")

    def events(self, n: int = 500, instance: str | None = None) -> list[dict[str, Any]]:
        """The stored events, oldest first (``GET /events``, SSE decoded)."""
        params: dict[str, Any] = {"n": n}
        if instance:
            params["instance"] = instance
        out: list[dict[str, Any]] = []
        with self.client() as c:
            for line in c.stream_lines("GET", "/events", params=params):
                if line.startswith("data: "):
                    out.append(json.loads(line[6:]))
        return out

    def track(self, inst: dict[str, Any]) -> None:
        """Remember an instance's processes (from its JSON) for the teardown's leak check."""
        for p in inst.get("processes") or ():
            self.seen_pids.add((int(p["pid"]), float(p["create_time"])))

    def evict_all(self) -> None:
        """Stop every instance that still holds processes (a shared daemon between tests)."""
        for inst in self.instances():
            self.track(inst)
            if inst["state"] not in ("stopped", "failed") or any(
                alive(p["pid"], p["create_time"]) for p in inst["processes"]
            ):
                self.cli("evict", inst["id"], "--force", "--grace", "2", "--json", timeout=60)

    def engine_key(self, iid: str) -> str | None:
        """The API key the daemon started instance ``iid``'s engine with (read from its
        store: the control API never shows it). Talking to an engine directly needs it."""
        from studioctl.store import Database, InstanceRepo

        with Database(self.home / "state" / "studioctl.db") as db:
            return InstanceRepo(db).require(iid).api_key

    def client(self) -> Any:
        from studioctl.client import Client

        return Client(self.socket)

    def remember(self) -> None:
        """Record every process of every instance now (for the teardown's leak check)."""
        with self.client() as c:
            for inst in c.instances(include_stopped=True)["instances"]:
                for p in inst["processes"]:
                    self.seen_pids.add((p["pid"], p["create_time"]))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, *, stop_engines: bool = True) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remember()
            args = ["daemon", "stop", "--timeout", "40"]
            if stop_engines:
                args.append("--stop-engines")
            r = self.cli(*args, timeout=60)
            if r.returncode != 0 and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each non-empty line of ``text`` parsed as JSON (the CLI's streamed --json output)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def alive(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_leftovers(pids: set[tuple[int, float]]) -> list[int]:
    """SIGKILL the recorded processes still alive (ours by pid + create time)."""
    left = [pid for pid, ct in pids if alive(pid, ct)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@contextlib.contextmanager
def running_daemon(
    extra_env: dict[str, str] | None = None,
    *,
    start: bool = True,
    gateway: bool = False,
    cwd: str | None = None,
) -> Iterator[Daemon]:
    """A daemon on a fresh home (``start=False``: only the home and env, for tests that
    start it themselves or need none). The gateway is off unless ``gateway=True``: the
    lifecycle does not need it, and it keeps the daemon's start-up short."""
    home = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
    gw = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES) and k not in _LEAKY
    }
    env.update(
        {
            "STUDIOCTL_HOME": str(home),
            "STUDIOCTL_GATEWAY_PORT": str(gw),
            "STUDIOCTL_DAEMON_AUTOSTART": "false",
            "STUDIOCTL_DAEMON_HEALTH_INTERVAL_S": "0.3",
            "STUDIOCTL_DAEMON_RESTART_BACKOFF_S": "0.5",
            "STUDIOCTL_DAEMON_RESTART_BACKOFF_MAX_S": "2",
            "STUDIOCTL_ENGINES_PORT_MIN": str(free_port_block(201)),
            "STUDIOCTL_GATEWAY_ENABLED": "true" if gateway else "false",
            # This checkout's code, not whatever copy is installed (worktrees, editable installs).
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        }
    )
    env["STUDIOCTL_ENGINES_PORT_MAX"] = str(int(env["STUDIOCTL_ENGINES_PORT_MIN"]) + 200)
    env.update(extra_env or {})
    d = Daemon(home=home, env=env, gateway_port=gw, cwd=cwd)
    try:
        if start:
            d.start()
        yield d
    finally:
        d.stop()
        leaked = kill_leftovers(d.seen_pids)
        shutil.rmtree(home, ignore_errors=True)
        assert not leaked, f"processes left behind: {leaked}"
