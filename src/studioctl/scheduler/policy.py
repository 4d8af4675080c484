"""The scheduler: which queued requests go now, which model loads next, what leaves for it.

``plan(state, now)`` is a pure function (the clock is an argument) and level-triggered: call
it on every change (a request queued, an instance ready or gone, a request finished) and at
the earliest ``Wait.until``; see ``studioctl.scheduler.model`` for the caller's side.

The rules, per model with queued requests, oldest first:

- a ready instance: ``Dispatch`` them all (the engine batches them);
- an instance starting or loading: ``Wait`` (exactly one load per model, however many wait);
- otherwise it needs a load. If it fits beside what runs, ``Load``. If not, instances leave
  first: group conflicts, then idle before busy, least recently used first; never a pinned
  one, never one still loading. No thrash: an instance that is busy (requests in flight or
  queued for it) or was loaded or used within ``min_resident_s`` (an idle one: at most its
  own ``load_s``, see ``idle_hold_s``) stays while the newcomer's
  oldest request has waited less than ``max_wait_s`` (so A A A is served before B); after
  that the newcomer is starved and the busy one is evicted as a drain (in-flight requests
  finish, none is aborted). The load itself comes in a later plan, once the leavers' memory
  is free.

Bound on queueing: a request is sent about ``max_wait_s`` after it arrived at the latest,
plus one swap (a drain, a stop and its own load), when the catalog gives each recipe's
expected load time (``load_s``): the models that need a load take turns oldest first, and
each turn starts early by the loads of the turns before it (their drains and stops, which
the scheduler cannot know, still add up). Without estimates (``load_s`` 0) the bound is
``max_wait_s`` plus, per model starving at the same time ahead of it, one more swap. A
turn does not start early by its own load: under steady demand for two models that do not
fit together, swaps then come at most once per ``max_wait_s``.
"""

from __future__ import annotations

from collections.abc import Sequence

from studioctl.scheduler.fit import Ledger, Room
from studioctl.scheduler.model import (
    ARRIVING,
    LEAVING,
    Action,
    Dispatch,
    Evict,
    Load,
    Loadable,
    Queued,
    Resident,
    SchedulerState,
    Wait,
)


def queues(waiting: Sequence[Queued]) -> dict[str, list[Queued]]:
    """Queued requests per model, each oldest first, models ordered by their oldest."""
    out: dict[str, list[Queued]] = {}
    for q in sorted(waiting, key=lambda q: (q.enqueued_at, q.request_id)):
        out.setdefault(q.model, []).append(q)
    return out


def serving(ledger: Ledger, model: str, queue: list[Queued]) -> Action | None:
    """Dispatch to a ready instance, or wait for one on its way in or out; None: the model
    needs a load. Instances evicted earlier in this plan are out of ``ledger.live``."""
    mine = [r for r in ledger.live if r.recipe_id == model]
    ready = [r for r in mine if r.state == "ready"]
    if ready:
        ledger.dispatched.add(ready[0].instance_id)
        ids = tuple(q.request_id for q in queue)
        return Dispatch(model, ids, f"{ready[0].instance_id} is ready")
    arriving = [r for r in mine if r.state in ARRIVING]
    if arriving:
        return Wait(model, f"{arriving[0].instance_id} is {arriving[0].state}")
    # One instance per model at a time: a second one beside a leaving one would hold the
    # same recipe's port and memory twice (and undo, in the same plan, an eviction).
    leaving = [r for r in ledger.residents if r.recipe_id == model]
    if leaving:
        return Wait(model, f"{leaving[0].instance_id} is stopping; {model} loads again after")
    return None


def loadable(state: SchedulerState, model: str) -> Loadable | Wait:
    entry = state.catalog.get(model)
    if entry is None:
        return Wait(model, f"{model} is not a recipe the scheduler may load")
    if not entry.on_demand:
        return Wait(model, f"{model} is not loaded on demand (launch it)")
    return entry


def plan(state: SchedulerState, now: float) -> list[Action]:
    """The actions to take now; see the module docstring for the rules."""
    ledger = Ledger(state)
    waiting = queues(state.waiting)
    busy = frozenset(waiting)
    turns = deadlines(state, waiting)
    actions: list[Action] = []
    for model, queue in waiting.items():
        action = serving(ledger, model, queue)
        if action is not None:
            actions.append(action)
            continue
        entry = loadable(state, model)
        if isinstance(entry, Wait):
            actions.append(entry)
            continue
        deadline = turns.get(model, queue[0].enqueued_at + state.policy.max_wait_s)
        actions.extend(place(ledger, entry, busy - {model}, now, deadline))
    return actions


def deadlines(state: SchedulerState, waiting: dict[str, list[Queued]]) -> dict[str, float]:
    """When each model that needs a load gets its turn whatever runs (it is "starved").

    Turns go oldest first. Each starts early by the expected loads (``load_s``) of every
    turn before it, so the last of several models starving together is still served about
    ``max_wait_s`` plus one load after its request; and no turn is later than a turn after
    it (else a younger model would take the slot before an older one). A turn does not start
    early by its own load: that would bring each swap of two busy models ``load_s`` closer
    to the last, more than one per ``max_wait_s``.
    """
    running = {r.recipe_id for r in state.residents if r.state not in LEAVING}
    lead, raw = 0.0, []
    for model, queue in waiting.items():
        entry = state.catalog.get(model)
        if model in running or entry is None or not entry.on_demand:
            continue
        raw.append((model, queue[0].enqueued_at + state.policy.max_wait_s - lead))
        lead += entry.load_s
    out: dict[str, float] = {}
    soonest = float("inf")
    for model, deadline in reversed(raw):
        soonest = min(soonest, deadline)
        out[model] = soonest
    return out


def place(
    ledger: Ledger, entry: Loadable, busy: frozenset[str], now: float, deadline: float
) -> list[Action]:
    """Load ``entry``, or evict for it, or say why it waits (and until when)."""
    model = entry.recipe_id
    room = ledger.room_for(entry, busy)
    if room.blocked is not None:
        return [Wait(model, room.blocked)]
    starved = now >= deadline
    held = [held_back(r, busy, idle_hold_s(ledger, r), now) for r in room.victims]
    if not starved and any(h is not None for h in held):
        reason, until = min((h for h in held if h is not None), key=lambda h: h[1])
        return [Wait(model, reason, until=min(until, deadline))]
    fits_now = not room.victims and ledger.fits(entry, (), now=True)
    reason = fit_reason(ledger, entry, room)
    ledger.claim(entry)  # the memory is this model's, now or once the leavers are gone
    if fits_now:
        return [Load(model, room.gpus, reason)]
    if not room.victims:
        return [Wait(model, "waiting for evicted instances to free their memory")]
    return evictions(ledger, room, model, starved)


def idle_hold_s(ledger: Ledger, r: Resident) -> float:
    """How long an idle resident stays after its load or last use while others wait:
    ``min_resident_s``, or its own expected load time when that is shorter (the ski-rental
    rule: holding an idle model longer than reloading it would take costs the waiting
    requests more than a reload costs; agents that all moved on to other models leave it
    idle, and it would sit out ``min_resident_s`` for nobody)."""
    entry = ledger.catalog.get(r.recipe_id)
    load_s = entry.load_s if entry is not None else 0.0
    if load_s > 0:
        return min(ledger.policy.min_resident_s, load_s)
    return ledger.policy.min_resident_s


def held_back(
    r: Resident, busy: frozenset[str], min_resident_s: float, now: float
) -> tuple[str, float] | None:
    """Why ``r`` stays for now (and until when it may go), or None when it is free to go."""
    if r.state in ARRIVING:
        return (f"{r.instance_id} is still {r.state}", float("inf"))
    # ``busy``: models with queued requests, so also those this plan just dispatched to.
    if r.inflight > 0 or r.recipe_id in busy:
        return (f"{r.recipe_id} is serving its own requests first", float("inf"))
    # Fresh means loaded or used within min_resident_s: a model whose requests come every
    # few seconds is idle between them, and evicting it then is the A B A B thrash.
    since = max((t for t in (r.ready_at, r.last_used) if t is not None), default=None)
    # Compared as ``now < until``, the very value handed back as Wait.until: a caller woken
    # at that time must find the instance free (``now - since < min`` can round the other
    # way, and then nothing would wake it again).
    if since is not None and now < since + min_resident_s:
        return (
            f"{r.instance_id} was used {now - since:.0f}s ago (min_resident_s)",
            since + min_resident_s,
        )
    return None


def evictions(ledger: Ledger, room: Room, model: str, starved: bool) -> list[Action]:
    """Evict ``room.victims`` for ``model`` (draining the busy ones), then wait for them."""
    out: list[Action] = []
    for r in room.victims:
        if r.state in ARRIVING:  # only a group conflict can name one; it stays until ready
            return [Wait(model, f"{r.instance_id} is still {r.state}")]
    for r in room.victims:
        why = f"{model} reached max_wait_s" if starved else f"{model} needs room"
        drain = ledger.busy(r)
        kind = "draining busy" if drain else "least recently used idle"
        ledger.evict(r)
        out.append(Evict(r.instance_id, f"{kind} {r.recipe_id}: {why}", model, drain))
    names = ", ".join(r.instance_id for r in room.victims)
    out.append(Wait(model, f"waiting for {names} to stop"))
    return out


def fit_reason(ledger: Ledger, entry: Loadable, room: Room) -> str:
    gpus = ",".join(map(str, room.gpus))
    free = min(ledger.capacity[g] - ledger.held[g] for g in room.gpus)
    return f"fits: {entry.vram_gb:g} GB on GPU {gpus} ({free:g} GB free)"
