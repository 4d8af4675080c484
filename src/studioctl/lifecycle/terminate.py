"""Stopping a whole engine process tree, and proving it is gone.

An engine spawns workers of its own (vLLM's EngineCore and Worker, SGLang's scheduler and
detokenizer); a worker left behind holds GPU memory: the classic leak. So a stop collects
every member it can find — the recorded tree, the live tree under the root, the process
group — sends SIGTERM to the group (and to members outside it), SIGKILL after the grace,
and reports, per process, what ended it; whatever survived is reported as leftover.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from studioctl.lifecycle.osproc import OsProc, ProcInfo, Spawned

KILL_WAIT_S = 5.0  # how long SIGKILLed processes get to disappear before they are leftovers


@dataclass(frozen=True)
class Ended:
    """A process of the tree, and what ended it ("SIGTERM", "SIGKILL", "already gone")."""

    pid: int
    name: str
    how: str


@dataclass(frozen=True)
class Survivor:
    """A process still alive after SIGKILL and its wait."""

    pid: int
    name: str


@dataclass(frozen=True)
class Termination:
    """What a stop did: the signals sent, every process and what ended it, the survivors."""

    signals: tuple[str, ...] = ()
    processes: tuple[Ended, ...] = ()
    leftover: tuple[Survivor, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "signals": list(self.signals),
            "processes": [{"pid": p.pid, "name": p.name, "how": p.how} for p in self.processes],
            "leftover": [{"pid": p.pid, "name": p.name} for p in self.leftover],
        }


def collect(
    osp: OsProc, *, pid: int | None, pgid: int | None, recorded: MutableMapping[int, float]
) -> dict[int, ProcInfo]:
    """Every process of the tree: under the root now, in the group, or recorded earlier
    and still alive. New members are added to ``recorded``."""
    members: dict[int, ProcInfo] = {}
    if pid is not None:
        for p in osp.tree(pid):
            members[p.pid] = p
    if pgid is not None:
        for p in osp.group_members(pgid):
            members.setdefault(p.pid, p)
    for rpid, ctime in recorded.items():
        if rpid not in members and osp.is_alive(rpid, ctime):
            members[rpid] = osp.info(rpid) or ProcInfo(rpid, ctime, "?")
    for p in members.values():
        recorded.setdefault(p.pid, p.create_time)
    return members


async def terminate(
    osp: OsProc,
    *,
    pid: int | None,
    pgid: int | None,
    recorded: MutableMapping[int, float],
    spawned: Spawned | None,
    grace: float,
) -> Termination:
    """SIGTERM the group, SIGKILL after ``grace``, then verify the whole tree is gone."""
    members = collect(osp, pid=pid, pgid=pgid, recorded=recorded)
    alive = {p: info for p, info in members.items() if osp.is_alive(p, info.create_time)}
    signals: list[str] = []
    how: dict[int, str] = {}

    async def wait_gone(sig_name: str, seconds: float, step: float) -> None:
        deadline = time.monotonic() + seconds
        while alive:
            osp.reap(spawned)  # our own child would otherwise linger as a zombie
            for p in [p for p, info in alive.items() if not osp.is_alive(p, info.create_time)]:
                how[p] = sig_name
                del alive[p]
            if not alive or time.monotonic() >= deadline:
                return
            await asyncio.sleep(step)

    for sig, name, seconds, step in (
        (signal.SIGTERM, "SIGTERM", grace, 0.1),
        (signal.SIGKILL, "SIGKILL", KILL_WAIT_S, 0.05),
    ):
        if not alive:
            break
        if (pgid is not None and osp.signal_group(pgid, sig)) or name not in signals:
            signals.append(name)
        for p, info in alive.items():  # members outside the group (re-grouped workers)
            if pgid is None or _pgid(p) != pgid:
                osp.signal_pid(p, info.create_time, sig)
        await wait_gone(name, seconds, step)
    osp.reap(spawned)
    return Termination(
        signals=tuple(signals),
        processes=tuple(
            Ended(p, members[p].name, how.get(p, "already gone")) for p in sorted(members)
        ),
        leftover=tuple(Survivor(p, info.name) for p, info in sorted(alive.items())),
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
