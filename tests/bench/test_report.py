"""The report for people: the latency table, the summary lines, the live progress lines."""

from __future__ import annotations

import time
from array import array

from studioctl.bench import report
from studioctl.bench.loadgen import Progress, Workload
from studioctl.bench.metrics import RequestRecord, summarize
from studioctl.bench.runner import Inputs, Outcome


def doc() -> dict[str, object]:
    records = [
        RequestRecord(0.0, 0.5, 0.25, array("d", [0.125, 0.125]), 8, 3),
        RequestRecord(0.0, 0.1, error="http_503"),
    ]
    outcome = Outcome(records, 2.0, summarize(records, 2.0, {"ttft": 0.5}), 1)
    target = report.TargetInfo("url", "http://h:1", "m")
    return report.document(
        target,
        Workload(),
        Inputs(prompt_tokens=8, output_tokens=3),
        outcome,
        chat=True,
        slo={"ttft": 0.5},
        verdicts=[],
        started_at=1.0,
    )


def test_table_in_milliseconds() -> None:
    rows, headers = report.table(doc())
    assert headers == ["metric (ms)", "mean", "p50", "p90", "p95", "p99"]
    assert rows[0] == ["TTFT", "250.00", "250.00", "250.00", "250.00", "250.00"]
    assert rows[1][0] == "ITL" and rows[1][1] == "125.00"


def test_summary_lines() -> None:
    lines = report.summary_lines(doc())
    assert lines[1] == "requests: 1 ok, 1 failed (http_503 1)"
    assert lines[2] == "throughput: 0.50 req/s, 1.5 output tok/s, 5.5 total tok/s"
    assert lines[4] == "goodput: 0.50 req/s (ttft≤500ms)"


def test_progress_lines() -> None:
    p = Progress()
    p.warming = 3
    assert report.progress_lines(p) == ["warming up: 3 left"]
    p.warming, p.total, p.sent, p.ok, p.failed = 0, 10, 6, 4, 1
    p.t0 = time.perf_counter() - 1.0
    first, second = report.progress_lines(p)
    assert first == "requests 5/10  in flight 1  failed 1"
    assert second.endswith("output tok/s")


def test_docs_describe_every_field_of_the_document() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "bench.md").read_text()
    props = report.schema()["properties"]
    for name in props:
        assert f"`{name}" in text, name
    for group in ("target", "workload", "environment"):
        for name in props[group]["properties"]:
            assert f"`{group}.{name}`" in text, f"{group}.{name}"
    assert "`metrics.{ttft,itl,tpot,e2e}_{mean,std,p50,p90,p95,p99}`" in text
    for name in ("requests_ok", "prompt_tokens", "request_rps", "output_tps", "total_tps"):
        assert name in text
    assert "`metrics.goodput_rps`" in text
    for name in props["repeat"]["properties"]:
        assert f"`repeat.{name}" in text, name
