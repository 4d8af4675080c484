"""The supervisor's instances and the one way their state changes.

``InstanceRegistry`` holds the live ``Instance`` objects, mirrors each change into the store
(so the next daemon can adopt them) and tells the rest of the daemon (``hooks``). Launch,
monitoring, operations and adoption all change an instance through its public methods:
``set_state`` checks the transition (``studioctl.states``), stores it with its history,
publishes an event and announces the new instance list.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from studioctl.engines.base import redact
from studioctl.errors import NotFoundError, StudioError
from studioctl.lifecycle import logfiles, placement
from studioctl.lifecycle.runtime import Instance, key_file_path
from studioctl.states import ACTIVE, State, check
from studioctl.store.instances import InstanceRepo, LaunchRepo

if TYPE_CHECKING:
    from studioctl.engines.base import Stage
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.hooks import SupervisorHooks
    from studioctl.lifecycle.osproc import OsProc
    from studioctl.store.db import Database

log = logging.getLogger("studioctl.supervisor")

#: Tries (and the pause between) to collect a child seen gone (see :func:`exited`).
_REAP_TRIES = 10
_REAP_PAUSE_S = 0.005

LOG_TAIL_LINES = 40


class InstanceRegistry:
    def __init__(self, *, db: Database, bus: EventBus, osproc: OsProc, hooks: SupervisorHooks):
        self.repo = InstanceRepo(db)
        self.launches = LaunchRepo(db)
        self.bus = bus
        self.os = osproc
        self.hooks = hooks
        self.instances: dict[str, Instance] = {}

    # ------------------------------------------------------------------ queries

    def list(self, *, include_stopped: bool = False) -> builtins.list[Instance]:
        out = [i for i in self.instances.values() if include_stopped or i.state != State.STOPPED]
        return sorted(out, key=lambda i: i.created_at)

    def get(self, target: str) -> Instance:
        """An instance by id, or the live instance of a recipe id."""
        if target in self.instances:
            return self.instances[target]
        live = [
            i
            for i in self.instances.values()
            if i.recipe.id == target and i.state not in (State.STOPPED, State.FAILED)
        ]
        if not live:
            live = [i for i in self.instances.values() if i.recipe.id == target]
        if not live:
            known = ", ".join(sorted(self.instances)) or "none"
            raise NotFoundError(
                f"no instance or recipe named {target!r} is known to the daemon",
                hint=f"instances: {known}; see `studioctl ps --all`",
            )
        return max(live, key=lambda i: i.created_at)

    def holding(self) -> builtins.list[Instance]:
        """Instances that hold (or will hold again) a process, its port and its GPUs:
        active or crashed."""
        return [i for i in self.list() if i.state in ACTIVE or i.state == State.CRASHED]

    def residents(self, *, exclude: str | None = None) -> builtins.list[placement.Resident]:
        """The GPU holders as placement sees them."""
        return [
            placement.Resident(i.id, i.recipe.id, tuple(i.gpus))
            for i in self.holding()
            if i.id != exclude
        ]

    # ------------------------------------------------------------------ changes

    def add(self, inst: Instance, *, stored: bool = False) -> None:
        """A new instance (stored now unless ``stored``: an instance restored from the store)."""
        if not stored:
            self.repo.insert(inst.to_record())
        self.instances[inst.id] = inst

    def set_state(self, inst: Instance, new: State, reason: str) -> None:
        """The one way an instance changes state: checked, stored with its history,
        published, announced."""
        old = inst.state
        check(old, new, instance_id=inst.id)
        if new in (State.READY, State.FAILED, State.STOPPED, State.CRASHED):
            # Start-up is over: the engine read its key file and printed what it prints.
            self.scrub_log(inst)
            with contextlib.suppress(OSError):
                key_file_path(inst.id).unlink(missing_ok=True)
        inst.state = new
        inst.reason = reason
        ts = self.os.now()
        if new == State.STOPPED:
            inst.stopped_at = ts
        self.repo.record_transition(inst.id, str(old), str(new), reason, ts)
        self.persist(inst)
        self.bus.publish(
            "state",
            f"{inst.id}: {old} -> {new}" + (f" ({reason})" if reason else ""),
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"from": str(old), "to": str(new), "reason": reason},
        )
        self.changed()

    def crashed(self, inst: Instance, why: str) -> None:
        """The process exited or stopped answering: CRASHED, counted for the restart policy."""
        inst.crash_times.append(self.os.now())
        self.set_state(inst, State.CRASHED, why)
        self.bus.publish(
            "crash", f"{inst.id}: crashed: {why}", instance_id=inst.id, recipe_id=inst.recipe.id
        )

    def persist(self, inst: Instance) -> None:
        self.repo.update(inst.id, **inst.stored_fields())

    def changed(self) -> None:
        """Tell the daemon (the gateway's route table) every instance, stopped ones too."""
        try:
            self.hooks.instances_changed(self.list(include_stopped=True))
        except Exception:  # a listener's fault must not fail the state change it follows
            log.exception("instances_changed hook failed")

    def fail_waiters(self, inst: Instance, exc: StudioError) -> None:
        """Whoever awaits the instance's readiness gets ``exc``."""
        if inst.ready is not None and not inst.ready.done():
            inst.ready.set_exception(exc)
            inst.ready.exception()  # mark retrieved: no "never retrieved" warning if nobody waits

    def refresh_tree(self, inst: Instance) -> None:
        """Record the processes now under the engine (stopped with it later)."""
        if inst.pid is None:
            return
        before = len(inst.tree)
        for p in self.os.tree(inst.pid):
            inst.tree.setdefault(p.pid, p.create_time)
        if len(inst.tree) != before:
            self.persist(inst)

    def tree_alive(self, inst: Instance) -> bool:
        return any(self.os.is_alive(p, c) for p, c in inst.tree.items())

    def exited(self, inst: Instance) -> bool:
        """Whether the engine's root process is gone (its exit code kept when ours)."""
        return exited(self.os, inst)

    # ------------------------------------------------------------------ logs and launches

    def scrub_log(self, inst: Instance) -> None:
        """Mask the engine's key wherever the engine printed it into its log."""
        logfiles.scrub(inst.log_path, inst.api_key, start=inst.log_offset)

    def log_tail(self, inst: Instance) -> builtins.list[str]:
        """The log's last lines for an error message, the key masked."""
        self.scrub_log(inst)
        lines = logfiles.tail_lines(inst.log_path, LOG_TAIL_LINES)
        return [redact(line, inst.api_key) for line in lines]

    def record_launch(self, inst: Instance, outcome: str) -> None:
        if inst.started_at is None:
            return
        with contextlib.suppress(Exception):  # timings feed the ETA; never fail over them
            self.launches.record(
                inst.recipe.id,
                inst.id,
                inst.started_at,
                outcome,
                self.os.now() - inst.started_at,
                dict(inst.stages),
            )

    def eta(self, recipe_id: str) -> dict[str, float] | None:
        try:
            return self.launches.typical(recipe_id)
        except Exception:  # the ETA is a nicety; never fail a launch over it
            return None

    def publish_stage(self, inst: Instance, stage: Stage) -> None:
        t = inst.stages[stage.name]
        self.bus.publish(
            "stage",
            f"{inst.id}: {stage.label}",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"stage": stage.name, "label": stage.label, "t": t},
        )


def exited(osp: OsProc, inst: Instance) -> bool:
    """Whether ``inst``'s root process is gone; its exit code goes to ``inst.exit_code``."""
    code = osp.reap(inst.spawned)
    if code is None:
        if inst.pid is not None and osp.is_alive(inst.pid, inst.create_time):
            return False
        # Gone since the first look: a child of ours is a zombie by now, so its exit
        # code can be collected (else "process exited" would hide "exited with code 3").
        # A leader whose other threads are still exiting shows as a zombie before waitpid
        # may collect it: a few short tries (the death path only; under load it took ms).
        for _ in range(_REAP_TRIES):
            code = osp.reap(inst.spawned)
            if code is not None or inst.spawned is None or inst.spawned.popen is None:
                break
            time.sleep(_REAP_PAUSE_S)
    if code is not None:
        inst.exit_code = code
    return True
