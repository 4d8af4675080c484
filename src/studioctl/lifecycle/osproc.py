"""The operating system behind one seam: spawn, signal, inspect processes, clock.

Everything the supervisor does to processes goes through an ``OsProc`` so tests can swap in
a fake where real processes are not the point (Supervisor's ``options`` object, honcho's
``_process_ctor``). The real implementation uses subprocess and psutil.

A process is identified by ``(pid, create_time)``: pids are reused, the pair is not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

# Two create times within this many seconds are the same process (psutil rounds to 10 ms).
_CREATE_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    create_time: float
    name: str
    cmdline: tuple[str, ...] = ()
    status: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "create_time": self.create_time, "name": self.name}


@dataclass
class Spawned:
    pid: int
    pgid: int
    create_time: float
    popen: subprocess.Popen[bytes] | None = None


class OsProc:
    """Real processes. Subclass or replace in tests."""

    def now(self) -> float:
        return time.time()

    def spawn(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> Spawned:
        """Start ``argv`` in a new session (so a new process group), output to ``log_path``.

        The log is opened O_APPEND: the daemon can rotate it by copy-and-truncate while the
        engine keeps writing, and the engine never writes to a pipe that dies with the
        daemon (engines outlive daemon restarts).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env)
        logf: IO[bytes] = open(log_path, "ab", buffering=0)  # noqa: SIM115 - handed to the child
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(cwd) if cwd else None,
                start_new_session=True,  # own session and process group: signal the group
                close_fds=True,
            )
        finally:
            logf.close()
        try:
            ctime = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            ctime = 0.0
        return Spawned(pid=popen.pid, pgid=popen.pid, create_time=ctime, popen=popen)

    def info(self, pid: int) -> ProcInfo | None:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                return ProcInfo(
                    pid=pid,
                    create_time=p.create_time(),
                    name=p.name(),
                    cmdline=tuple(p.cmdline()),
                    status=p.status(),
                )
        except psutil.Error:
            return None

    def is_alive(self, pid: int, create_time: float | None) -> bool:
        """True when ``pid`` is running and is the same process (create time), not a zombie."""
        try:
            p = psutil.Process(pid)
            if create_time and abs(p.create_time() - create_time) > _CREATE_TIME_TOLERANCE:
                return False
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def tree(self, pid: int) -> list[ProcInfo]:
        """The process and all its descendants (children of children…)."""
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        out = []
        for p in procs:
            try:
                out.append(ProcInfo(pid=p.pid, create_time=p.create_time(), name=p.name()))
            except psutil.Error:
                continue
        return out

    def group_members(self, pgid: int) -> list[ProcInfo]:
        """Every live process in process group ``pgid`` (workers can be re-parented to init)."""
        out = []
        for p in psutil.process_iter(["pid", "create_time", "name"]):
            try:
                if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(
                        ProcInfo(pid=p.pid, create_time=p.info["create_time"], name=p.info["name"])
                    )
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return out

    def signal_group(self, pgid: int, sig: int) -> bool:
        """Send ``sig`` to a process group. False when the group no longer exists."""
        try:
            os.killpg(pgid, sig)
            return True
        except ProcessLookupError:
            return False

    def signal_pid(self, pid: int, create_time: float | None, sig: int) -> bool:
        """Signal one process, only if it is still the process we recorded."""
        if not self.is_alive(pid, create_time):
            return False
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def reap(self, spawned: Spawned | None) -> int | None:
        """Collect a child's exit status (our own children only); None while running."""
        if spawned is None or spawned.popen is None:
            return None
        return spawned.popen.poll()

    def port_holder(self, host: str, port: int) -> str | None:
        """Who listens on ``port``: 'pid 123 (python -m vllm…)', 'an unknown process', or None."""
        import socket

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return None
            except OSError:
                pass
        try:
            for c in psutil.net_connections(kind="inet"):
                laddr = c.laddr
                listening = c.status == psutil.CONN_LISTEN and isinstance(laddr, tuple) and laddr
                if listening and getattr(laddr, "port", None) == port and c.pid:
                    info = self.info(c.pid)
                    cmd = " ".join(info.cmdline).replace("\n", " ")[:120] if info else "?"
                    return f"pid {c.pid} ({cmd})"
        except psutil.Error:
            pass
        return "an unknown process"

    def scan(self, markers: Iterable[str]) -> list[ProcInfo]:
        """Processes whose command line contains any of ``markers`` (engine servers)."""
        marks = tuple(markers)
        out = []
        for p in psutil.process_iter(["pid", "create_time", "name", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or ())
            except psutil.Error:
                continue
            if any(m in cmd for m in marks):
                out.append(
                    ProcInfo(
                        pid=p.info["pid"],
                        create_time=p.info["create_time"],
                        name=p.info["name"],
                        cmdline=tuple(p.info["cmdline"] or ()),
                    )
                )
        return out


SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGKILL: "SIGKILL", signal.SIGINT: "SIGINT"}
