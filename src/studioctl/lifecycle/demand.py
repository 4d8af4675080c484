"""The scheduler's view of the daemon: what the on-demand orchestrator (``ondemand``) hands
to ``studioctl.scheduler.plan``, built from the recipes, the supervisor's instances, the
gateway's waiting rooms and the settings.

Pure functions over plain values (the recipes are read from disk by the caller, off the
event loop): a ``Catalog`` per recipe scan, then per plan the waiting requests and the
residents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studioctl.lifecycle import memory
from studioctl.scheduler import Group, Loadable, Policy, Queued, Resident, ResidentState
from studioctl.states import State

if TYPE_CHECKING:
    from studioctl.lifecycle.runtime import Instance
    from studioctl.recipes import Recipe
    from studioctl.settings import Settings

#: The instance states the scheduler sees (a crashed one restarts: it will hold its memory).
_STATES: dict[State, ResidentState] = {
    State.STARTING: "starting",
    State.LOADING: "loading",
    State.READY: "ready",
    State.DRAINING: "draining",
    State.STOPPING: "stopping",
    State.CRASHED: "starting",
}


@dataclass(frozen=True)
class Catalog:
    """The recipes as the orchestrator serves them, from one scan."""

    recipes: Mapping[str, Recipe]  # by id
    names: Mapping[str, str]  # every served name and alias → recipe id
    loadables: Mapping[str, Loadable]  # by id
    needs: Mapping[str, memory.Need]  # by id (for the events)

    @classmethod
    def empty(cls) -> Catalog:
        return cls({}, {}, {}, {})

    def on_demand(self, name: str) -> str | None:
        """The recipe id a request for ``name`` loads, or None (unknown, or not on demand)."""
        rid = self.names.get(name)
        if rid is None:
            return None
        entry = self.loadables.get(rid)
        return rid if entry is not None and entry.on_demand else None


def build_catalog(
    recipes: Iterable[Recipe],
    *,
    load_on_demand: bool,
    capacity: Mapping[int, float],
    has_gpus: bool,
    learned_gb: Callable[[Recipe], float | None],
) -> Catalog:
    """Every recipe's names, memory need per GPU (``memory.memory_need_gb``: its ``vram_gb``,
    else its last run's peak, else an estimate; unknown takes its GPUs whole) and whether a
    request loads it (its ``on_demand``, else ``load_on_demand``)."""
    by_id: dict[str, Recipe] = {}
    names: dict[str, str] = {}
    loadables: dict[str, Loadable] = {}
    needs: dict[str, memory.Need] = {}
    for r in recipes:
        if r.id in by_id:
            continue
        by_id[r.id] = r
        for name in r.model_names:
            names.setdefault(name, r.id)
        devices = sorted(r.gpus) if r.gpus else sorted(capacity)
        one_gpu = capacity.get(devices[0]) if has_gpus and devices else None
        need = memory.memory_need_gb(r, learned_gb=learned_gb(r), gpu_total_gb=one_gpu)
        share = memory.need_by_gpu(need, r.gpus, capacity)
        needs[r.id] = need
        loadables[r.id] = Loadable(
            recipe_id=r.id,
            vram_gb=max(share.values(), default=0.0),
            gpus=tuple(sorted(share)),
            pinned=r.pinned,
            on_demand=r.loads_on_demand(load_on_demand),
        )
    return Catalog(by_id, names, loadables, needs)


def policy(settings: Settings, recipes: Iterable[Recipe]) -> Policy:
    """The scheduler's policy from the settings; a group's members are those it lists and
    the recipes naming it in their ``group`` key."""
    own: dict[str, set[str]] = {}
    for r in recipes:
        if r.group:
            own.setdefault(r.group, set()).add(r.id)
    groups = tuple(
        Group(
            name=g.name,
            members=frozenset(g.members) | frozenset(own.get(g.name, ())),
            swap=g.swap,
            exclusive=g.exclusive,
            persistent=g.persistent,
        )
        for g in settings.scheduler.groups
    )
    return Policy(
        max_wait_s=settings.scheduler.max_wait_s,
        min_resident_s=settings.scheduler.min_resident_s,
        drain_timeout_s=settings.gateway.drain_timeout_s,
        groups=groups,
    )


def waiting(listing: Mapping[str, Any], names: Mapping[str, str], now: float) -> list[Queued]:
    """The gateway's requests waiting for a model (``ModelQueues.listing()``), each with the
    recipe its name resolves to; requests parked for a gateway slot are not the
    scheduler's, nor are names no recipe serves."""
    out: list[Queued] = []
    for row in listing.get("data", ()):
        if row.get("queue") != "loading":
            continue
        rid = names.get(str(row.get("model")))
        if rid is None:
            continue
        waited_s = float(row.get("waited_ms") or 0.0) / 1000.0
        out.append(Queued(str(row["request_id"]), rid, str(row.get("tenant")), now - waited_s))
    return out


def residents(
    instances: Sequence[Instance],
    catalog: Catalog,
    capacity: Mapping[int, float],
    *,
    inflight: Callable[[str], int],
    last_activity: Callable[[str], float | None],
    leaving: Iterable[str] = (),
) -> list[Resident]:
    """The instances that hold (or will hold) memory. ``leaving``: instances this daemon is
    evicting whose drain has not begun yet (seen as draining, so nothing plans them twice)."""
    gone = set(leaving)
    out: list[Resident] = []
    for inst in instances:
        state = _STATES.get(inst.state)
        if state is None:
            continue
        if inst.id in gone and state == "ready":
            state = "draining"
        gpus, vram = _footprint(inst, catalog, capacity)
        out.append(
            Resident(
                instance_id=inst.id,
                recipe_id=inst.recipe.id,
                state=state,
                gpus=gpus,
                vram_gb=vram,
                inflight=inflight(inst.id),
                last_used=last_activity(inst.id),
                ready_at=inst.ready_at,
                pinned=inst.recipe.pinned,
            )
        )
    return out


def _footprint(
    inst: Instance, catalog: Catalog, capacity: Mapping[int, float]
) -> tuple[tuple[int, ...], float]:
    """Where an instance's memory is and how much per GPU: its recipe's entry in the
    catalog, else (a recipe sent by a client) its measured memory, else its GPUs whole."""
    entry = catalog.loadables.get(inst.recipe.id)
    if entry is not None:
        return entry.gpus, entry.vram_gb
    gpus = tuple(sorted(inst.gpus)) if inst.gpus else tuple(sorted(capacity))
    if inst.vram_bytes:
        return gpus, inst.vram_bytes / memory.GIB / max(1, len(gpus))
    return gpus, max((capacity.get(g, math.inf) for g in gpus), default=0.0)
