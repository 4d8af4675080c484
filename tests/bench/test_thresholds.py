"""``--slo`` and ``--fail-if`` parsing: units, operators, and errors that name the expression."""

from __future__ import annotations

import pytest

from studioctl.bench import thresholds as T
from studioctl.errors import EXIT_USAGE, UsageError


def test_slo_units() -> None:
    assert T.parse_slo("ttft=500ms,tpot=50ms,e2e=2s") == {"ttft": 0.5, "tpot": 0.05, "e2e": 2.0}
    assert T.parse_slo(" e2el = 1.5 ") == {"e2e": 1.5}  # vLLM's spelling, bare seconds


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ttft", "NAME=VALUE"),
        ("ttfb=1s", "unknown SLO 'ttfb'"),
        ("ttft=fast", "not a number"),
        ("ttft=1s,ttft=2s", "given twice"),
        ("ttft=0ms", "above 0"),
        ("ttft=5min", "not a number"),
        ("", "no SLO given"),
    ],
)
def test_slo_errors_name_the_item(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as info:
        T.parse_slo(text)
    assert info.value.exit_code == EXIT_USAGE


def test_fail_if_forms() -> None:
    t = T.parse_fail_if("ttft_p95>500ms")
    assert (t.metric, t.op, t.value) == ("ttft_p95", ">", 0.5)
    t = T.parse_fail_if(" output_tps < 1000 ")
    assert (t.metric, t.op, t.value, t.expr) == ("output_tps", "<", 1000.0, "output_tps < 1000")
    assert T.parse_fail_if("e2e_p99>=2s").value == 2.0
    assert T.parse_fail_if("itl_mean<=0.25").value == 0.25  # a bare time is seconds
    assert T.parse_fail_if("requests_failed>0").value == 0.0


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("ttft_p95 500ms", "METRIC OP VALUE"),
        ("ttft_p95=>500ms", "METRIC OP VALUE"),
        ("ttft_p96>500ms", "unknown metric 'ttft_p96'"),
        ("output_tps<1000ms", "not a time"),
        ("ttft_p95>lots", "not a number"),
        ("ttft_p95>" + "9" * 300, "longer than"),
    ],
)
def test_fail_if_errors_name_the_expression(expr: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as info:
        T.parse_fail_if(expr)
    assert "--fail-if" in info.value.message


def test_did_you_mean_for_a_near_metric() -> None:
    with pytest.raises(UsageError, match="did you mean 'ttft_p95'"):
        T.parse_fail_if("tft_p95>1s")


def test_check_names_each_crossed_threshold() -> None:
    ts = T.parse_all(["ttft_p95>500ms", "output_tps<1000", "e2e_p50<=1s", "itl_p99>1s"])
    metrics = {"ttft_p95": 0.75, "output_tps": 1200.0, "e2e_p50": 1.0, "itl_p99": None}
    verdicts = T.check(ts, metrics)
    assert [v.crossed for v in verdicts] == [True, False, True, True]
    assert verdicts[0].describe() == "ttft_p95>500ms: ttft_p95 = 750.000ms"
    assert verdicts[3].describe() == "itl_p99>1s: itl_p99 was not measured"
    assert T.check([T.parse_fail_if("output_tps<1000")], {"output_tps": 999.5})[0].crossed
