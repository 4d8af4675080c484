"""The baselines the scheduler is measured against: swap to whatever the oldest request
wants, as soon as it is its turn.

- ``fifo_plan``, strict first in, first out, as a per-request swapping proxy serves
  (llama-swap): requests go in arrival order and the engine is swapped whenever the next
  request names another model. Only the *head run* (the oldest requests up to the first one
  for another model) is served; its model is loaded at once, evicting whatever is in the way
  (busy instances as a drain, fresh ones too). Everyone else waits "behind the head", even
  requests for a model that is ready: no overtaking, no collation. A A B A swaps twice.
- ``batched_fifo_plan``, the collating variant: every queued request of any ready model goes
  at once, and the oldest request whose model is not running gets its model loaded right away.

Both keep the safety rules (one load per model, pinned and arriving instances stay,
in-flight requests are never aborted), so a comparison measures the swap policy alone.
"""

from __future__ import annotations

from studioctl.scheduler.fit import Ledger
from studioctl.scheduler.model import Action, Evict, Load, Loadable, Queued, SchedulerState, Wait
from studioctl.scheduler.policy import fit_reason, loadable, queues, serving

BEHIND = "behind the head"


def fifo_plan(state: SchedulerState, now: float) -> list[Action]:
    """Serve the head run only; load its model now, whatever it costs."""
    ledger = Ledger(state)
    ordered = sorted(state.waiting, key=lambda q: (q.enqueued_at, q.request_id))
    if not ordered:
        return []
    model = ordered[0].model
    run = head_run(ordered)
    action = serving(ledger, model, run)
    if action is not None:
        actions = [action]
    else:
        entry = loadable(state, model)
        actions = [entry] if isinstance(entry, Wait) else swap_to(ledger, entry)
    # One action per model: the head's own later requests wait on its Dispatch or Load.
    actions += [Wait(m, BEHIND) for m in queues(ordered[len(run) :]) if m != model]
    return actions


def head_run(ordered: list[Queued]) -> list[Queued]:
    """The oldest requests up to the first one for another model (``ordered``: oldest first)."""
    model = ordered[0].model
    for i, q in enumerate(ordered):
        if q.model != model:
            return ordered[:i]
    return ordered


def batched_fifo_plan(state: SchedulerState, now: float) -> list[Action]:
    """Dispatch what can go; load the oldest request's model now, whatever it costs."""
    ledger = Ledger(state)
    actions: list[Action] = []
    head_done = False
    for model, queue in queues(state.waiting).items():
        action = serving(ledger, model, queue)
        if action is not None:
            actions.append(action)
            continue
        entry = loadable(state, model)
        if isinstance(entry, Wait) or head_done:
            actions.append(entry if isinstance(entry, Wait) else Wait(model, BEHIND))
            continue
        head_done = True
        actions.extend(swap_to(ledger, entry))
    return actions


def swap_to(ledger: Ledger, entry: Loadable) -> list[Action]:
    """Load ``entry`` now, evicting whatever is in the way (busy instances as a drain);
    arriving and pinned instances stay (then it waits)."""
    model = entry.recipe_id
    room = ledger.room_for(entry, frozenset())
    arriving = [r for r in room.victims if r.state in ("starting", "loading")]
    if room.blocked is not None or arriving:
        return [Wait(model, room.blocked or "a conflicting model is loading")]
    fits_now = not room.victims and ledger.fits(entry, (), now=True)
    reason = fit_reason(ledger, entry, room)
    ledger.claim(entry)
    actions: list[Action] = []
    for r in room.victims:
        drain = ledger.busy(r)
        ledger.evict(r)
        actions.append(Evict(r.instance_id, f"fifo: {model} is next", model, drain))
    actions.append(
        Load(model, room.gpus, reason) if fits_now else Wait(model, "waiting for memory")
    )
    return actions
