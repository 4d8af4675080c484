"""``studioctl bench history`` and ``studioctl bench compare``: the runs ``bench --save`` kept.

Registered on the ``bench`` group by ``cli/bench_cmds.py``. Both read the database directly
(no daemon needed) and create nothing: without a database there are no runs.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from studioctl.bench.compare import Change, Spread
    from studioctl.store.bench import BenchRepo, BenchRun

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextlib.contextmanager
def _repo() -> Iterator[BenchRepo | None]:
    from studioctl.store.bench import BenchRepo, open_existing

    db = open_existing()
    if db is None:
        yield None
        return
    try:
        yield BenchRepo(db)
    finally:
        db.close()


def history(
    recipe: Annotated[str | None, typer.Argument(help="Only this recipe's runs.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most N runs.")] = 20,
    as_json: AsJson = False,
) -> None:
    """List saved benchmark runs (bench --save), newest first.

    Examples: studioctl bench history; studioctl bench history tiny --limit 5 --json
    """
    with _repo() as repo:
        runs = [] if repo is None else repo.list(recipe, limit=limit)
    if as_json:
        typer.echo(json.dumps({"runs": [r.to_dict() for r in runs]}, indent=2))
        return
    if not runs:
        typer.echo("no saved runs" + (f" of {recipe}" if recipe else "") + " (bench --save)")
        return
    from studioctl import ui

    ui.table(
        [_history_row(r) for r in runs],
        ["run", "when", "what", "engine", "GPUs", "workload", "runs", "out tok/s", "TTFT p95"],
    )


def _history_row(r: BenchRun) -> list[str]:
    out = r.metrics.get("output_tps")
    ttft = r.metrics.get("ttft_p95")
    return [
        r.id,
        time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
        r.recipe_id or r.target_url or "-",
        " ".join(x for x in (r.engine, r.engine_version) if x) or "-",
        ", ".join(r.gpu_names) if r.gpu_names else "-",
        workload_summary(r.kind, r.workload),
        str(r.repeat),
        "-" if out is None or out.value is None else f"{out.value:.1f}",
        "-" if ttft is None or ttft.value is None else f"{ttft.value * 1000:.1f}ms",
    ]


def workload_summary(kind: str, w: Mapping[str, Any]) -> str:
    """``c8 P512→O128 n100 stream``: arrivals, prompt and output tokens, length, stream."""
    if kind != "serving":
        return kind
    parts = [f"r{w['rate']:g}/s" if w.get("rate") is not None else f"c{w.get('concurrency')}"]
    prompt = f"P{w['prompt_tokens']}" if w.get("prompt_tokens") is not None else "dataset"
    parts.append(f"{prompt}→O{w.get('output_tokens')}")
    if w.get("requests") is not None:
        parts.append(f"n{w['requests']}")
    if w.get("duration_s") is not None:
        parts.append(f"{w['duration_s']:g}s")
    parts.append("stream" if w.get("stream") else "no-stream")
    return " ".join(parts)


def compare(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="The reference run.")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="The run judged against it.")],
    as_json: AsJson = False,
) -> None:
    """Compare two saved runs: the relative change of each metric, B against A.

    A change is flagged (improved / regressed) only beyond the spread of repeated runs
    (--repeat): when the two runs' [min, max] ranges do not overlap. A run without repeats
    has no spread: its changes are shown, unflagged. Higher is better for throughputs and
    goodput, lower for latencies. Example: studioctl bench compare 3fa2c1d0 9b41e7aa
    """
    from studioctl.bench import compare as cmp
    from studioctl.errors import NotFoundError

    with _repo() as repo:
        if repo is None:
            raise NotFoundError("no saved runs yet", hint="bench --save keeps a run")
        a, b = repo.get(run_a), repo.get(run_b)
    changes = cmp.compare(_values(a), _spreads(a), _values(b), _spreads(b))
    same = _comparable(a.workload) == _comparable(b.workload)
    if as_json:
        out = {
            "a": _brief(a),
            "b": _brief(b),
            "same_workload": same,
            "metrics": [c.to_dict() for c in changes],
        }
        typer.echo(json.dumps(out, indent=2))
        return
    for label, run in (("A", a), ("B", b)):
        typer.echo(f"{label}: {_describe(run)}")
    if not same:
        typer.echo("note: the two runs' workloads differ")
    from studioctl import ui

    ui.table([_change_row(c) for c in changes], ["metric", "A", "B", "change", "verdict"])


def _values(run: BenchRun) -> dict[str, float | None]:
    return {name: m.value for name, m in run.metrics.items()}


def _spreads(run: BenchRun) -> dict[str, Spread]:
    from studioctl.bench.compare import Spread

    return {
        name: Spread(m.value, m.min, m.max, m.std or 0.0)
        for name, m in run.metrics.items()
        if m.value is not None and m.min is not None and m.max is not None
    }


def _comparable(workload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in workload.items() if k != "prompt_variants"}


def _brief(run: BenchRun) -> dict[str, Any]:
    keys = ("id", "created_at", "kind", "recipe_id", "recipe_hash", "engine", "engine_version")
    out = {k: getattr(run, k) for k in keys}
    out.update(gpu_names=run.gpu_names, target_url=run.target_url, repeat=run.repeat)
    return out


def _describe(run: BenchRun) -> str:
    what = run.recipe_id or run.target_url or "-"
    engine = " ".join(x for x in (run.engine, run.engine_version) if x)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created_at))
    rep = f", {run.repeat} runs" if run.repeat > 1 else ", 1 run (no spread)"
    return f"{run.id} {what}{f' ({engine})' if engine else ''}, {when}{rep}"


def _change_row(c: Change) -> list[str]:
    from studioctl.bench.metrics import TIME_METRICS

    def show(v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v * 1000:.2f}ms" if c.metric in TIME_METRICS else f"{v:.2f}"

    change = "-" if c.change is None else f"{c.change * 100:+.1f}%"
    return [c.metric, show(c.a), show(c.b), change, c.verdict]
