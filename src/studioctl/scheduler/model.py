"""The scheduler's inputs and outputs: plain frozen values, no I/O.

The caller (the orchestrator) builds a ``SchedulerState`` from the gateway's queue, the
supervisor's instances and the catalog of loadable recipes, calls ``plan(state, now)`` and
carries out the actions. The contract that keeps ``plan`` level-triggered (it may be called
at any time, as often as wanted, and never asks for the same thing twice):

- after carrying out a ``Load`` the caller lists the new instance among the residents
  (state ``starting``) before the next call, so the model is never loaded twice;
- after an ``Evict`` the caller lists that instance as ``draining`` or ``stopping`` until it
  is gone: a leaving instance still holds its memory, and the load it made room for comes in
  a later plan, once the memory is free;
- dispatched requests leave ``waiting`` and count in the instance's ``inflight``;
- a ``Wait`` with ``until`` asks to be planned again at that time even if nothing changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ResidentState = Literal["starting", "loading", "ready", "draining", "stopping"]

#: States of an instance that is on its way out: it takes no new requests, holds its memory.
LEAVING: frozenset[str] = frozenset({"draining", "stopping"})
#: States of an instance still on its way in: never evicted (the load would be wasted).
ARRIVING: frozenset[str] = frozenset({"starting", "loading"})


@dataclass(frozen=True)
class Queued:
    """A request waiting for its model."""

    request_id: str
    model: str  # the recipe id the request resolved to
    tenant: str
    enqueued_at: float


@dataclass(frozen=True)
class Resident:
    """An engine instance that holds (or is about to hold) memory."""

    instance_id: str
    recipe_id: str
    state: ResidentState
    gpus: tuple[int, ...]  # () = every GPU of ``capacity``
    vram_gb: float  # on each of its GPUs
    inflight: int = 0
    last_used: float | None = None  # last request finished or started; None = never used
    ready_at: float | None = None
    pinned: bool = False


@dataclass(frozen=True)
class Loadable:
    """A recipe the scheduler may start."""

    recipe_id: str
    vram_gb: float  # needed on each of its GPUs
    gpus: tuple[int, ...] = ()  # () = every GPU of ``capacity``
    pinned: bool = False  # its instances are never evicted for another model
    on_demand: bool = True  # False: a request never loads it (it waits for a manual launch)
    load_s: float = 0.0  # expected seconds from Load to ready (e.g. its last run's); 0: unknown


@dataclass(frozen=True)
class Group:
    """A llama-swap group (its ``swap``, ``exclusive`` and ``persistent`` fields).

    - ``swap``: only one member runs at a time (loading one evicts the others);
    - ``exclusive``: no model outside the group, grouped or not, runs beside a member.
      llama-swap enforces this one way only (loading a member unloads the others, but a
      non-member may load beside a running member, a behaviour it keeps for compatibility
      and calls a gotcha); here it holds both ways: whichever loads second evicts the other;
    - ``persistent``: members are never evicted by a model of another group (a model that
      would need that waits), and the exclusivity of other groups does not apply to them.
    A model in no group is only limited by memory and by exclusive groups.
    """

    name: str
    members: frozenset[str]
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False


@dataclass(frozen=True)
class Policy:
    max_wait_s: float = 30.0  # a model waited this long gets its turn (no starvation)
    min_resident_s: float = 10.0  # a fresh model stays this long (idle: at most its load_s)
    drain_timeout_s: float = 30.0  # for the supervisor: how long an evicted instance drains
    groups: tuple[Group, ...] = ()

    def group_of(self, recipe_id: str) -> Group | None:
        for group in self.groups:
            if recipe_id in group.members:
                return group
        return None


@dataclass(frozen=True)
class SchedulerState:
    waiting: tuple[Queued, ...]
    residents: tuple[Resident, ...]
    catalog: Mapping[str, Loadable]  # by recipe id
    capacity: Mapping[int, float]  # GPU index -> GB; a host without GPUs: {0: host.capacity_gb}
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True)
class Load:
    """Start one instance of ``recipe_id`` (event ``load_requested``, then ``placed``)."""

    recipe_id: str
    gpus: tuple[int, ...]  # the GPUs it was fitted on (every GPU when the recipe names none)
    reason: str


@dataclass(frozen=True)
class Evict:
    """Stop an instance to make room for ``for_recipe`` (event ``evicted_for``).

    ``drain``: requests are in flight; route nothing new to it and stop it once they finish
    (within the policy's ``drain_timeout_s``). They are never aborted.
    """

    instance_id: str
    reason: str
    for_recipe: str
    drain: bool = False


@dataclass(frozen=True)
class Dispatch:
    """Send these queued requests now: ``model`` has a ready instance."""

    model: str
    request_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Wait:
    """``model``'s requests stay queued (event ``queued``); plan again at ``until`` if set."""

    model: str
    reason: str
    until: float | None = None


Action = Load | Evict | Dispatch | Wait
