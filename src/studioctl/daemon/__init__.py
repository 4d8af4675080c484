"""The daemon: one process per STUDIOCTL_HOME that owns the engines.

``studioctl daemon run`` calls :func:`run`: the lock (``studioctl.daemon_lock``), logging,
then the composition root (:mod:`studioctl.daemon.compose`) on an event loop: the control
API on a 0600 Unix socket, the gateway on TCP, systemd ``Type=notify`` support, and a
graceful stop on SIGTERM/SIGINT that leaves engines running (they are adopted on the next
start) unless asked to stop them. The operating-system parts (sockets, notify, open-file
limit, log files) are in :mod:`studioctl.daemon.system`.
"""

from __future__ import annotations

import asyncio

from studioctl import paths
from studioctl.daemon.system import (
    FD_RESERVE,
    bind_tcp,
    bind_unix,
    connection_budget,
    loop_factory,
    raise_nofile_limit,
    sd_notify,
    setup_logging,
)
from studioctl.daemon_lock import DaemonLock

__all__ = [
    "FD_RESERVE",
    "bind_tcp",
    "bind_unix",
    "connection_budget",
    "raise_nofile_limit",
    "run",
    "sd_notify",
]


def run(*, verbose: bool = False) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT or a shutdown request."""
    from studioctl.daemon.compose import main
    from studioctl.settings import load_settings

    settings = load_settings()
    lock = DaemonLock(paths.daemon_lock_file())
    lock.acquire()
    setup_logging(verbose)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(main(settings))
    finally:
        lock.release()
