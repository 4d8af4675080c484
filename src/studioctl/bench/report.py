"""The result of a benchmark: one versioned JSON document, a table for people, progress lines.

The document (``"schema": "studioctl.bench/1"``) is described field by field in
docs/bench.md and by the JSON Schema ``bench/schema.json`` shipped in the package (a test
validates real output against it). Times are seconds; rates are per second. A field is added
without changing the version; a field is renamed or its meaning changed only with a new one.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from studioctl.bench.compare import combine
from studioctl.bench.loadgen import Progress, Workload
from studioctl.bench.metrics import DISTRIBUTIONS, PERCENTILES, TIME_METRICS, flat
from studioctl.bench.runner import Inputs, Outcome
from studioctl.bench.thresholds import Verdict

SCHEMA = "studioctl.bench/1"


@dataclass(frozen=True)
class TargetInfo:
    """What was measured: ``kind`` is ``url``, ``instance`` or ``recipe``."""

    kind: str
    url: str
    model: str
    name: str | None = None
    instance_id: str | None = None
    through_gateway: bool = False
    launched: bool = False
    evicted: bool = False
    # The engine's own key when measured directly (``target.direct``): sent, never reported.
    api_key: str | None = field(default=None, repr=False)


def document(
    target: TargetInfo,
    workload: Workload,
    inputs: Inputs,
    outcome: Outcome,
    *,
    chat: bool,
    slo: Mapping[str, float] | None,
    verdicts: Sequence[Verdict],
    started_at: float,
    repeats: Sequence[Outcome] = (),
    environment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document of one run, or of ``repeats`` (every outcome of ``--repeat K``, K ≥ 2:
    ``outcome`` is then the first; see ``compare.combine`` for the figures of the whole)."""
    from studioctl import __version__

    repeated = len(repeats) > 1
    metrics = metrics_of(repeats if repeated else [outcome])
    errors: Counter[str] = Counter()
    for o in repeats if repeated else [outcome]:
        errors.update(o.summary.errors)
    return {
        "schema": SCHEMA,
        "studioctl_version": __version__,
        "run_id": None,
        "started_at": started_at,
        "duration_s": sum(o.duration_s for o in repeats) if repeated else outcome.duration_s,
        "target": {
            "kind": target.kind,
            "name": target.name,
            "instance_id": target.instance_id,
            "url": target.url,
            "model": target.model,
            "through_gateway": target.through_gateway,
            "launched": target.launched,
            "evicted": target.evicted,
        },
        "workload": {
            "endpoint": "chat" if chat else "completions",
            "stream": workload.stream,
            "requests": workload.requests,
            "duration_s": workload.duration_s,
            "concurrency": workload.concurrency,
            "rate": workload.rate,
            "burstiness": workload.burstiness,
            "warmup": workload.warmup,
            "seed": workload.seed,
            "timeout_s": workload.timeout_s,
            "ignore_eos": workload.ignore_eos,
            "prompt_tokens": inputs.prompt_tokens,
            "output_tokens": inputs.output_tokens,
            "dataset": None if inputs.dataset is None else str(inputs.dataset),
            "prompt_variants": outcome.variants,
        },
        "metrics": metrics,
        "slo": dict(slo) if slo else None,
        "errors": dict(sorted(errors.items())),
        "thresholds": thresholds_json(verdicts),
        "passed": not any(v.crossed for v in verdicts),
        "environment": {k: (environment or {}).get(k) for k in ENVIRONMENT},
        "repeat": _repeat(repeats) if repeated else None,
    }


#: What ``environment`` names: where the run ran (null where unknown).
ENVIRONMENT = ("recipe_id", "recipe_hash", "engine", "engine_version", "gpu_names", "gpu_driver")


def metrics_of(outcomes: Sequence[Outcome]) -> dict[str, float | int | None]:
    """The flat metrics of one run, or of repeated runs (``compare.combine``)."""
    if len(outcomes) == 1:
        return flat(outcomes[0].summary)
    return combine([flat(o.summary) for o in outcomes])[0]


def _repeat(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    runs = [flat(o.summary) for o in outcomes]
    _, spreads = combine(runs)
    return {
        "count": len(outcomes),
        "runs": [
            {"duration_s": o.duration_s, "metrics": m, "errors": dict(o.summary.errors)}
            for o, m in zip(outcomes, runs, strict=True)
        ],
        "spread": {name: s.to_dict() for name, s in spreads.items()},
    }


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2)


def schema() -> dict[str, Any]:
    """The JSON Schema of the document (``bench/schema.json``)."""
    from importlib.resources import files

    data = json.loads(files("studioctl.bench").joinpath("schema.json").read_text("utf-8"))
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------------------- for people


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.2f}"


def table(doc: Mapping[str, Any]) -> tuple[list[list[str]], list[str]]:
    """Rows and headers of the latency table (milliseconds)."""
    m = doc["metrics"]
    headers = ["metric (ms)", "mean", *(f"p{p}" for p in PERCENTILES)]
    names = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "E2E latency"}
    rows = [
        [names[d], _ms(m[f"{d}_mean"]), *(_ms(m[f"{d}_p{p}"]) for p in PERCENTILES)]
        for d in DISTRIBUTIONS
    ]
    return rows, headers


def spread_table(doc: Mapping[str, Any]) -> tuple[list[list[str]], list[str]]:
    """With ``--repeat``: each metric's mean and spread over the runs (times in ms)."""
    rep = doc.get("repeat") or {}
    headers = ["metric", "mean", "min", "max", "std", "spread"]
    rows = []
    for name, s in (rep.get("spread") or {}).items():
        show = _ms if name in TIME_METRICS else _num
        rel = "-" if s["relative"] is None else f"{s['relative'] * 100:.1f}%"
        label = f"{name} (ms)" if name in TIME_METRICS else name
        mean = doc["metrics"][name]
        rows.append([label, show(mean), show(s["min"]), show(s["max"]), show(s["std"]), rel])
    return rows, headers


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    m, t, w = doc["metrics"], doc["target"], doc["workload"]
    how = f"concurrency {w['concurrency']}" if w["rate"] is None else f"rate {w['rate']:g}/s"
    path = " through the gateway" if t["through_gateway"] else ""
    lines = [
        f"{t['model']} at {t['url']}{path}: {how}, "
        f"{'streamed' if w['stream'] else 'not streamed'}, {doc['duration_s']:.2f}s",
        f"requests: {m['requests_ok']} ok, {m['requests_failed']} failed"
        + (f" ({_errors(doc['errors'])})" if doc["errors"] else ""),
        f"throughput: {m['request_rps']:.2f} req/s, {m['output_tps']:.1f} output tok/s, "
        f"{m['total_tps']:.1f} total tok/s",
        f"tokens: {m['prompt_tokens']} prompt, {m['output_tokens']} output",
    ]
    rep = doc.get("repeat")
    if rep:
        lines.append(
            f"repeated {rep['count']} times: counts are totals, other figures the mean of the "
            "runs (spread: (max − min) / mean)"
        )
    if m["goodput_rps"] is not None:
        slo = ", ".join(f"{k}≤{v * 1000:g}ms" for k, v in (doc["slo"] or {}).items())
        lines.append(f"goodput: {m['goodput_rps']:.2f} req/s ({slo})")
    return lines


def _errors(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in errors.items())


def progress_lines(p: Progress) -> list[str]:
    """The live display's lines (read from another thread: plain numbers only)."""
    if p.warming:
        return [f"warming up: {p.warming} left"]
    elapsed = max(1e-9, time.perf_counter() - p.t0)
    if p.total is not None:
        done = f"{p.ok + p.failed}/{p.total}"
    else:
        done = f"{p.ok + p.failed} ({elapsed:.0f}/{p.duration_s or 0:g}s)"
    return [
        f"requests {done}  in flight {p.sent - p.ok - p.failed}  failed {p.failed}",
        f"{(p.ok + p.failed) / elapsed:.1f} req/s  {p.output_tokens / elapsed:.1f} output tok/s",
    ]


def thresholds_json(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """The document's ``thresholds``: each ``--fail-if`` with what was measured."""
    return [
        {
            "expr": v.threshold.expr,
            "metric": v.threshold.metric,
            "op": v.threshold.op,
            "value": v.threshold.value,
            "measured": v.measured,
            "crossed": v.crossed,
        }
        for v in verdicts
    ]
