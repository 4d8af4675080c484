"""``--slo ttft=500ms,tpot=50ms,e2e=2s`` and ``--fail-if 'ttft_p95>500ms'``: parsing and checks.

A value takes a unit ``ms`` or ``s`` when its metric is a time (the JSON document keeps
times in seconds, so a bare number is seconds), and no unit otherwise (``output_tps<1000``).
Every parse error is a UsageError that names the expression.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from studioctl.bench.metrics import METRIC_NAMES, SLO_NAMES, TIME_METRICS
from studioctl.errors import UsageError

_UNITS = {"ms": 1e-3, "s": 1.0}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*$")
_EXPR = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=|>|<)\s*(.+?)\s*$")
_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
# Bounded: the expressions come from a command line, but they end up in messages.
_MAX_EXPR = 200


def _value(text: str, *, time: bool, what: str) -> float:
    m = _NUMBER.match(text)
    if not m:
        raise UsageError(f"{what}: {text.strip()!r} is not a number (units: ms, s)")
    number, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(number):
        raise UsageError(f"{what}: {text.strip()!r} is not a finite number")
    if unit and not time:
        raise UsageError(f"{what}: this metric is not a time: give a plain number, no {unit!r}")
    return number * _UNITS[unit or "s"] if time else number


def parse_slo(text: str) -> dict[str, float]:
    """``ttft=500ms,tpot=50ms,e2e=2s`` → {name: seconds}. ``e2el`` is taken for ``e2e``."""
    out: dict[str, float] = {}
    for raw in text[:_MAX_EXPR].split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        name = "e2e" if name == "e2el" else name
        what = f"--slo {item!r}"
        if not eq:
            raise UsageError(f"{what}: expected NAME=VALUE (e.g. ttft=500ms)")
        if name not in SLO_NAMES:
            raise UsageError(f"{what}: unknown SLO {name!r} (one of: {', '.join(SLO_NAMES)})")
        if name in out:
            raise UsageError(f"{what}: {name} given twice")
        seconds = _value(value, time=True, what=what)
        if seconds <= 0:
            raise UsageError(f"{what}: must be above 0")
        out[name] = seconds
    if not out:
        raise UsageError(f"--slo {text[:_MAX_EXPR]!r}: no SLO given (e.g. ttft=500ms,tpot=50ms)")
    return out


@dataclass(frozen=True)
class Threshold:
    """One ``--fail-if``: crossed when ``metric OP value`` holds."""

    expr: str
    metric: str
    op: str
    value: float

    def crossed(self, measured: float | None) -> bool:
        """Whether the run failed it. A metric the run could not measure (no successful
        request, no stream) fails it: a CI gate must not pass on no data."""
        if measured is None:
            return True
        return bool(_OPS[self.op](measured, self.value))


def parse_fail_if(
    expr: str,
    names: Sequence[str] = METRIC_NAMES,
    times: Collection[str] = TIME_METRICS,
) -> Threshold:
    """One ``--fail-if``; ``names``: the metrics it may name (``times``: those that are
    times), the serving benchmark's by default (a lifecycle benchmark passes its own)."""
    text = expr.strip()
    what = f"--fail-if {text[:_MAX_EXPR]!r}"
    if len(text) > _MAX_EXPR:
        raise UsageError(f"{what}: longer than {_MAX_EXPR} characters")
    m = _EXPR.match(text)
    if not m:
        raise UsageError(f"{what}: expected METRIC OP VALUE, OP one of > >= < <= (ttft_p95>500ms)")
    metric, op, value = m.groups()
    if metric not in names:
        from studioctl.suggest import did_you_mean

        hint = did_you_mean(metric, names)
        raise UsageError(f"{what}: unknown metric {metric!r}{hint}")
    return Threshold(text, metric, op, _value(value, time=metric in times, what=what))


def parse_all(
    exprs: Iterable[str],
    names: Sequence[str] = METRIC_NAMES,
    times: Collection[str] = TIME_METRICS,
) -> list[Threshold]:
    return [parse_fail_if(e, names, times) for e in exprs]


@dataclass(frozen=True)
class Verdict:
    threshold: Threshold
    measured: float | None
    crossed: bool

    def describe(self) -> str:
        t = self.threshold
        if self.measured is None:
            return f"{t.expr}: {t.metric} was not measured"
        shown = _show(t.metric, self.measured)
        return f"{t.expr}: {t.metric} = {shown}"


def _show(metric: str, value: float) -> str:
    if metric in TIME_METRICS:
        return f"{value * 1000:.3f}ms"
    return f"{value:g}" if float(value).is_integer() else f"{value:.3f}"


def check(
    thresholds: Iterable[Threshold], metrics: Mapping[str, float | int | None]
) -> list[Verdict]:
    out = []
    for t in thresholds:
        measured = metrics.get(t.metric)
        value = None if measured is None else float(measured)
        out.append(Verdict(t, value, t.crossed(value)))
    return out
