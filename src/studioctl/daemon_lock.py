"""The daemon's lock: one daemon per STUDIOCTL_HOME, and who holds it.

Its own module so the client and the CLI can ask whether a daemon runs (``lock_holder``)
without importing the daemon, the composition root, which imports everything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from studioctl import paths
from studioctl.errors import ConflictError


class DaemonLock:
    """An flock on ``daemon.lock`` holding our pid. Released by the kernel if we die."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        paths.ensure_dir(self.path.parent)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConflictError(
                f"a daemon is already running for this STUDIOCTL_HOME (pid {holder})",
                code="daemon_running",
                hint="studioctl daemon status   /   studioctl daemon stop",
                details={"pid": int(holder) if holder.isdigit() else None},
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.seek(0)
                self._fh.truncate()
            self._fh.close()
            self._fh = None


def lock_holder(path: Path | None = None) -> int | None:
    """The pid of the running daemon, from its lock, or None when no daemon holds it."""
    path = path or paths.daemon_lock_file()
    try:
        fh = open(path)  # noqa: SIM115
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None
