"""The metric math on synthetic timelines: exact expected values (binary fractions, so float
arithmetic is exact), and the percentile against numpy's own when numpy is installed."""

from __future__ import annotations

import random
from array import array

import pytest

from studioctl.bench import metrics as M
from studioctl.bench.metrics import RequestRecord


def streamed(
    start: float, first: float, gaps: list[float], out: int, prompt: int = 10
) -> RequestRecord:
    end = first + sum(gaps)
    return RequestRecord(
        start=start,
        end=end,
        first_token=first,
        gaps=array("d", gaps),
        prompt_tokens=prompt,
        output_tokens=out,
    )


def test_one_request_ttft_tpot_e2e_itl() -> None:
    r = streamed(10.0, 10.25, [0.125, 0.125, 0.25], out=4)
    assert r.ttft == 0.25
    assert r.e2e == 0.75
    assert r.tpot == (0.75 - 0.25) / 3
    assert list(r.gaps) == [0.125, 0.125, 0.25]


def test_tpot_needs_two_tokens_and_a_stream() -> None:
    assert streamed(0.0, 0.5, [], out=1).tpot is None
    unstreamed = RequestRecord(start=0.0, end=1.0, prompt_tokens=3, output_tokens=5)
    assert unstreamed.ttft is None and unstreamed.tpot is None and unstreamed.e2e == 1.0


def test_percentile_is_numpy_linear() -> None:
    data = [1.0, 2.0, 3.0, 4.0]
    # virtual index (n-1)*q: p50 → 1.5 → 2.5; p90 → 2.7 → 3.7; p99 → 2.97 → 3.97
    assert M.percentile(data, 50) == 2.5
    assert M.percentile(data, 0) == 1.0 and M.percentile(data, 100) == 4.0
    assert M.percentile(data, 25) == 1.75
    assert M.percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        M.percentile([], 50)


def test_percentile_agrees_with_numpy_bit_for_bit() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101, 1000):
        data = sorted(rng.expovariate(3.0) for _ in range(n))
        for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
            assert M.percentile(data, q) == float(np.percentile(data, q)), (n, q)


def test_summary_exact() -> None:
    records = [
        streamed(0.0, 0.25, [0.125, 0.125], out=3, prompt=8),  # e2e 0.5, tpot 0.125
        streamed(0.5, 1.0, [0.25, 0.25, 0.5], out=4, prompt=8),  # e2e 1.5, tpot 1/3
        RequestRecord(start=1.0, end=1.5, error="http_503"),
        RequestRecord(start=1.0, end=2.0, error="timeout"),
        RequestRecord(start=1.0, end=2.0, error="http_503"),
    ]
    s = M.summarize(records, duration_s=2.0)
    assert (s.requests_ok, s.requests_failed) == (2, 3)
    assert s.errors == {"http_503": 2, "timeout": 1}
    assert (s.prompt_tokens, s.output_tokens) == (16, 7)
    assert s.request_rps == 1.0
    assert s.output_tps == 3.5
    assert s.total_tps == 11.5
    assert s.goodput_rps is None
    ttft = s.distributions["ttft"]
    assert ttft.count == 2 and ttft.mean == 0.375 and ttft.std == 0.125
    assert ttft.percentiles[50] == 0.375
    itl = s.distributions["itl"]
    assert itl.count == 5  # every gap of every successful request, pooled
    assert itl.mean == (0.125 * 2 + 0.25 * 2 + 0.5) / 5
    assert itl.percentiles[50] == 0.25
    assert itl.percentiles[99] == 0.25 + (0.5 - 0.25) * 0.96
    e2e = s.distributions["e2e"]
    assert (e2e.mean, e2e.percentiles[50]) == (1.0, 1.0)
    tpot = s.distributions["tpot"]
    assert tpot.mean == (0.125 + 1 / 3) / 2


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = [
        streamed(0.0, 0.25, [0.125, 0.125], out=3),  # ttft .25 tpot .125 e2e .5
        streamed(0.0, 0.5, [0.5], out=2),  # ttft .5 tpot .5 e2e 1
        streamed(0.0, 0.125, [], out=1),  # ttft .125, tpot counts 0, e2e .125
        RequestRecord(start=0.0, end=0.1, error="connect"),  # failures are never good
    ]
    assert M.summarize(records, 4.0, {"ttft": 0.5}).goodput_rps == 0.75
    assert M.summarize(records, 4.0, {"ttft": 0.25}).goodput_rps == 0.5
    assert M.summarize(records, 4.0, {"tpot": 0.125}).goodput_rps == 0.5
    assert M.summarize(records, 4.0, {"ttft": 0.5, "e2e": 0.5}).goodput_rps == 0.5
    assert M.summarize(records, 4.0, {"e2e": 0.1}).goodput_rps == 0.0


def test_empty_run_has_no_distributions() -> None:
    s = M.summarize([RequestRecord(start=0, end=1, error="connect")], 1.0)
    assert s.requests_ok == 0 and s.request_rps == 0.0
    assert s.distributions["ttft"].mean is None
    assert s.distributions["ttft"].percentiles[95] is None
    flat = M.flat(s)
    assert flat["ttft_p95"] is None and flat["requests_failed"] == 1


def test_flat_names_are_the_metric_names() -> None:
    s = M.summarize([streamed(0.0, 0.25, [0.25], out=2)], 1.0, {"ttft": 1.0})
    flat = M.flat(s)
    assert set(flat) == set(M.METRIC_NAMES)
    assert flat["ttft_p95"] == 0.25 and flat["goodput_rps"] == 1.0
    assert flat["itl_p50"] == 0.25 and flat["tpot_mean"] == 0.25
