"""Memory per GPU and the groups: what a load needs and which instances would have to leave.

Shared by the scheduler (``policy``) and the FIFO baseline (``fifo``); they differ only in
which of the chosen victims they allow to go now. A ``Ledger`` is one plan's working copy:
it starts from the residents and is updated as the plan claims memory and evicts, so two
loads planned in one call never count on the same gigabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from studioctl.scheduler.model import (
    ARRIVING,
    LEAVING,
    Group,
    Loadable,
    Resident,
    SchedulerState,
)

# Memory sums are floats; a need that fits to the last megabyte fits.
EPSILON_GB = 1e-6


@dataclass(frozen=True)
class Room:
    """What loading a recipe takes: ``victims`` must leave first; ``blocked`` says why not."""

    gpus: tuple[int, ...]
    victims: tuple[Resident, ...] = ()
    blocked: str | None = None


class Ledger:
    """Memory held, leaving and claimed per GPU during one plan."""

    def __init__(self, state: SchedulerState) -> None:
        self.capacity = dict(state.capacity)
        self.catalog = state.catalog
        self.policy = state.policy
        self.residents = state.residents
        self.held = dict.fromkeys(self.capacity, 0.0)
        self.leaving = dict.fromkeys(self.capacity, 0.0)
        self.live: list[Resident] = []
        self.claims: list[str] = []  # recipes given memory in this plan (not yet residents)
        self.dispatched: set[str] = set()  # instances sent requests in this plan
        for r in state.residents:
            for g in self.gpus_of(r.gpus):
                self.held[g] = self.held.get(g, 0.0) + r.vram_gb
                if r.state in LEAVING:
                    self.leaving[g] = self.leaving.get(g, 0.0) + r.vram_gb
            if r.state not in LEAVING:
                self.live.append(r)

    def gpus_of(self, gpus: tuple[int, ...]) -> tuple[int, ...]:
        """A recipe's GPUs; none named means every GPU (on a GPU-less host: the pseudo GPU)."""
        return tuple(sorted(set(gpus))) if gpus else tuple(sorted(self.capacity))

    def busy(self, r: Resident) -> bool:
        """Requests in flight, counting those this plan sent: its eviction is a drain."""
        return r.inflight > 0 or r.instance_id in self.dispatched

    def pinned(self, r: Resident) -> bool:
        entry = self.catalog.get(r.recipe_id)
        return r.pinned or (entry is not None and entry.pinned)

    def fits(self, entry: Loadable, victims: tuple[Resident, ...], now: bool) -> bool:
        """Whether ``entry`` fits once ``victims`` are gone (and, unless ``now``, every
        instance already leaving too)."""
        for g in self.gpus_of(entry.gpus):
            if g not in self.capacity:
                return False
            used = self.held[g] - sum(v.vram_gb for v in victims if g in self.gpus_of(v.gpus))
            if not now:
                used -= self.leaving[g]
            if used + entry.vram_gb > self.capacity[g] + EPSILON_GB:
                return False
        return True

    def claim(self, entry: Loadable) -> None:
        for g in self.gpus_of(entry.gpus):
            self.held[g] += entry.vram_gb
        self.claims.append(entry.recipe_id)

    def evict(self, r: Resident) -> None:
        for g in self.gpus_of(r.gpus):
            self.leaving[g] += r.vram_gb
        self.live.remove(r)

    def group_conflicts(self, recipe_id: str) -> tuple[list[str], list[str]]:
        """Recipes (running or claimed) that may not run beside ``recipe_id``: those that
        must leave first, and those that never leave for it (a persistent group's)."""
        mine = self.policy.group_of(recipe_id)
        leave: list[str] = []
        stay: list[str] = []
        for other in [r.recipe_id for r in self.live] + self.claims:
            theirs = self.policy.group_of(other)
            if other == recipe_id or not conflict(mine, theirs):
                continue
            persistent = theirs is not None and theirs.persistent and theirs != mine
            (stay if persistent else leave).append(other)
        return leave, stay

    def room_for(self, entry: Loadable, busy: frozenset[str]) -> Room:
        """The instances to evict for ``entry``: group conflicts, then, while it does not fit,
        idle before busy (``busy``: models with requests queued), least recently used first.
        Pinned instances are never chosen."""
        gpus = self.gpus_of(entry.gpus)
        missing = [g for g in gpus if g not in self.capacity]
        if missing:
            return Room(gpus, blocked=f"GPU {missing[0]} is not on this host")
        conflicts, persistent = self.group_conflicts(entry.recipe_id)
        if persistent:
            return Room(gpus, blocked=f"{persistent[0]} (persistent group) cannot run with it")
        if set(conflicts) & set(self.claims):
            return Room(gpus, blocked="a model of a conflicting group is being loaded")
        must = tuple(r for r in self.live if r.recipe_id in conflicts)
        for r in must:
            if self.pinned(r):
                return Room(gpus, blocked=f"pinned {r.instance_id} cannot run with it (groups)")
        victims = list(must)
        for r in sorted(self.live, key=lambda r: _eviction_order(r, busy)):
            if self.fits(entry, tuple(victims), now=False):
                break
            shares = set(gpus) & set(self.gpus_of(r.gpus))
            if r in victims or not shares or self.pinned(r) or r.recipe_id == entry.recipe_id:
                continue
            if r.state in ARRIVING:  # never evicted for memory: its load would be wasted
                continue
            victims.append(r)
        if not self.fits(entry, tuple(victims), now=False):
            return Room(gpus, blocked=self._no_fit(entry))
        return Room(gpus, victims=tuple(victims))

    def _no_fit(self, entry: Loadable) -> str:
        gpus = ",".join(map(str, self.gpus_of(entry.gpus)))
        return (
            f"does not fit: needs {entry.vram_gb:g} GB on GPU {gpus} beside what is pinned, "
            "loading or claimed by an older request"
        )


def conflict(mine: Group | None, theirs: Group | None) -> bool:
    """Whether members of two groups (None: no group) may not run together: one swap group,
    or different groups one of which is exclusive (a persistent group is exempt from the
    other's exclusivity)."""
    if mine is not None and mine == theirs:
        return mine.swap
    mine_excl = (
        mine is not None and mine.exclusive and not (theirs is not None and theirs.persistent)
    )
    theirs_excl = (
        theirs is not None and theirs.exclusive and not (mine is not None and mine.persistent)
    )
    return mine_excl or theirs_excl


def _eviction_order(r: Resident, busy: frozenset[str]) -> tuple[bool, float]:
    is_busy = r.inflight > 0 or r.recipe_id in busy
    last = r.last_used if r.last_used is not None else r.ready_at
    return (is_busy, last if last is not None else float("-inf"))
