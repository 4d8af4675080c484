"""How a detached daemon tells ``daemon start`` why it could not start.

A detached daemon's stderr goes to daemon.log and its exit status to nobody (it is not our
child). So ``daemon run`` in detached mode writes the StudioError it stops on — message,
hint, exit code — to ``<state dir>/daemon-start-failure.json``, and the starter raises it
again with the same exit code. The one error the daemon cannot report this way is a log it
cannot write, which the starter checks before it spawns anything.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from studioctl import paths
from studioctl.errors import StudioError


def failure_file() -> Path:
    return paths.state_dir() / "daemon-start-failure.json"


def report_failure(exc: StudioError) -> None:
    record = {
        "pid": os.getpid(),
        "ts": time.time(),
        "exit_code": exc.exit_code,
        "message": exc.message,
        "hint": exc.hint,
    }
    try:
        paths.ensure_dir(failure_file().parent)
        failure_file().write_text(json.dumps(record))
    except OSError:
        pass  # the log still has it


def reported_failure(*, since: float) -> StudioError | None:
    """The error a daemon reported after ``since``, with the exit code it had; or None."""
    try:
        record = json.loads(failure_file().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or float(record.get("ts") or 0) < since:
        return None
    err = StudioError(
        f"the daemon (pid {record.get('pid')}) could not start: {record.get('message')}",
        hint=record.get("hint"),
    )
    err.exit_code = int(record.get("exit_code") or 1)
    return err


def check_log_writable() -> None:
    """The detached daemon's stderr goes to daemon.log: if it cannot be written, say so now
    (the daemon could tell no one)."""
    logfile = paths.daemon_log_file()
    try:
        paths.ensure_dir(logfile.parent)
        with open(logfile, "a"):
            pass
    except OSError as exc:
        raise StudioError(
            f"cannot write the daemon log {logfile}: {exc.strerror}",
            code="log_not_writable",
            hint="the daemon logs there: make the folder writable, or move the log dir "
            "(STUDIOCTL_HOME, or XDG_STATE_HOME for the platform's directories)",
            details={"path": str(logfile)},
        ) from exc
