"""The lifecycle state machine: every (from, to) pair, allowed or refused, from one table."""

from __future__ import annotations

import itertools

import pytest

from studioctl import states
from studioctl.errors import ConflictError, StudioError, TransitionError
from studioctl.states import ACTIVE, TERMINAL, TRANSITIONS, State

# The allowed transitions, written out independently of the module: a change to
# TRANSITIONS must be made in both places on purpose.
ALLOWED = {
    ("starting", "loading"),
    ("starting", "ready"),
    ("starting", "crashed"),
    ("starting", "failed"),
    ("starting", "stopping"),
    ("loading", "ready"),
    ("loading", "crashed"),
    ("loading", "failed"),
    ("loading", "stopping"),
    ("ready", "draining"),
    ("ready", "stopping"),
    ("ready", "crashed"),
    ("draining", "stopping"),
    ("draining", "ready"),
    ("draining", "crashed"),
    ("stopping", "stopped"),
    ("stopping", "failed"),
    ("stopped", "starting"),
    ("crashed", "starting"),
    ("crashed", "failed"),
    ("crashed", "stopped"),
    ("failed", "starting"),
    ("failed", "stopped"),
}
NAMES = [
    "starting",
    "loading",
    "ready",
    "draining",
    "stopping",
    "stopped",
    "crashed",
    "failed",
]
ALL_PAIRS = list(itertools.product(NAMES, NAMES))


def test_the_eight_states() -> None:
    assert [s.value for s in State] == NAMES
    assert set(TRANSITIONS) == set(State)


@pytest.mark.parametrize(("frm", "to"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_every_pair(frm: str, to: str) -> None:
    expected = (frm, to) in ALLOWED
    assert states.allowed(frm, to) is expected
    assert (State(to) in TRANSITIONS[State(frm)]) is expected
    if expected:
        assert states.check(State(frm), State(to)) is State(to)
        assert states.check(frm, to) is State(to)  # plain strings, as read from the store
    else:
        with pytest.raises(TransitionError) as info:
            states.check(frm, to, instance_id="tiny-cpu-1")
        err = info.value
        assert err.frm is State(frm) and err.to is State(to)
        assert f"cannot go from {frm} to {to}" in err.message
        assert "tiny-cpu-1" in err.message
        # The message lists what is allowed from there, so the user knows what to do.
        for nxt in sorted(t for f, t in ALLOWED if f == frm):
            assert nxt in err.message.split("only:")[1]


def test_no_state_transitions_to_itself() -> None:
    for s in State:
        with pytest.raises(TransitionError):
            states.check(s, s)


def test_transition_error_is_a_conflict() -> None:
    with pytest.raises(TransitionError) as info:
        states.check(State.STOPPED, State.READY)
    assert isinstance(info.value, ConflictError)
    assert isinstance(info.value, StudioError)
    assert info.value.exit_code == 5
    assert info.value.http_status == 409
    assert info.value.to_dict()["code"] == "invalid_transition"


def test_unknown_state_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown instance state 'runing'.*starting"):
        states.check("runing", "ready")
    with pytest.raises(ValueError, match="unknown instance state"):
        states.allowed("ready", "gone")


def test_active_and_terminal() -> None:
    assert {s.value for s in ACTIVE} == {"starting", "loading", "ready", "draining", "stopping"}
    assert {s.value for s in TERMINAL} == {"stopped", "failed"}
    assert not ACTIVE & TERMINAL
    # crashed holds no process but is not at rest either: a restart may follow.
    assert State.CRASHED not in ACTIVE | TERMINAL
    # Every active state can be stopped or crash, one way or another.
    for s in ACTIVE - {State.STOPPING}:
        assert TRANSITIONS[s] & {State.STOPPING, State.CRASHED}
    # Nothing rests forever: every terminal state can be launched again.
    for s in TERMINAL:
        assert State.STARTING in TRANSITIONS[s]


def test_every_state_reachable_from_starting() -> None:
    seen = {State.STARTING}
    todo = [State.STARTING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(State)


def test_module_is_stdlib_only() -> None:
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(states.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert outside == {"studioctl.errors"}
