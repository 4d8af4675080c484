"""The naive baseline the scheduler is measured against: swap to whatever the oldest request
wants, as soon as it arrives.

Like llama-swap's default: requests for a ready model go at once; the oldest request whose
model is not running gets its model loaded right away, evicting whatever is in the way
(busy instances as a drain, fresh ones too). It keeps the safety rules (one load per model,
pinned and loading instances stay, in-flight requests are never aborted) so a comparison
measures the swap policy alone.
"""

from __future__ import annotations

from studioctl.scheduler.fit import Ledger
from studioctl.scheduler.model import Action, Evict, Load, SchedulerState, Wait
from studioctl.scheduler.policy import fit_reason, loadable, queues, serving


def fifo_plan(state: SchedulerState, now: float) -> list[Action]:
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
            actions.append(entry if isinstance(entry, Wait) else Wait(model, "behind the head"))
            continue
        head_done = True
        room = ledger.room_for(entry, frozenset())
        arriving = [r for r in room.victims if r.state in ("starting", "loading")]
        if room.blocked is not None or arriving:
            actions.append(Wait(model, room.blocked or "a conflicting model is loading"))
            continue
        fits_now = not room.victims and ledger.fits(entry, (), now=True)
        reason = fit_reason(ledger, entry, room)
        ledger.claim(entry)
        for r in room.victims:
            drain = ledger.busy(r)
            ledger.evict(r)
            actions.append(Evict(r.instance_id, f"fifo: {model} is next", model, drain))
        if fits_now:
            actions.append(Load(model, room.gpus, reason))
        else:
            actions.append(Wait(model, "waiting for memory"))
    return actions
