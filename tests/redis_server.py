"""A private, real ``redis-server`` for the tests: a free port, no persistence, a temporary
folder, ended by its pid (never by name).

``RedisServer.start()`` waits until it answers PING; ``stop()`` ends it (SIGTERM, then
SIGKILL); ``pause()`` / ``resume()`` SIGSTOP / SIGCONT it (an outage without a restart: the
connections stay open, replies stop coming). Without ``/usr/bin/redis-server`` (or one on
PATH) the tests that need it are skipped with the reason — except in CI (``CI`` set), where
its absence is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_binary", "redis_server_or_skip"]


def redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        """Its unix socket (short: a socket's path is at most 107 bytes)."""
        return self.folder / "r.sock"

    def start(self, timeout: float = 10.0) -> None:
        """Start it (again, on the same port after ``stop``) and wait for PING."""
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.folder),
                    "--enable-debug-command",
                    "local",
                    "--unixsocket",
                    str(self.socket),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer in {timeout} s: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server cannot end
            proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def redis_server_or_skip() -> Iterator[RedisServer]:
    """A running private server; skip (fail in CI) when redis-server is not installed."""
    binary = redis_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not installed, and CI is set: install it (apt redis-server)"
            )
        pytest.skip("redis-server is not installed (apt install redis-server)")
    folder = Path(tempfile.mkdtemp(prefix="sc-redis-"))
    server = RedisServer(binary, folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
