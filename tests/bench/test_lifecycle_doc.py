"""The lifecycle document's pure parts: the stages of a cold start from the daemon's
figures, the mean and spread over runs, the schema's lifecycle variant (a serving document
still validates, a lifecycle one that mixes in serving fields does not), every field named
in docs/bench.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from studioctl.bench import lifecycle, report
from studioctl.bench.evict_time import Evict
from studioctl.bench.thresholds import check, parse_all


def test_stages_follow_each_other_and_add_up_to_the_first_token() -> None:
    info = {"started_at": 100.5, "stages": {"started": 0.0, "weights": 2.0, "ready": 3.25}}
    stages = lifecycle.stages_of(100.0, info, {"weights": "loading weights"}, 104.0)
    assert [(s.name, s.label, s.start_s, s.duration_s) for s in stages] == [
        ("spawn", "locks, placement, spawn", 0.0, 0.5),
        ("weights", "loading weights", 0.5, 2.0),
        ("ready", "ready", 2.5, 1.25),
        ("first_token", "ready → first token", 3.75, 0.25),
    ]
    assert sum(s.duration_s for s in stages) == 4.0


def evict_run(s: float, gone: float | None) -> Evict:
    return Evict("t", "t", "t-1", False, s, gone, 2, None, "no GPU", {"seconds": s})


def test_mean_and_spread_over_runs_and_thresholds_on_the_mean() -> None:
    runs = [evict_run(1.0, 0.5), evict_run(3.0, None)]
    means, spread = lifecycle.summary("evict", runs)
    assert means == {"evict_s": 2.0, "processes_gone_s": 0.5, "vram_free_s": None}
    assert spread["evict_s"] == {"min": 1.0, "max": 3.0, "std": 1.0}
    assert spread["vram_free_s"] is None
    names = lifecycle.METRICS["evict"]
    verdicts = check(parse_all(["evict_s>1500ms", "vram_free_s>1s"], names, names), means)
    assert [(v.measured, v.crossed) for v in verdicts] == [(2.0, True), (None, True)]
    doc = lifecycle.document(
        "evict",
        ["t"],
        runs,
        through_gateway=False,
        verdicts=verdicts,
        started_at=1.0,
        duration_s=5.0,
    )
    jsonschema.Draft202012Validator(report.schema()).validate(doc)
    assert doc["passed"] is False and doc["lifecycle"]["runs"][0]["benchmark"] == "evict"


def test_the_schema_keeps_the_variants_apart() -> None:
    validator = jsonschema.Draft202012Validator(report.schema())
    doc: dict[str, Any] = lifecycle.document(
        "evict",
        ["t"],
        [evict_run(1.0, 0.5)],
        through_gateway=False,
        verdicts=[],
        started_at=1.0,
        duration_s=1.0,
    )
    validator.validate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**doc, "metrics": {}})  # a serving field in a lifecycle document
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**doc, "surprise": 1})
    serving = {k: v for k, v in doc.items() if k not in ("kind", "lifecycle")}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(serving)  # no kind: a serving document, which needs its fields
    run = doc["lifecycle"]["runs"][0]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**doc, "lifecycle": {**doc["lifecycle"], "runs": [{**run, "x": 1}]}})


def test_docs_describe_the_lifecycle_document() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "bench.md").read_text()
    defs = report.schema()["$defs"]
    for name in defs["lifecycle"]["properties"]:
        assert f"`lifecycle.{name}" in text, name
    for kind in ("cold_start", "switch", "evict", "cold_request"):
        for name in defs[kind]["properties"]:
            assert f"`{name}`" in text, f"{kind}.{name}"
    for kind, names in lifecycle.METRICS.items():
        assert f"`{kind} " in text
        for name in names:
            assert f"`{name}`" in text, name


class FakeTelemetry:
    """The control client's ``telemetry()`` answers, in turn (the last one repeated)."""

    def __init__(self, used: list[int]) -> None:
        self.used = used
        self.calls = 0

    def telemetry(self) -> dict[str, Any]:
        value = self.used[min(self.calls, len(self.used) - 1)]
        self.calls += 1
        gpus = [{"index": 0, "name": "GPU A", "mem_used_bytes": value}]
        gpus.append({"index": 1, "name": "GPU B", "mem_used_bytes": 99})
        return {"gpu": {"available": True}, "gpus": gpus}


def test_vram_is_free_when_the_instances_gpus_dropped_by_what_it_held() -> None:
    from studioctl.bench.evict_time import VramWatch

    gib = 1 << 30
    client = FakeTelemetry([10 * gib, 10 * gib, 7 * gib, 2 * gib])  # before, then falling
    watch = VramWatch(client, {"gpus": [0], "vram_bytes": 8 * gib})  # type: ignore[arg-type]
    assert watch.gpu == "GPU A, GPU B"
    assert watch.wait_free(0.0, iter([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]).__next__) == 0.3
    assert client.calls == 4
    no_gpu = VramWatch(FakeTelemetry([0]), {"gpus": [], "vram_bytes": None})  # type: ignore[arg-type]
    assert (no_gpu.gpu, no_gpu.wait_free(0.0, lambda: 0.0)) == ("no GPU", None)
