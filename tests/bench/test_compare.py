"""The math of repeated runs and of comparisons (pure functions, exact expected values)."""

from __future__ import annotations

import math

import pytest

from studioctl.bench import compare as cmp
from studioctl.bench.compare import Spread
from studioctl.bench.metrics import METRIC_NAMES


def test_spread_is_min_max_population_std_and_relative_range() -> None:
    s = cmp.spread([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert (s.mean, s.min, s.max, s.std) == (5.0, 2.0, 9.0, 2.0)
    assert s.relative == 7.0 / 5.0
    assert cmp.spread([3.0]).std == 0.0
    assert Spread(0.0, -1.0, 1.0, 1.0).relative is None
    assert Spread(-2.0, -3.0, -1.0, 1.0).relative == 1.0  # over |mean|
    with pytest.raises(ValueError):
        cmp.spread([])


def test_combine_totals_counts_averages_the_rest_and_keeps_their_spread() -> None:
    runs = [
        {"requests_ok": 10, "output_tokens": 40, "output_tps": 100.0, "ttft_p95": 0.2},
        {"requests_ok": 9, "output_tokens": 36, "output_tps": 120.0, "ttft_p95": 0.3},
        {"requests_ok": 10, "output_tokens": 40, "output_tps": 110.0, "ttft_p95": 0.1},
    ]
    figures, spreads = cmp.combine(runs)
    assert figures["requests_ok"] == 29 and figures["output_tokens"] == 116
    assert figures["output_tps"] == 110.0
    assert figures["ttft_p95"] == pytest.approx(0.2, abs=1e-15)
    assert set(spreads) == {"output_tps", "ttft_p95"}  # counts have none
    s = spreads["output_tps"]
    assert (s.min, s.max, s.std) == (100.0, 120.0, math.sqrt(200.0 / 3))
    assert list(figures) == list(runs[0])  # the first run's order


def test_combine_one_run_has_no_spread_and_a_missing_value_is_null() -> None:
    figures, spreads = cmp.combine([{"output_tps": 5.0, "ttft_mean": 0.5}])
    assert figures == {"output_tps": 5.0, "ttft_mean": 0.5} and spreads == {}
    figures, spreads = cmp.combine(
        [{"ttft_mean": 0.5, "requests_failed": 1}, {"ttft_mean": None, "requests_failed": None}]
    )
    assert figures == {"ttft_mean": None, "requests_failed": None} and spreads == {}


def test_directions_cover_throughputs_and_latencies_only() -> None:
    assert {n for n, d in cmp.DIRECTIONS.items() if d == "higher"} == {
        "request_rps",
        "output_tps",
        "total_tps",
        "goodput_rps",
    }
    lower = {n for n, d in cmp.DIRECTIONS.items() if d == "lower"}
    assert "ttft_p95" in lower and "e2e_mean" in lower and "itl_p99" in lower
    assert not any(n.endswith("_std") for n in cmp.DIRECTIONS)
    assert not set(cmp.DIRECTIONS) & cmp.COUNTS
    from studioctl.bench.lifecycle import METRICS

    lifecycle = {n for names in METRICS.values() for n in names}
    assert set(cmp.DIRECTIONS) <= set(METRIC_NAMES) | lifecycle


def test_relative_change() -> None:
    assert cmp.relative_change(100.0, 90.0) == -0.1
    assert cmp.relative_change(0.5, 0.75) == 0.5
    assert cmp.relative_change(-2.0, -1.0) == 0.5  # over |a|
    assert cmp.relative_change(0.0, 0.0) == 0.0
    assert cmp.relative_change(0.0, 1.0) is None


def sp(lo: float, hi: float) -> Spread:
    return Spread((lo + hi) / 2, lo, hi, (hi - lo) / 2)


@pytest.mark.parametrize(
    ("direction", "a", "b", "sa", "sb", "expected"),
    [
        # Beyond the spread: the ranges do not overlap.
        ("higher", 100.0, 130.0, sp(95, 105), sp(125, 135), cmp.IMPROVED),
        ("higher", 100.0, 70.0, sp(95, 105), sp(65, 75), cmp.REGRESSED),
        ("lower", 0.2, 0.1, sp(0.18, 0.22), sp(0.09, 0.11), cmp.IMPROVED),
        ("lower", 0.2, 0.3, sp(0.18, 0.22), sp(0.28, 0.32), cmp.REGRESSED),
        # Overlapping (touching counts as overlapping): not flagged, however large the means.
        ("higher", 100.0, 130.0, sp(80, 125), sp(125, 135), cmp.WITHIN),
        ("lower", 0.2, 0.3, sp(0.1, 0.5), sp(0.28, 0.32), cmp.WITHIN),
        # Either run without repeats: never flagged.
        ("higher", 100.0, 10.0, None, sp(5, 15), cmp.NO_SPREAD),
        ("lower", 0.1, 9.0, sp(0.05, 0.15), None, cmp.NO_SPREAD),
    ],
)
def test_verdicts(
    direction: cmp.Direction,
    a: float,
    b: float,
    sa: Spread | None,
    sb: Spread | None,
    expected: str,
) -> None:
    assert cmp.verdict(direction, a, b, sa, sb) == expected


def test_compare_two_runs() -> None:
    a = {"output_tps": 100.0, "ttft_p95": 0.2, "tpot_mean": None, "requests_ok": 10}
    b = {"output_tps": 80.0, "ttft_p95": 0.1, "tpot_mean": 0.01, "requests_ok": 10}
    sa = {"output_tps": sp(98, 102), "ttft_p95": sp(0.19, 0.21)}
    sb = {"output_tps": sp(79, 81), "ttft_p95": sp(0.09, 0.2)}
    changes = {c.metric: c for c in cmp.compare(a, sa, b, sb)}
    assert set(changes) == {"output_tps", "ttft_p95", "tpot_mean"}  # counts not judged
    out = changes["output_tps"]
    assert (out.direction, out.a, out.b, out.change, out.verdict) == (
        "higher",
        100.0,
        80.0,
        -0.2,
        cmp.REGRESSED,
    )
    ttft = changes["ttft_p95"]
    assert (ttft.change, ttft.verdict) == (-0.5, cmp.WITHIN)  # 0.19..0.21 meets 0.09..0.2
    tpot = changes["tpot_mean"]
    assert (tpot.a, tpot.b, tpot.change, tpot.verdict) == (None, 0.01, None, cmp.NOT_MEASURED)
    assert out.to_dict() == {
        "metric": "output_tps",
        "direction": "higher",
        "a": 100.0,
        "b": 80.0,
        "change": -0.2,
        "verdict": "regressed",
    }
    # Without spreads the same changes are shown, unflagged.
    plain = {c.metric: c for c in cmp.compare(a, {}, b, {})}
    assert plain["output_tps"].change == -0.2
    assert plain["output_tps"].verdict == plain["ttft_p95"].verdict == cmp.NO_SPREAD


def test_every_lifecycle_metric_has_a_direction() -> None:
    from studioctl.bench.compare import DIRECTIONS
    from studioctl.bench.lifecycle import METRICS

    names = {name for kind in METRICS.values() for name in kind}
    assert {DIRECTIONS.get(n) for n in names} == {"lower"}
