"""Run a real ``studioctl daemon run`` in a subprocess: the harness of the integration tier
(``running_daemon``, stand-in recipes) and, through ``tests/e2e/helpers.py``, of the
end-to-end tier (real engines).

The daemon gets a short STUDIOCTL_HOME under /tmp (Unix socket paths are limited to 108
bytes), free ports, and its own session. The harness remembers every process any instance
was seen with (pid + create time); teardown stops the daemon with its engines, then SIGKILLs
whatever of those recorded processes is still alive, by pid, never by name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil
import yaml

from helpers import free_port, free_port_block, wait_for
from standin.helpers import STANDIN_DIR

REPO = Path(__file__).resolve().parent.parent

# Variables of the caller's environment that would leak into the daemon (its config, a
# systemd socket, another daemon's settings): dropped before the test's own are set.
_LEAKY_PREFIXES = ("STUDIOCTL_",)
_LEAKY = ("NOTIFY_SOCKET",)


@dataclass
class Daemon:
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    cwd: str | None = None  # the daemon's working directory ("/" as under systemd)
    #: Every (pid, create time) an instance was ever seen with: the teardown's leak check.
    seen_pids: set[tuple[int, float]] = field(default_factory=set)

    #: Seconds between two looks at an instance's state (``wait_state``, ``wait_instance``).
    poll_s: ClassVar[float] = 0.1

    @property
    def gateway_port(self) -> int:
        return int(self.env["STUDIOCTL_GATEWAY_PORT"])

    @property
    def recipes_dir(self) -> Path:
        return self.home / "config" / "recipes"

    @property
    def socket(self) -> Path:
        return self.home / "run" / "control.sock"

    @property
    def log_path(self) -> Path:
        """The daemon's stdout and stderr."""
        return self.home / "daemon-test.log"

    def log_text(self, n: int = 6000) -> str:
        """The last ``n`` characters of the daemon's output."""
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

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

    # -- the process ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0, *, nofile: int | None = None) -> None:
        """Start ``studioctl daemon run`` in its own session; return once it answers on its
        control socket. ``nofile``: its open-file limit (soft and hard)."""
        limit = None if nofile is None else functools.partial(_set_nofile, nofile)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "studioctl", "daemon", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.cwd,
                preexec_fn=limit,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            # Connect once by hand first: on a refused Unix socket httpcore leaks the socket
            # (a ResourceWarning, an error under filterwarnings=error); a stale socket file
            # of a SIGKILLed daemon refuses until the new daemon binds it again.
            if _accepts(self.socket):
                with self.client() as c:
                    if c.ping() is not None:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not come up in {timeout:g}s:\n{self.log_text()}")

    def kill9(self) -> None:
        """SIGKILL the daemon (only it: engines run in their own sessions)."""
        assert self.proc is not None
        with contextlib.suppress(Exception):
            self.remember()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)
        self.proc = None

    def stop(self, *, stop_engines: bool = True) -> None:
        """``daemon stop`` (with its engines), SIGTERM then SIGKILL if that does not end it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remember()
            args = ["daemon", "stop", "--timeout", "90"]
            if stop_engines:
                args.append("--stop-engines")
            r = self.cli(*args, timeout=120)
            if r.returncode != 0 and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    # -- the CLI ----------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "studioctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def cli_ok(self, *args: str, timeout: float = 120.0) -> str:
        """Run a CLI command that must exit 0; its stdout."""
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, (
            f"studioctl {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout[-3000:]}\n"
            f"stderr: {r.stderr[-3000:]}\ndaemon log:\n{self.log_text(3000)}"
        )
        return r.stdout

    def cli_json(self, *args: str, timeout: float = 120.0) -> Any:
        """Run a CLI command that prints one JSON object; assert exit 0, return it parsed."""
        return json.loads(self.cli_ok(*args, timeout=timeout))

    def launch(self, rid: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """``studioctl launch RID --json ARGS``: assert exit 0; return the result (ready unless
        ``--no-wait``) and remember its processes for the leak check."""
        lines = json_lines(self.cli_ok("launch", rid, "--json", *args, timeout=timeout))
        assert lines, f"launch {rid} printed nothing"
        inst = lines[-1]
        if "--no-wait" not in args:
            assert inst.get("type") == "result" and inst["state"] == "ready", inst
        self.track(inst)
        return inst

    def ps(self) -> list[dict[str, Any]]:
        """``studioctl ps --all --json`` (the CLI, as a user would run it)."""
        out: list[dict[str, Any]] = self.cli_json("ps", "--all", "--json")["instances"]
        for inst in out:
            self.track(inst)
        return out

    # -- the control API --------------------------------------------------------------------

    def client(self) -> Any:
        from studioctl.client import Client

        return Client(self.socket, timeout=30.0)

    def instances(self, *, include_stopped: bool = True) -> list[dict[str, Any]]:
        """The daemon's instances (through the client, no CLI start-up cost: cheap to poll),
        their processes remembered for the leak check."""
        with self.client() as c:
            out: list[dict[str, Any]] = c.instances(include_stopped=include_stopped)["instances"]
        for inst in out:
            self.track(inst)
        return out

    def remember(self) -> None:
        """Record every process of every instance now (for the teardown's leak check)."""
        self.instances()

    def instance(self, iid: str) -> dict[str, Any]:
        listed = self.instances()
        for inst in listed:
            if inst["id"] == iid:
                return inst
        raise KeyError(f"no instance {iid} in {[i['id'] for i in listed]}")

    def live(self, recipe: str) -> dict[str, Any] | None:
        """The newest instance of ``recipe`` that is not stopped or failed."""
        found = [
            i
            for i in self.instances()
            if i["recipe"] == recipe and i["state"] not in ("stopped", "failed")
        ]
        return max(found, key=lambda i: i["started_at"] or 0.0) if found else None

    def wait_instance(
        self,
        iid: str,
        pred: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 30.0,
        what: str = "the condition",
    ) -> dict[str, Any]:
        """Poll instance ``iid`` (not listed yet: wait) until ``pred`` holds; return it."""
        last: list[dict[str, Any]] = []

        def look() -> dict[str, Any] | None:
            try:
                inst = self.instance(iid)
            except KeyError:
                return None
            last[:] = [inst]
            return inst if pred(inst) else None

        def said() -> str:
            seen = last[0] if last else "not listed"
            return f"{iid}: {what}; last: {seen}\n{self.engine_log(iid)}"

        return wait_for(look, timeout=timeout, interval=self.poll_s, what=said)

    def wait_state(
        self, iid: str, *states: str, timeout: float = 20.0, bad: Collection[str] = ()
    ) -> dict[str, Any]:
        """Poll until instance ``iid`` is in one of ``states``; fail at once in a ``bad`` one."""

        def arrived(inst: dict[str, Any]) -> bool:
            if inst["state"] in bad:
                raise AssertionError(
                    f"{iid} went {inst['state']} ({inst['reason']}):\n{self.engine_log(iid)}"
                )
            return inst["state"] in states

        return self.wait_instance(iid, arrived, timeout=timeout, what=f"a state in {states}")

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

    def evict_all(self) -> None:
        """Stop every instance that still holds processes (a shared daemon between tests)."""
        for inst in self.instances():
            if inst["state"] not in ("stopped", "failed") or any(
                alive(p["pid"], p["create_time"]) for p in inst["processes"]
            ):
                self.cli("evict", inst["id"], "--force", "--grace", "2", "--json", timeout=60)

    # -- instances' processes, keys and logs --------------------------------------------------

    def track(self, inst: Mapping[str, Any]) -> None:
        """Remember an instance's processes (from its JSON) for the teardown's leak check."""
        for p in inst.get("processes") or ():
            self.seen_pids.add((int(p["pid"]), float(p["create_time"])))

    def engine_key(self, iid: str) -> str | None:
        """The API key the daemon started instance ``iid``'s engine with (read from its
        store: the control API never shows it). Talking to an engine directly needs it."""
        from studioctl.store import InstanceRepo
        from studioctl.store.sqlite import SqliteDatabase as Database

        with Database(self.home / "state" / "studioctl.db") as db:
            return InstanceRepo(db).require(iid).api_key

    def engine_log(self, iid: str, n: int = 3000) -> str:
        """The end of instance ``iid``'s engine log (for failure messages)."""
        for c in self.home.rglob(f"{iid}.log"):
            if c.is_file():
                return c.read_text(errors="replace")[-n:]
        return f"(no log file for {iid} under {self.home})"


def _set_nofile(limit: int) -> None:
    """In the child before it runs the daemon: its open-file limit, soft and hard."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _accepts(path: Path) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each non-empty line of ``text`` parsed as JSON (the CLI's streamed --json output)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- processes ------------------------------------------------------------------------------


def alive(pid: int, create_time: float) -> bool:
    """True when ``pid`` is still the process that had ``create_time`` (and not a zombie)."""
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"{pid} {p.name()!r} {' '.join(p.cmdline())[:120]!r}"
    except psutil.Error:
        return f"{pid} (gone)"


def kill_leftovers(seen: set[tuple[int, float]]) -> list[str]:
    """SIGKILL every recorded process still alive (ours: pid + create time); describe them."""
    left = [(pid, ct) for pid, ct in seen if alive(pid, ct)]
    out = [describe(pid) for pid, _ in left]
    for pid, ct in left:
        if alive(pid, ct):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return out


# -- a daemon's home, environment and teardown -----------------------------------------------


def new_home(prefix: str = "sc-") -> Path:
    """A fresh home under /tmp: a Unix socket path must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def daemon_env(home: Path, settings: Mapping[str, str], *, engine_ports: int) -> dict[str, str]:
    """The daemon's environment: the caller's without its ``STUDIOCTL_*`` settings (and no
    systemd socket), the home, free gateway and engine ports (``engine_ports`` of them, below
    the ephemeral range), autostart off, then ``settings``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES) and k not in _LEAKY
    }
    port_min = free_port_block(engine_ports)
    env.update(
        {
            "STUDIOCTL_HOME": str(home),
            "STUDIOCTL_GATEWAY_PORT": str(free_port()),
            "STUDIOCTL_DAEMON_AUTOSTART": "false",
            "STUDIOCTL_ENGINES_PORT_MIN": str(port_min),
            "STUDIOCTL_ENGINES_PORT_MAX": str(port_min + engine_ports - 1),
        }
    )
    env.update(settings)
    return env


def end(d: Daemon, *, keep_home: bool = False) -> list[str]:
    """Stop ``d`` and its engines, SIGKILL what it recorded and is still alive, remove its
    home (unless ``keep_home``): the processes that were left, described."""
    try:
        d.stop()
    finally:
        leaked = kill_leftovers(d.seen_pids)
        if not keep_home:
            shutil.rmtree(d.home, ignore_errors=True)
    return leaked


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
    home = new_home()
    settings = {
        "STUDIOCTL_DAEMON_HEALTH_INTERVAL_S": "0.3",
        "STUDIOCTL_DAEMON_RESTART_BACKOFF_S": "0.5",
        "STUDIOCTL_DAEMON_RESTART_BACKOFF_MAX_S": "2",
        "STUDIOCTL_GATEWAY_ENABLED": "true" if gateway else "false",
        # Requests do not load recipes unless a test asks for it (on-demand tests set it
        # true): the routing tests expect a known recipe that is not running to answer 503
        # model_not_running, as with the setting off.
        "STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "false",
        # This checkout's code, not whatever copy is installed (worktrees, editable installs).
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        **(extra_env or {}),
    }
    d = Daemon(home=home, env=daemon_env(home, settings, engine_ports=201), cwd=cwd)
    try:
        if start:
            d.start()
        yield d
    finally:
        leaked = end(d)
        assert not leaked, f"processes left behind: {leaked}"
