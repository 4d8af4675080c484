"""Test helpers around the engine stand-in: HTTP waits, start / kill a stand-in.

Import them from a test as ``from standin.helpers import wait_http, start_standin`` (pytest puts
``tests/`` on sys.path: it has no ``__init__.py``) or as ``from tests.standin.helpers import ...``
when the repository root is on sys.path (``python -m pytest``, or pytest's
``pythonpath = [".", "tests"]``, which makes both forms work everywhere).

A recipe that runs the stand-in instead of a real engine sets
``env: {PYTHONPATH: str(STANDIN_DIR)}`` (and any ``STANDIN_*`` switch, see
``standin_engine``); its ``python`` may be ``sys.executable``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from helpers import free_port

STANDIN_DIR = Path(__file__).resolve().parent
"""The directory to put on PYTHONPATH: it holds the ``vllm`` and ``sglang`` stand-ins."""

ENGINE_MODULES = {
    "vllm": "vllm.entrypoints.openai.api_server",
    "sglang": "sglang.launch_server",
}


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of GET ``url``, or None when nothing answers (refused, reset, timed out)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        return None


def wait_http(
    url: str,
    *,
    status: int | None = 200,
    timeout: float = 10.0,
    interval: float = 0.05,
    proc: subprocess.Popen[bytes] | None = None,
) -> int:
    """Poll GET ``url`` until it answers ``status`` (None: any status); return the status.

    Raises TimeoutError after ``timeout`` seconds (naming the last answer), or RuntimeError
    as soon as ``proc`` (the server being waited for) has exited.
    """
    deadline = time.monotonic() + timeout
    last: int | None = None
    while True:
        last = http_status(url, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        if last is not None and (status is None or last == status):
            return last
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} exited with code {proc.returncode} while waiting for "
                f"{url} to answer {status if status is not None else 'anything'}"
            )
        if time.monotonic() >= deadline:
            got = "no answer" if last is None else f"last status {last}"
            raise TimeoutError(f"{url} did not answer {status} within {timeout} s ({got})")
        time.sleep(interval)


def standin_env(
    base: Mapping[str, str] | None = None, /, **switches: str | float | int
) -> dict[str, str]:
    """An environment running the stand-in: ``base`` (default os.environ) with PYTHONPATH
    pointing at :data:`STANDIN_DIR` and ``STANDIN_*`` switches, e.g.
    ``standin_env(STANDIN_MODE="hang", STANDIN_STARTUP_S=0.5)``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(STANDIN_DIR)
    for key, value in switches.items():
        if not key.startswith("STANDIN_"):
            raise ValueError(f"standin_env: {key!r} is not a STANDIN_* switch")
        env[key] = str(value)
    return env


def engine_argv(
    flavour: str,
    *,
    port: int,
    host: str = "127.0.0.1",
    model: str = "/models/standin-tiny",
    served_name: str = "standin",
    python: str = sys.executable,
    extra: Sequence[str] = (),
) -> list[str]:
    """The real engine's launch command ("vllm" or "sglang"), as studioctl builds it."""
    if flavour == "vllm":
        model_flag = "--model"
    elif flavour == "sglang":
        model_flag = "--model-path"
    else:
        raise ValueError(f"engine_argv: unknown flavour {flavour!r} (vllm or sglang)")
    return [
        python,
        "-m",
        ENGINE_MODULES[flavour],
        model_flag,
        model,
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        *extra,
    ]


@dataclass
class StandinProcess:
    """A started stand-in: its Popen (the group leader), port, base URL and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the stand-in wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def group_pids(self) -> list[int]:
        """Live (non-zombie) processes in the stand-in's process group."""
        return group_pids(self.proc.pid)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait for GET /health → 200; on failure the error carries the log."""
        try:
            wait_http(f"{self.url}/health", timeout=timeout, proc=self.proc)
        except (TimeoutError, RuntimeError) as exc:
            raise type(exc)(f"{exc}\n--- stand-in log ---\n{self.log()}") from None


def start_standin(
    flavour: str,
    log_path: Path,
    *,
    port: int | None = None,
    served_name: str = "standin",
    extra: Sequence[str] = (),
    **switches: str | float | int,
) -> StandinProcess:
    """Start a stand-in the way the supervisor does: real argv, new session, output to a file.

    The caller must end it: use :func:`running_standin`, or :func:`kill_group` in a finally.
    """
    port = free_port() if port is None else port
    argv = engine_argv(flavour, port=port, served_name=served_name, extra=extra)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            env=standin_env(**switches),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return StandinProcess(proc=proc, port=port, url=f"http://127.0.0.1:{port}", log_path=log_path)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    pids: list[int] = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                pids.append(process.pid)
    return pids


def kill_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL the process group that ``proc`` leads (started with start_new_session=True),
    reap ``proc`` and wait until no member of the group is left."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while group_pids(pgid):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"process group {pgid} still has {group_pids(pgid)}")
        time.sleep(0.02)


@contextlib.contextmanager
def running_standin(
    flavour: str,
    log_path: Path,
    *,
    wait: bool = True,
    port: int | None = None,
    served_name: str = "standin",
    extra: Sequence[str] = (),
    **switches: str | float | int,
) -> Iterator[StandinProcess]:
    """Start a stand-in (waiting for /health 200 unless ``wait=False``); kill its whole
    process group on exit, whatever happened."""
    standin = start_standin(
        flavour, log_path, port=port, served_name=served_name, extra=extra, **switches
    )
    try:
        if wait:
            standin.wait_ready()
        yield standin
    finally:
        kill_group(standin.proc)


def write_standin_recipe(rid: str) -> None:
    """A vLLM recipe ``rid`` in the user's recipe folder whose engine is the stand-in (ready
    in 0.2 s, on a free port): for in-process supervisor tests."""
    import yaml

    from helpers import free_port
    from studioctl import paths

    folder = paths.user_recipes_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rid}.yaml").write_text(
        yaml.safe_dump(
            {
                "backend": "vllm",
                "model": "standin/model",
                "python": sys.executable,
                "served_model_name": rid,
                "port": free_port(),
                "readiness_timeout_s": 30,
                "env": {"PYTHONPATH": str(STANDIN_DIR), "STANDIN_STARTUP_S": "0.2"},
            }
        )
    )
