"""Whatever the state, the plan keeps the safety rules (random states, both planners)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from studioctl.scheduler import (
    Action,
    Dispatch,
    Evict,
    Group,
    Load,
    Loadable,
    Policy,
    Queued,
    Resident,
    SchedulerState,
    batched_fifo_plan,
    fifo_plan,
    plan,
)
from studioctl.scheduler.model import ARRIVING, LEAVING

MODELS = "ABCDE"
NOW = 500.0
GPUS = st.sampled_from([(), (0,), (1,), (0, 1)])


@st.composite
def states(draw: st.DrawFn) -> SchedulerState:
    capacity = draw(st.sampled_from([{0: 24.0}, {0: 24.0, 1: 24.0}, {0: 80.0, 1: 40.0}]))
    catalog = {
        m: Loadable(
            m,
            draw(st.sampled_from([4.0, 8.0, 16.0, 24.0])),
            draw(GPUS) if len(capacity) > 1 else (),
            pinned=draw(st.booleans()),
            on_demand=draw(st.booleans()) or m == "A",
            load_s=draw(st.sampled_from([0.0, 5.0])),
        )
        for m in MODELS
    }
    residents = []
    for i, m in enumerate(draw(st.lists(st.sampled_from(MODELS), max_size=4, unique=True))):
        state = draw(st.sampled_from(["starting", "loading", "ready", "draining", "stopping"]))
        residents.append(
            Resident(
                f"i{i}",
                m,
                state,
                catalog[m].gpus,
                catalog[m].vram_gb,
                inflight=draw(st.integers(0, 3)),
                last_used=draw(st.none() | st.floats(0, NOW)),
                ready_at=draw(st.none() | st.floats(0, NOW)),
                pinned=draw(st.booleans()),
            )
        )
    waiting = tuple(
        Queued(f"r{i}", m, "t", at)
        for i, (m, at) in enumerate(
            draw(st.lists(st.tuples(st.sampled_from(MODELS), st.floats(0, NOW)), max_size=12))
        )
    )
    groups = draw(
        st.sampled_from(
            [
                (),
                (Group("g", frozenset("AB")),),
                (
                    Group("g", frozenset("AB"), swap=False),
                    Group("p", frozenset("C"), persistent=True),
                ),
            ]
        )
    )
    policy = Policy(max_wait_s=30.0, min_resident_s=10.0, groups=groups)
    return SchedulerState(waiting, tuple(residents), catalog, capacity, policy)


def check(state: SchedulerState, actions: list[Action]) -> None:
    by_id = {r.instance_id: r for r in state.residents}
    live = {r.recipe_id for r in state.residents if r.state not in LEAVING}
    loads = Counter(a.recipe_id for a in actions if isinstance(a, Load))
    assert all(n == 1 for n in loads.values()), "one load per model"
    evicted = set()
    for a in actions:
        if isinstance(a, Evict):
            r = by_id[a.instance_id]
            entry = state.catalog.get(r.recipe_id)
            assert not r.pinned and not (entry and entry.pinned), "pinned evicted"
            assert r.state not in ARRIVING and r.state not in LEAVING, r.state
            assert a.drain or r.inflight == 0, "in-flight requests would be aborted"
            assert a.instance_id not in evicted
            evicted.add(a.instance_id)
        elif isinstance(a, Load):
            assert a.recipe_id not in live, "a running model loaded again"
            assert state.catalog[a.recipe_id].on_demand
            assert any(q.model == a.recipe_id for q in state.waiting)
        elif isinstance(a, Dispatch):
            ready = [r for r in state.residents if r.recipe_id == a.model and r.state == "ready"]
            assert ready and not {r.instance_id for r in ready} <= evicted

    # Groups: nothing that may not run beside a load is still running or loaded with it.
    running = [r.recipe_id for r in state.residents if r.state not in LEAVING] + list(loads)
    for m in loads:
        for other in running:
            assert other == m or not may_not_run_together(state.policy, m, other), (m, other)

    # Memory: on every GPU a load uses, what runs (leaving included) plus the loads fits.
    def on(gpus: tuple[int, ...], g: int) -> bool:
        return g in (gpus or tuple(state.capacity))

    for g, cap in state.capacity.items():
        if not any(on(state.catalog[m].gpus, g) for m in loads):
            continue
        used = sum(r.vram_gb for r in state.residents if on(r.gpus, g))
        used += sum(state.catalog[m].vram_gb for m in loads if on(state.catalog[m].gpus, g))
        assert used <= cap + 1e-6, (g, used, cap)


def may_not_run_together(policy: Policy, a: str, b: str) -> bool:
    """Same swap group; or different groups, one exclusive, the other not persistent."""
    ga = next((g for g in policy.groups if a in g.members), None)
    gb = next((g for g in policy.groups if b in g.members), None)
    if ga is not None and ga is gb:
        return ga.swap
    return any(
        x is not None and x.exclusive and not (y is not None and y.persistent)
        for x, y in ((ga, gb), (gb, ga))
    )


@settings(max_examples=300, deadline=None)
@given(states())
def test_plan_keeps_the_safety_rules(state: SchedulerState) -> None:
    check(state, plan(state, NOW))


@settings(max_examples=150, deadline=None)
@given(states())
def test_fifo_keeps_the_safety_rules(state: SchedulerState) -> None:
    check(state, fifo_plan(state, NOW))
    check(state, batched_fifo_plan(state, NOW))


@settings(max_examples=150, deadline=None)
@given(states())
def test_strict_fifo_sends_only_the_oldest_requests_of_one_model(state: SchedulerState) -> None:
    ordered = sorted(state.waiting, key=lambda q: (q.enqueued_at, q.request_id))
    sent = [rid for a in fifo_plan(state, NOW) if isinstance(a, Dispatch) for rid in a.request_ids]
    head = [q.request_id for q in ordered[: len(sent)]]
    assert sent == head and len({q.model for q in ordered[: len(sent)]}) <= 1
