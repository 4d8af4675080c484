"""The scheduler's rules, one situation per test: state and clock in, actions out."""

from __future__ import annotations

import pytest

from studioctl.scheduler import (
    Dispatch,
    Evict,
    Group,
    Load,
    Loadable,
    Policy,
    Queued,
    Resident,
    SchedulerState,
    Wait,
    batched_fifo_plan,
    fifo_plan,
    plan,
)

POLICY = Policy(max_wait_s=30.0, min_resident_s=10.0)
NOW = 1000.0


def q(model: str, at: float = NOW - 1, rid: str | None = None) -> Queued:
    return Queued(rid or f"{model}-{at}", model, "t1", at)


def ready(
    iid: str, model: str, gb: float = 8.0, gpus: tuple[int, ...] = (), **kw: object
) -> Resident:
    fields: dict[str, object] = {"ready_at": NOW - 100, "last_used": NOW - 50} | kw
    return Resident(iid, model, "ready", gpus, gb, **fields)  # type: ignore[arg-type]


def state(
    waiting: list[Queued],
    residents: list[Resident] = (),  # type: ignore[assignment]
    catalog: list[Loadable] | None = None,
    capacity: dict[int, float] | None = None,
    policy: Policy = POLICY,
) -> SchedulerState:
    cat = catalog if catalog is not None else [Loadable(m, 8.0) for m in "ABC"]
    return SchedulerState(
        tuple(waiting),
        tuple(residents),
        {c.recipe_id: c for c in cat},
        capacity if capacity is not None else {0: 10.0},
        policy,
    )


def kinds(actions: list[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_fifty_waiting_requests_make_one_load_then_one_wait_then_one_dispatch() -> None:
    waiting = [q("A", NOW - i / 10, rid=f"r{i}") for i in range(50)]
    (load,) = plan(state(waiting), NOW)
    assert isinstance(load, Load) and load.recipe_id == "A" and load.gpus == (0,)
    starting = Resident("i1", "A", "starting", (), 8.0)
    assert kinds(plan(state(waiting, [starting]), NOW)) == ["Wait"]
    loading = Resident("i1", "A", "loading", (), 8.0)
    assert kinds(plan(state(waiting, [loading]), NOW)) == ["Wait"]
    (go,) = plan(state(waiting, [ready("i1", "A")]), NOW)
    assert isinstance(go, Dispatch) and sorted(go.request_ids) == sorted(f"r{i}" for i in range(50))


@pytest.mark.parametrize(
    ("capacity", "residents", "need", "gpus", "fits"),
    [
        ({0: 24.0}, [], 24.0, (), True),  # exactly full fits
        ({0: 24.0}, [], 24.5, (), False),  # bigger than the GPU: never
        ({0: 24.0, 1: 24.0}, [("X", 20.0, (0,))], 10.0, (1,), True),  # other GPU is free
        ({0: 24.0, 1: 24.0}, [("X", 20.0, (0,))], 10.0, (0,), False),
        ({0: 24.0, 1: 24.0}, [("X", 20.0, (0,))], 10.0, (), False),  # () = every GPU
        ({0: 24.0, 1: 24.0}, [("X", 10.0, ())], 10.0, (1,), True),  # X holds 10 on each
        ({0: 24.0, 1: 24.0}, [("X", 10.0, ())], 15.0, (1,), False),
        ({0: 64.0}, [("X", 30.0, ()), ("Y", 20.0, ())], 14.0, (), True),  # no-GPU host
        ({0: 64.0}, [("X", 30.0, ()), ("Y", 20.0, ())], 14.5, (), False),
        ({0: 24.0}, [], 4.0, (3,), False),  # a GPU the host does not have
    ],
)
def test_fit_by_memory_per_gpu(
    capacity: dict[int, float],
    residents: list[tuple[str, float, tuple[int, ...]]],
    need: float,
    gpus: tuple[int, ...],
    fits: bool,
) -> None:
    # Residents are pinned so that "does not fit" cannot turn into an eviction.
    res = [ready(f"i{m}", m, gb, g, pinned=True) for m, gb, g in residents]
    catalog = [Loadable("N", need, gpus)]
    actions = plan(state([q("N")], res, catalog, capacity), NOW)
    assert kinds(actions) == (["Load"] if fits else ["Wait"])
    if fits:
        assert actions[0].gpus == (gpus or tuple(sorted(capacity)))  # type: ignore[union-attr]


def test_evicts_idle_least_recently_used_first_and_only_as_many_as_needed() -> None:
    residents = [
        ready("iA", "A", 4.0, last_used=NOW - 60),
        ready("iB", "B", 4.0, last_used=NOW - 300),  # least recently used
        ready("iC", "C", 4.0, last_used=NOW - 120, inflight=1),  # busy: last resort
    ]
    catalog = [Loadable(m, 4.0) for m in "ABC"] + [Loadable("N", 8.0)]
    actions = plan(state([q("N")], residents, catalog, {0: 16.0}), NOW)
    assert kinds(actions) == ["Evict", "Wait"]
    evict = actions[0]
    assert isinstance(evict, Evict)
    assert (evict.instance_id, evict.for_recipe, evict.drain) == ("iB", "N", False)
    # Once iB is stopping, nothing more is evicted and the load waits for its memory.
    leaving = [residents[0], Resident("iB", "B", "stopping", (), 4.0), residents[2]]
    assert kinds(plan(state([q("N")], leaving, catalog, {0: 16.0}), NOW)) == ["Wait"]
    gone = [residents[0], residents[2]]
    assert kinds(plan(state([q("N")], gone, catalog, {0: 16.0}), NOW)) == ["Load"]


def test_pinned_is_never_evicted_even_for_a_starved_model() -> None:
    old = q("B", NOW - 1000)
    for pinned_resident, catalog in [
        (ready("iA", "A", pinned=True), None),
        (ready("iA", "A"), [Loadable("A", 8.0, pinned=True), Loadable("B", 8.0)]),
    ]:
        for planner in (plan, fifo_plan):
            actions = planner(state([old], [pinned_resident], catalog), NOW)
            assert kinds(actions) == ["Wait"], actions


def test_busy_instance_stays_until_the_newcomer_starves_then_drains() -> None:
    busy = ready("iA", "A", inflight=3)
    (wait,) = plan(state([q("B", NOW - 5)], [busy]), NOW)
    assert isinstance(wait, Wait) and wait.until == NOW - 5 + POLICY.max_wait_s
    actions = plan(state([q("B", NOW - 31)], [busy]), NOW)
    assert kinds(actions) == ["Evict", "Wait"]
    evict = actions[0]
    assert isinstance(evict, Evict) and evict.drain and "max_wait_s" in evict.reason


def test_expected_load_times_start_each_turn_early() -> None:
    # B (oldest) and C both need the slot A holds; each load takes 6 s. C's turn, second,
    # must start 6 s (B's load) before its max_wait_s; B's comes no later than C's.
    busy = ready("iA", "A", inflight=1)
    catalog = [Loadable(m, 8.0, load_s=6.0) for m in "ABC"]
    waiting = [q("B", NOW - 20), q("C", NOW - 19)]
    c_turn = NOW - 19 + 30 - 6
    b_wait, c_wait = plan(state(waiting, [busy], catalog), c_turn - 3)
    assert b_wait == Wait("B", b_wait.reason, until=c_turn)  # type: ignore[union-attr]
    assert c_wait == Wait("C", c_wait.reason, until=c_turn)  # type: ignore[union-attr]
    actions = plan(state(waiting, [busy], catalog), c_turn)
    assert kinds(actions) == ["Evict", "Wait", "Wait"] and actions[0].for_recipe == "B"  # type: ignore[union-attr]
    # Without estimates, the turn is at max_wait_s.
    plain = [Loadable(m, 8.0) for m in "ABC"]
    assert kinds(plan(state(waiting, [busy], plain), c_turn)) == ["Wait", "Wait"]


def test_dispatched_instance_evicted_in_the_same_plan_drains() -> None:
    # A has a queue and is dispatched to; B, starved, takes its slot in the same plan.
    waiting = [q("B", NOW - 40), q("A", NOW - 1, "a1")]
    actions = plan(state(waiting, [ready("iA", "A", inflight=0)]), NOW)
    assert kinds(actions) == ["Evict", "Wait", "Wait"]
    evict = actions[0]
    assert isinstance(evict, Evict) and evict.drain is False  # nothing was sent to it yet
    # The other order: A dispatched first, then evicted by a starved B: a drain, not a stop.
    waiting = [q("A", NOW - 41, "a1"), q("B", NOW - 40)]
    actions = plan(state(waiting, [ready("iA", "A")]), NOW)
    assert kinds(actions) == ["Dispatch", "Evict", "Wait"]
    assert actions[1].drain is True  # type: ignore[union-attr]


def test_resident_model_with_queued_requests_is_served_first() -> None:
    # A is ready and has its own queue: dispatch A, B waits (collate A A A before B).
    waiting = [q("B", NOW - 10), q("A", NOW - 2, "a1"), q("A", NOW - 1, "a2")]
    actions = plan(state(waiting, [ready("iA", "A")]), NOW)
    assert kinds(actions) == ["Wait", "Dispatch"]
    assert actions[1] == Dispatch("A", ("a1", "a2"), "iA is ready")


@pytest.mark.parametrize(
    ("ready_ago", "used_ago", "waited", "evicted", "until"),
    [
        (3.0, None, 5.0, False, NOW + 7),  # fresh: stays min_resident_s after ready
        (3.0, None, 31.0, True, None),  # ... unless the newcomer waited max_wait_s
        (100.0, 4.0, 5.0, False, NOW + 6),  # used 4 s ago: warm, stays
        (100.0, 20.0, 5.0, True, None),  # cold and idle: goes at once
        (100.0, None, 5.0, True, None),
    ],
)
def test_min_resident_and_max_wait(
    ready_ago: float, used_ago: float | None, waited: float, evicted: bool, until: float | None
) -> None:
    used = None if used_ago is None else NOW - used_ago
    res = ready("iA", "A", ready_at=NOW - ready_ago, last_used=used)
    actions = plan(state([q("B", NOW - waited)], [res]), NOW)
    if evicted:
        assert kinds(actions) == ["Evict", "Wait"]
    else:
        assert actions == [Wait("B", actions[0].reason, until=until)]  # type: ignore[union-attr]


def test_a_loading_instance_is_never_evicted() -> None:
    loading = Resident("iA", "A", "loading", (), 8.0)
    for planner in (plan, fifo_plan):
        assert kinds(planner(state([q("B", NOW - 1000)], [loading]), NOW)) == ["Wait"]


def test_unknown_and_not_on_demand_models_wait_with_a_reason() -> None:
    catalog = [Loadable("A", 8.0, on_demand=False)]
    actions = plan(state([q("A"), q("Z", NOW - 2)], [], catalog), NOW)
    assert kinds(actions) == ["Wait", "Wait"]
    assert "not a recipe" in actions[0].reason and "on demand" in actions[1].reason  # type: ignore[union-attr]


def test_two_models_that_fit_together_load_in_one_plan() -> None:
    catalog = [Loadable("A", 4.0), Loadable("B", 4.0), Loadable("C", 4.0)]
    actions = plan(state([q("A", NOW - 3), q("B", NOW - 2), q("C", NOW - 1)], [], catalog), NOW)
    # 10 GB: A and B fit, C does not and has nothing it may evict yet.
    assert kinds(actions) == ["Load", "Load", "Wait"]


GROUPS = (
    Group("solo", frozenset({"A", "B"}), swap=True, exclusive=True),
    Group("pair", frozenset({"C", "D"}), swap=False, exclusive=False),
    Group("keep", frozenset({"E"}), swap=False, exclusive=False, persistent=True),
    Group("vip", frozenset({"G"}), exclusive=True, persistent=True),
)


@pytest.mark.parametrize(
    ("running", "wanted", "evicted"),
    [
        (["A"], "B", ["A"]),  # same swap group: one at a time
        (["C"], "D", []),  # swap: false: members run together
        (["C", "D"], "A", ["C", "D"]),  # exclusive: every other group leaves
        (["F"], "A", ["F"]),  # ... ungrouped models too
        (["E"], "A", []),  # ... but not a persistent group
        (["A"], "C", ["A"]),  # exclusive holds both ways (llama-swap: one way only)
        (["A"], "F", ["A"]),  # ... for ungrouped models too
        (["C"], "F", []),  # no exclusive group involved: only memory decides
        (["E"], "F", []),
        (["G"], "F", None),  # persistent and exclusive: nothing runs beside it, it stays
        (["G"], "A", None),  # ... not even another exclusive group's
        (["G", "E"], "E", []),  # (already running: nothing to do)
    ],
)
def test_groups(running: list[str], wanted: str, evicted: list[str] | None) -> None:
    catalog = [Loadable(m, 1.0) for m in "ABCDEFG"]
    residents = [ready(f"i{m}", m, 1.0) for m in running]
    policy = Policy(max_wait_s=30.0, min_resident_s=10.0, groups=GROUPS)
    actions = plan(state([q(wanted)], residents, catalog, {0: 80.0}, policy), NOW)
    gone = sorted(a.instance_id for a in actions if isinstance(a, Evict))
    assert gone == [f"i{m}" for m in evicted or []]
    if wanted in running:
        assert kinds(actions) == ["Dispatch"]
    elif evicted is None:
        assert kinds(actions) == ["Wait"] and "persistent" in actions[0].reason  # type: ignore[union-attr]
    else:
        assert kinds(actions)[-1] == ("Wait" if evicted else "Load")


def test_group_conflict_with_a_pinned_member_blocks_the_load() -> None:
    policy = Policy(groups=GROUPS)
    catalog = [Loadable(m, 1.0) for m in "AB"]
    residents = [ready("iA", "A", 1.0, pinned=True)]
    (wait,) = plan(state([q("B", NOW - 999)], residents, catalog, {0: 80.0}, policy), NOW)
    assert isinstance(wait, Wait) and "pinned" in wait.reason


def test_fifo_swaps_at_once_where_the_scheduler_waits() -> None:
    s = state([q("B", NOW - 1)], [ready("iA", "A", inflight=2, ready_at=NOW - 1)])
    assert kinds(plan(s, NOW)) == ["Wait"]
    actions = fifo_plan(s, NOW)
    assert kinds(actions) == ["Evict", "Wait"] and actions[0].drain  # type: ignore[union-attr]


def test_strict_fifo_serves_the_head_run_only() -> None:
    # A A B A with A ready: the two oldest As go; the last A waits behind B like B does.
    waiting = [q("A", NOW - 4, "a1"), q("A", NOW - 3, "a2"), q("B", NOW - 2, "b1")]
    waiting.append(q("A", NOW - 1, "a3"))
    actions = fifo_plan(state(waiting, [ready("iA", "A")]), NOW)
    assert actions == [Dispatch("A", ("a1", "a2"), "iA is ready"), Wait("B", "behind the head")]
    # The collating FIFO sends every A at once, and evicts A for B in the same plan (a
    # drain: the As it just sent finish first).
    go, evict, wait = batched_fifo_plan(state(waiting, [ready("iA", "A")]), NOW)
    assert isinstance(go, Dispatch) and go.request_ids == ("a1", "a2", "a3")
    assert isinstance(evict, Evict) and evict.drain and evict.for_recipe == "B"
    assert isinstance(wait, Wait) and wait.model == "B"
    assert fifo_plan(state([]), NOW) == []


def test_strict_fifo_a_b_a_swaps_at_each_change_of_model() -> None:
    """A B A where one model fits: A first, then B loads with A evicted, then A again."""
    a1, b1, a2 = q("A", NOW - 3, "a1"), q("B", NOW - 2, "b1"), q("A", NOW - 1, "a2")
    # A is ready: only a1 goes (a2 is behind b1).
    actions = fifo_plan(state([a1, b1, a2], [ready("iA", "A")]), NOW)
    assert kinds(actions) == ["Dispatch", "Wait"] and actions[0].request_ids == ("a1",)  # type: ignore[union-attr]
    # a1 is in flight: B is the head and A leaves for it at once, as a drain.
    busy = ready("iA", "A", inflight=1, ready_at=NOW - 1)
    actions = fifo_plan(state([b1, a2], [busy]), NOW)
    assert kinds(actions) == ["Evict", "Wait", "Wait"]
    evict = actions[0]
    assert isinstance(evict, Evict) and (evict.instance_id, evict.for_recipe) == ("iA", "B")
    assert evict.drain and actions[2] == Wait("A", "behind the head")
    # A is stopping: B waits for its memory; once it is gone B loads.
    stopping = Resident("iA", "A", "stopping", (), 8.0)
    assert kinds(fifo_plan(state([b1, a2], [stopping]), NOW)) == ["Wait", "Wait"]
    load, wait = fifo_plan(state([b1, a2], []), NOW)
    assert isinstance(load, Load) and load.recipe_id == "B" and wait == Wait("A", "behind the head")
    # B is ready: b1 goes, then A is the head again and B leaves for it.
    actions = fifo_plan(state([b1, a2], [ready("iB", "B")]), NOW)
    assert kinds(actions) == ["Dispatch", "Wait"]
    actions = fifo_plan(state([a2], [ready("iB", "B", inflight=1)]), NOW)
    assert kinds(actions) == ["Evict", "Wait"] and actions[0].for_recipe == "A"  # type: ignore[union-attr]
    # Two swaps for three requests: one per change of model in the order.
    (load,) = fifo_plan(state([a2], []), NOW)
    assert isinstance(load, Load) and load.recipe_id == "A"


def test_strict_fifo_head_waits_for_its_own_model_and_blocks_the_rest() -> None:
    loading = Resident("iA", "A", "loading", (), 8.0)
    other = ready("iB", "B", 1.0)
    actions = fifo_plan(state([q("A", NOW - 2), q("B", NOW - 1)], [loading, other]), NOW)
    # B is ready, but its request is younger than the head's: it waits its turn.
    assert [(type(a).__name__, a.model) for a in actions] == [("Wait", "A"), ("Wait", "B")]  # type: ignore[union-attr]
    assert actions[1] == Wait("B", "behind the head")


def test_an_idle_model_is_held_no_longer_than_its_own_load_takes() -> None:
    # A was used 4 s ago and is idle; B waits. A loads in 3 s: holding it for the whole
    # min_resident_s (10 s) would cost B more than reloading A would, so A leaves now.
    idle = ready("iA", "A", last_used=NOW - 4, ready_at=NOW - 20)
    fast = [Loadable("A", 8.0, load_s=3.0), Loadable("B", 8.0, load_s=3.0)]
    actions = plan(state([q("B", NOW - 1)], [idle], fast), NOW)
    assert kinds(actions) == ["Evict", "Wait"] and actions[0].drain is False  # type: ignore[union-attr]
    # A slow load (60 s), or one not known yet: min_resident_s holds it until 10 s after use.
    for catalog in ([Loadable("A", 8.0, load_s=60.0), Loadable("B", 8.0)], None):
        (wait,) = plan(state([q("B", NOW - 1)], [idle], catalog), NOW)
        assert isinstance(wait, Wait) and wait.until == NOW - 4 + POLICY.min_resident_s
        assert "min_resident_s" in wait.reason
