"""The lifecycle states of an instance and the transitions allowed between them.

Stdlib only, no I/O: the supervisor changes an instance's state only after ``check()``
(and the store's ``InstanceRepo.record_transition`` checks again), so an impossible
history cannot be written.

    starting -> loading -> ready -> draining -> stopping -> stopped
    starting|loading|ready|draining -> crashed -> starting (restart) | failed | stopped

``crashed`` is a waiting room: the process is gone, a restart (with backoff) may follow;
``failed`` (launch failed, or the crash-loop budget is spent) and ``stopped`` are where an
instance rests until someone launches it again.
"""

from __future__ import annotations

from enum import StrEnum

from studioctl.errors import TransitionError


class State(StrEnum):
    STARTING = "starting"  # process spawned, nothing heard from it yet
    LOADING = "loading"  # the engine says it is loading (log stages / 503 on /health)
    READY = "ready"  # readiness probe answered: routable
    DRAINING = "draining"  # no new requests routed; in-flight ones finish
    STOPPING = "stopping"  # SIGTERM sent to the group, SIGKILL after the grace
    STOPPED = "stopped"  # the whole process tree is gone, on purpose
    CRASHED = "crashed"  # the process exited or stopped answering; restart policy applies
    FAILED = "failed"  # launch failed or crash-loop budget spent; stays until relaunched


S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    # STARTING -> READY directly: an engine can answer its readiness probe before we saw any
    # loading log line (fast engines, the test stand-in). STARTING -> FAILED: exited before
    # ready or readiness timeout; CRASHED is for the restart policy to decide instead.
    S.STARTING: frozenset({S.LOADING, S.READY, S.CRASHED, S.FAILED, S.STOPPING}),
    S.LOADING: frozenset({S.READY, S.CRASHED, S.FAILED, S.STOPPING}),
    # No READY -> LOADING: readiness is one-way for the life of a process. A ready engine
    # whose health check fails is counted towards the crash threshold (3 probes in a row ->
    # CRASHED -> restart), not sent back to LOADING, where no readiness timeout watches it
    # any more and a wedged engine could sit forever looking "almost there".
    S.READY: frozenset({S.DRAINING, S.STOPPING, S.CRASHED}),
    # DRAINING -> READY: a drain that is cancelled (e.g. the switch it belonged to failed).
    S.DRAINING: frozenset({S.STOPPING, S.READY, S.CRASHED}),
    # No STOPPING -> CRASHED: we asked the process to exit, so however it exits it is
    # STOPPED (the exit status goes into the reason); CRASHED would start the restart policy
    # against the user's wish. STOPPING -> FAILED: part of the process tree survived SIGKILL
    # (a leaked worker holding GPU memory): the stop could not be verified.
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset({S.STARTING}),
    S.CRASHED: frozenset({S.STARTING, S.FAILED, S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
}

#: States in which the instance holds a process tree, its port and its GPUs.
ACTIVE: frozenset[State] = frozenset({S.STARTING, S.LOADING, S.READY, S.DRAINING, S.STOPPING})

#: States nothing leaves on its own: only a new launch (or an explicit stop) moves them.
#: CRASHED is neither ACTIVE nor TERMINAL: no process, but a restart may be pending.
TERMINAL: frozenset[State] = frozenset({S.STOPPED, S.FAILED})

#: States the gateway may send requests to.
ROUTABLE: frozenset[State] = frozenset({S.READY})

#: States from which an instance will (again) serve soon: the gateway tells clients to retry.
PENDING: frozenset[State] = frozenset({S.STARTING, S.LOADING, S.DRAINING})


def parse(value: State | str) -> State:
    """``value`` as a State, or a ValueError naming the valid states."""
    try:
        return State(value)
    except ValueError:
        valid = ", ".join(s.value for s in State)
        raise ValueError(f"unknown instance state {value!r} (valid: {valid})") from None


def allowed(frm: State | str, to: State | str) -> bool:
    return parse(to) in TRANSITIONS[parse(frm)]


def check(frm: State | str, to: State | str, *, instance_id: str | None = None) -> State:
    """Raise TransitionError unless ``frm -> to`` is allowed; return ``to`` as a State.

    A state never transitions to itself: a repeated state change is a bug to surface.
    """
    f, t = parse(frm), parse(to)
    if t not in TRANSITIONS[f]:
        raise TransitionError(f, t, allowed=TRANSITIONS[f], instance_id=instance_id)
    return t
