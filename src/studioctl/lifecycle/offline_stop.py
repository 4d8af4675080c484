"""Stopping the engines a daemon left behind, with no daemon running.

``studioctl daemon stop --stop-engines`` when the daemon is gone (it was killed, or already
stopped leaving its engines to be adopted): the store's instance rows say which process trees
are ours — pid and create time, so a reused pid is never signalled — and ``terminate`` stops
each tree as the supervisor does (SIGTERM to the group, SIGKILL after the grace, verified).
Each row is then moved to ``stopped`` (``failed`` when part of the tree survived) with
``desired=stopped``, so the next daemon does not take the stop for a crash and restart it.
The caller holds the daemon lock: no daemon can start and adopt these meanwhile.
"""

from __future__ import annotations

import os
from typing import Any

from studioctl.lifecycle.osproc import OsProc
from studioctl.lifecycle.terminate import Termination, terminate
from studioctl.states import ACTIVE, State
from studioctl.store.db import Database
from studioctl.store.events import EventRepo
from studioctl.store.instances import InstanceRepo, InstanceRow

REASON = "stopped by `daemon stop --stop-engines` (no daemon running)"


async def stop_recorded_engines(
    db: Database, *, osp: OsProc | None = None, grace: float = 10.0
) -> list[dict[str, Any]]:
    """Stop every recorded engine tree still alive; one report per instance it touched:
    ``{id, recipe_id, pid, state, signals, processes, leftover}``."""
    osp = osp or OsProc()
    repo = InstanceRepo(db)
    events = EventRepo(db)
    reports = []
    for rec in repo.list(include_stopped=False):
        if rec.state not in ACTIVE and rec.state != State.CRASHED:
            continue
        live = _live_members(osp, rec)
        if not live and rec.state == State.CRASHED:
            continue  # nothing runs and nothing will be restarted by us: leave its policy be
        result = Termination()
        if live:
            root_alive = rec.pid in live
            result = await terminate(
                osp,
                pid=rec.pid if root_alive else None,
                pgid=_group(rec, live, root_alive),
                recorded=live,
                spawned=None,
                grace=grace,
            )
        final, reason = State.STOPPED, REASON
        if result.leftover:
            survivors = ", ".join(str(p.pid) for p in result.leftover)
            final, reason = State.FAILED, f"{REASON}: processes survived SIGKILL: {survivors}"
        state = rec.state
        if state in ACTIVE and state != State.STOPPING:
            repo.record_transition(rec.id, state, State.STOPPING, REASON, desired="stopped")
            state = State.STOPPING
        repo.record_transition(
            rec.id, state, final, reason, desired="stopped", stopped_at=osp.now()
        )
        how = ", ".join(result.signals) or "already gone"
        done = result.to_dict()
        events.append(
            "evict",
            f"{rec.id}: {REASON} ({how})",
            instance_id=rec.id,
            recipe_id=rec.recipe_id,
            data={"leftover": done["leftover"], "signals": done["signals"]},
        )
        reports.append(
            {"id": rec.id, "recipe_id": rec.recipe_id, "pid": rec.pid, "state": str(final)} | done
        )
    return reports


def _live_members(osp: OsProc, rec: InstanceRow) -> dict[int, float]:
    """The recorded processes still alive as the same process (pid and create time)."""
    recorded = {int(p["pid"]): float(p["create_time"]) for p in rec.process_tree}
    if rec.pid is not None and rec.create_time:
        recorded.setdefault(rec.pid, rec.create_time)
    # Without a create time a pid proves nothing (it may be reused): never signal it.
    return {p: c for p, c in recorded.items() if c and osp.is_alive(p, c)}


def _group(rec: InstanceRow, live: dict[int, float], root_alive: bool) -> int | None:
    """The recorded process group, only while a verified member still belongs to it."""
    if rec.pgid is None:
        return None
    if root_alive:
        return rec.pgid
    for pid in live:
        try:
            if os.getpgid(pid) == rec.pgid:
                return rec.pgid
        except ProcessLookupError:
            continue
    return None
