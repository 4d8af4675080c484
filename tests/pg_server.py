"""A private PostgreSQL 15 for the tests: its own data directory, port and socket folder.

PostgreSQL refuses to run as root, so when the tests run as root the cluster is created
and started as the ``postgres`` user (``su postgres -c ...``) on a folder it owns. The
server is stopped by ``pg_ctl stop`` on its own data directory, never by name. Tests get a
fresh database each (``PgServer.new_database``: CREATE DATABASE is fast), so they do not
see each other's rows.

Absent binaries skip the tests with the reason, except in CI (``CI`` set), where they fail:
CI installs the package, so a missing server there is a broken setup, not a choice.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _newest_bin() -> Path:
    """Debian's binaries of the newest PostgreSQL installed (``/usr/lib/postgresql/N/bin``;
    15 on bookworm), or where STUDIOCTL_TEST_PG_BIN says."""
    if given := os.environ.get("STUDIOCTL_TEST_PG_BIN"):
        return Path(given)
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name), default=Path("/usr/lib/postgresql/15/bin"))


BIN = _newest_bin()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binaries() -> None:
    """Skip (or fail in CI) when PostgreSQL is not installed."""
    if (BIN / "pg_ctl").exists() and (BIN / "initdb").exists():
        return
    reason = f"PostgreSQL binaries not found in {BIN} (apt-get install postgresql)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class PgServer:
    """One private cluster. ``start()`` / ``stop()`` / ``new_database()``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sc-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            # The postgres user must reach and own its folders.
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in argv]
        if self.as_postgres:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def init(self) -> None:
        done = self._run(BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._run(
            BIN / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.root / "log", "-w", "start"
        )
        if done.returncode != 0:
            log = (self.root / "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {done.stderr or done.stdout}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@contextlib.contextmanager
def private_server() -> Iterator[PgServer]:
    """A private cluster, started and ready; stopped and removed after (skipped, or failed
    in CI, when PostgreSQL is not installed)."""
    require_binaries()
    server = PgServer()
    try:
        server.init()
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop("immediate")
        server.remove()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A private PostgreSQL for the whole session (skipped when not installed)."""
    with private_server() as server:
        yield server
