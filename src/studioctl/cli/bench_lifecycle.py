"""``studioctl bench --cold-start|--switch|--evict|--cold-request``: the lifecycle
benchmarks (``studioctl.bench.lifecycle``), run ``repeat`` times, checked against
``--fail-if``, printed as a table or as the ``"kind": "lifecycle"`` document (docs/bench.md).

``cli.bench_cmds`` parses the options and calls ``run_lifecycle``. Everything heavy is
imported inside it: ``studioctl --help`` stays fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studioctl.bench.lifecycle import Result
    from studioctl.bench.thresholds import Verdict

#: How many arguments each benchmark takes, and what they are (for the usage error).
_ARGS = {
    "cold-start": ("RECIPE",),
    "switch": ("A", "B"),
    "evict": ("TARGET",),
    "cold-request": ("MODEL",),
}


def run_lifecycle(
    kind: str,
    args: tuple[str, ...],
    *,
    json_out: bool,
    fail_if: list[str],
    api_key: str | None,
    save: bool,
    repeat: int,
    timeout_s: float | None,
) -> int:
    """Run lifecycle benchmark ``kind`` ``repeat`` times; print it; the exit code: 0, or 8
    (``EXIT_THRESHOLD``) when a ``--fail-if`` is crossed (checked on each metric's mean over
    the runs, names of ``lifecycle.METRICS[kind]``). ``api_key``: a tenant key, requests go
    through the gateway; without one, at the engine with its own key (a cold request needs
    one). ``timeout_s``: a launch's readiness and a first token's wait (default 600 s).
    ``save``: keep the document in the store (``store.bench.save_run``). Usage errors
    (UsageError, exit 2) come before anything runs."""
    from studioctl.bench import lifecycle, thresholds
    from studioctl.client import connect
    from studioctl.errors import EXIT_OK, EXIT_THRESHOLD, UsageError

    if kind not in _ARGS:
        raise UsageError(f"unknown lifecycle benchmark {kind[:50]!r} (one of: {', '.join(_ARGS)})")
    if len(args) != len(_ARGS[kind]):
        raise UsageError(f"bench --{kind} takes {' '.join(_ARGS[kind])}")
    if repeat < 1:
        raise UsageError("--repeat must be at least 1")
    names = lifecycle.METRICS[kind]
    checks = thresholds.parse_all(fail_if, names, names)  # every lifecycle metric is a time
    saver = _saver() if save else None
    started = time.time()
    runs: list[Result] = []
    with connect() as client:
        current = tuple(args)
        for _ in range(repeat):
            result = lifecycle.run_one(client, kind, current, api_key=api_key, timeout_s=timeout_s)
            runs.append(result)
            current = _next_args(kind, current, result)
    means, _ = lifecycle.summary(kind, runs)
    verdicts = thresholds.check(checks, means)
    doc = lifecycle.document(
        kind,
        args,
        runs,
        through_gateway=api_key is not None,
        verdicts=verdicts,
        started_at=started,
        duration_s=time.time() - started,
    )
    saved = saver(doc) if saver is not None else None
    _show(doc, json_out=json_out, saved=saved)
    crossed = [v for v in verdicts if v.crossed]
    if not crossed:
        return EXIT_OK
    sys.stderr.write(f"error: {_crossed(crossed)}\n")
    return EXIT_THRESHOLD


def _next_args(kind: str, args: tuple[str, ...], result: Result) -> tuple[str, ...]:
    """The next run's arguments: an instance id named once is gone after a switch or an
    evict, so the next run takes its recipe (launched again first)."""
    data = result.to_dict()
    if kind == "switch":
        return (str(data.get("from_recipe") or args[0]), args[1])
    if kind == "evict":
        return (str(data.get("recipe") or args[0]),)
    return args


def _saver() -> Callable[[Mapping[str, Any]], str]:
    """``store.bench.save_run`` on the store, checked before anything runs."""
    from studioctl.store.bench import save_run

    def save(doc: Mapping[str, Any]) -> str:
        from studioctl.store import open_database

        db = open_database()
        try:
            return str(save_run(db, doc))
        finally:
            db.close()

    return save


def _crossed(crossed: Sequence[Verdict]) -> str:
    n = len(crossed)
    return f"{n} threshold{'s' if n > 1 else ''} crossed: " + "; ".join(
        v.describe() for v in crossed
    )


def _seconds(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.1f}ms" if v < 1.0 else f"{v:.3f}s"


def _show(doc: Mapping[str, Any], *, json_out: bool, saved: str | None) -> None:
    from studioctl import ui
    from studioctl.bench import report

    if json_out:
        print(report.dumps(doc))
        if saved is not None:
            sys.stderr.write(f"saved as run {saved}\n")
        return
    life = doc["lifecycle"]
    path = "through the gateway" if life["through_gateway"] else "at the engine"
    print(
        f"{life['benchmark']} {' '.join(life['args'])}: {life['repeat']} run"
        f"{'s' if life['repeat'] > 1 else ''}, requests {path}, {doc['duration_s']:.1f}s"
    )
    rows = []
    for name, mean in life["metrics"].items():
        spread = life["spread"].get(name) or {}
        rows.append(
            [name, _seconds(mean), *(_seconds(spread.get(k)) for k in ("min", "max", "std"))]
        )
    ui.table(rows, ["metric", "mean", "min", "max", "std"])
    last = life["runs"][-1]
    if last.get("stages"):
        stages = [[s["name"], s["label"], _seconds(s["duration_s"])] for s in last["stages"]]
        ui.table(stages, ["stage", "what", "took"], title="launch stages (last run)")
    if last.get("gpu") == "no GPU":
        print("no GPU: the evict's time is its processes' exit (no VRAM to free)")
    if saved is not None:
        print(f"saved as run {saved}")
