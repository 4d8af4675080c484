"""Recorded traces replayed through the swap simulation (benchmarks/swap_sim.py): the
scheduler against FIFO swapping (strict, and collating) on a host where one model fits at a
time."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from benchmarks.swap_sim import (
    SimConfig,
    closed_loop,
    main,
    mixed_trace,
    recorded_trace,
    simulate,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from studioctl.scheduler import Policy, batched_fifo_plan, fifo_plan, plan

L, S, STOP = 4.0, 1.0, 0.5
CFG = SimConfig(
    load_s=L, service_s=S, stop_s=STOP, policy=Policy(max_wait_s=40.0, min_resident_s=5.0)
)
TURN = L + S + STOP  # one swap: the old engine drains and stops, the new one loads


@pytest.mark.parametrize(
    "trace",
    [recorded_trace(40, 0.5), recorded_trace(40, 1.0), mixed_trace(400, seed=7)],
    ids=["ABAACABC-every-0.5s", "ABAACABC-every-1s", "mixed-seed-7"],
)
def test_scheduler_swaps_three_times_less_than_fifo_and_serves_everyone(
    trace: list[tuple[float, str]],
) -> None:
    ours = simulate(trace, plan, CFG)
    assert ours.unserved == 0 and len(ours.waits) == len(trace)
    for baseline in (fifo_plan, batched_fifo_plan):
        fifo = simulate(trace, baseline, CFG)
        assert fifo.unserved == 0 and len(fifo.waits) == len(trace)
        assert ours.swaps > 0 and ours.swaps * 3 <= fifo.swaps, (ours.swaps, fifo.swaps)
    # Its own swap, and the drain and stop of the model starving with it whose turn came
    # first (the scheduler knows loads, not drains).
    assert max(ours.waits) <= CFG.policy.max_wait_s + TURN + S + STOP, max(ours.waits)


def test_without_load_estimates_the_bound_grows_by_one_turn_per_model_starving_with_it() -> None:
    # Loads of unknown length (Loadable.load_s = 0): three models on one slot, when two starve
    # together the second waits for the first one's turn too.
    cfg = replace(CFG, known_load=False)
    trace = recorded_trace(40, 0.5)
    ours, fifo = simulate(trace, plan, cfg), simulate(trace, batched_fifo_plan, cfg)
    assert ours.unserved == 0 and ours.swaps * 3 <= fifo.swaps
    assert max(ours.waits) <= cfg.policy.max_wait_s + 2 * TURN, max(ours.waits)


def test_two_models_wait_at_most_max_wait_plus_one_swap() -> None:
    trace = [(i * 0.5, "AB"[(i // 3) % 2 if i % 7 else 1]) for i in range(400)]
    ours, fifo = simulate(trace, plan, CFG), simulate(trace, batched_fifo_plan, CFG)
    assert ours.unserved == 0 and len(ours.waits) == len(trace)
    assert max(ours.waits) <= CFG.policy.max_wait_s + TURN, max(ours.waits)
    assert ours.swaps * 3 <= fifo.swaps, (ours.swaps, fifo.swaps)


def test_a_model_asked_for_rarely_is_not_starved() -> None:
    # A is asked for twice a second; B once, at 30 s. B is served within its bound.
    trace = sorted([(i * 0.5, "A") for i in range(240)] + [(30.0, "B")])
    ours = simulate(trace, plan, CFG)
    assert ours.unserved == 0
    b_wait = ours.waits_by_model["B"]
    assert len(b_wait) == 1 and b_wait[0] <= CFG.policy.max_wait_s + TURN
    assert ours.swaps == 2  # A -> B, then B -> A: no more


def test_the_same_trace_gives_the_same_result() -> None:
    trace = mixed_trace(200, seed=3)
    first, second = simulate(trace, plan, CFG), simulate(trace, plan, CFG)
    assert (first.swaps, first.waits) == (second.swaps, second.waits)


@pytest.mark.parametrize("clients", [[], ["--clients", "8"]], ids=["open", "closed-loop"])
def test_the_benchmark_prints_the_three_policies_side_by_side(
    clients: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--requests", "80", "--seed", "1", *clients])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"scheduler", "fifo", "fifo-batched"}
    assert all(row[-1] == "0" for row in rows.values())  # nothing left unserved
    swaps = {name: int(row[0]) for name, row in rows.items()}
    # Fewer swaps than either FIFO; strict FIFO never collates, so it swaps the most.
    assert swaps["scheduler"] < swaps["fifo-batched"] <= swaps["fifo"], swaps


def test_strict_fifo_swaps_at_every_change_of_model_in_arrival_order() -> None:
    # Requests far enough apart that each is answered before the next: strict and
    # collating FIFO agree, one swap per change of model (the first load is no swap).
    trace = recorded_trace(5, 20.0)
    changes = sum(a != b for (_, a), (_, b) in itertools.pairwise(trace))
    for baseline in (fifo_plan, batched_fifo_plan):
        assert simulate(trace, baseline, CFG).swaps == changes
    # Requests that arrive together: strict FIFO still swaps at every change (A A B A: 2),
    # the collating one sends both As first (1).
    burst = [(0.0, "A"), (0.1, "A"), (0.2, "B"), (0.3, "A")]
    assert simulate(burst, fifo_plan, CFG).swaps == 2
    assert simulate(burst, batched_fifo_plan, CFG).swaps == 1
    strict = simulate(burst, fifo_plan, CFG)
    # In arrival order: the last A waits for B's load and then its own again.
    assert strict.waits_by_model["A"][-1] >= 2 * L, strict.waits_by_model


def test_closed_loop_clients_send_after_each_answer() -> None:
    clients = closed_loop(4, 40, gap_s=0.5, think_s=2.0)
    assert [len(s) for s in clients.scripts] == [10] * 4
    assert [s[0] for s in clients.scripts] == ["A", "B", "A", "A"]  # each from its offset
    for planner in (plan, fifo_plan, batched_fifo_plan):
        result = simulate([], planner, CFG, clients)
        assert result.unserved == 0 and len(result.latencies) == 40
    # One client alone never has two requests out: each FIFO swaps at every change of model
    # in its script (A B A A C A B C: 6); the first request waits a load, each swap's first
    # one the old engine's stop too, and the A after A waits nothing.
    (script,) = closed_loop(1, 8, think_s=2.0).scripts
    changes = sum(a != b for a, b in itertools.pairwise(script))
    for baseline in (fifo_plan, batched_fifo_plan):
        result = simulate([], baseline, CFG, closed_loop(1, 8, think_s=2.0))
        assert (result.swaps, result.loads, result.unserved) == (changes, changes + 1, 0)
        assert sorted(result.waits) == [0.0] + [L] + [L + STOP] * changes


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 60), st.sampled_from("ABCD")), min_size=1, max_size=40),
    st.sampled_from([8.0, 5.0, 3.0]),  # one, two or three models fit
    st.sampled_from([0.0, 2.0, 10.0]),
)
def test_every_trace_is_served_to_the_end(
    trace: list[tuple[float, str]], model_gb: float, min_resident_s: float
) -> None:
    policy = Policy(max_wait_s=10.0, min_resident_s=min_resident_s)
    cfg = SimConfig(load_s=L, service_s=S, stop_s=STOP, model_gb=model_gb, policy=policy)
    for planner in (plan, fifo_plan, batched_fifo_plan):
        result = simulate(sorted(trace), planner, cfg)
        assert result.unserved == 0 and len(result.waits) == len(trace)
    ours = simulate(sorted(trace), plan, cfg)
    # Turns with known load times: a request waits max_wait_s, or for the turns of the other
    # models ahead of it when more arrive at once than max_wait_s has room for, plus a swap.
    others = len({m for _, m in trace}) - 1
    bound = max(policy.max_wait_s, others * TURN) + TURN
    assert max(ours.waits) <= bound + 1e-9, (max(ours.waits), bound)
