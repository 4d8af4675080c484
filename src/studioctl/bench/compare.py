"""Repeated runs and the comparison of two runs: pure functions, no I/O.

``--repeat K`` runs one workload K times. ``combine`` gives the figures of the whole: the
counts (requests, tokens) are totals over the K runs, every other metric is the mean of the
K runs' values (null when any run could not measure it), and each of those has a
:class:`Spread`: the min and max of the K values, their standard deviation (population, as
the document's other ``std``) and the relative spread (max − min) / |mean|.

``compare`` gives, per metric with a direction (higher is better for throughputs and goodput,
lower for latencies), the relative change (B − A) / |A| and a verdict: ``improved`` or
``regressed`` only when the two runs' ranges [min, max] do not overlap, i.e. the change is
beyond the spread of repeated runs; ``within spread`` when they overlap; ``no spread:
unflagged`` when either run was not repeated; ``not measured`` when either value is null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from studioctl.bench.metrics import DISTRIBUTIONS, PERCENTILES

Value = float | int | None
Direction = Literal["higher", "lower"]

#: Counts: totals over repeated runs, never compared (they describe the workload).
COUNTS: frozenset[str] = frozenset(
    {"requests_ok", "requests_failed", "prompt_tokens", "output_tokens"}
)
#: Which way is better, for every metric ``compare`` judges (the ``_std`` of a distribution
#: is its dispersion, not a performance figure: not judged).
DIRECTIONS: dict[str, Direction] = {
    "request_rps": "higher",
    "output_tps": "higher",
    "total_tps": "higher",
    "goodput_rps": "higher",
    **{
        f"{d}_{s}": "lower"
        for d in DISTRIBUTIONS
        for s in ("mean", *(f"p{p}" for p in PERCENTILES))
    },
    # Lifecycle benchmarks (bench.lifecycle.METRICS): every one a duration.
    **dict.fromkeys(
        (
            "cold_start_s",
            "ready_s",
            "ttft_s",
            "gap_s",
            "switch_s",
            "evict_s",
            "processes_gone_s",
            "vram_free_s",
            "e2e_s",
            "queue_s",
        ),
        "lower",
    ),
}

IMPROVED = "improved"
REGRESSED = "regressed"
WITHIN = "within spread"
NO_SPREAD = "no spread: unflagged"
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Spread:
    """One metric over repeated runs: its mean, min, max and population std."""

    mean: float
    min: float
    max: float
    std: float

    @property
    def relative(self) -> float | None:
        """(max − min) / |mean|; None when the mean is 0."""
        return None if self.mean == 0 else (self.max - self.min) / abs(self.mean)

    def to_dict(self) -> dict[str, float | None]:
        return {"min": self.min, "max": self.max, "std": self.std, "relative": self.relative}


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("spread of no values")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return Spread(mean, min(values), max(values), std)


def combine(runs: Sequence[Mapping[str, Value]]) -> tuple[dict[str, Value], dict[str, Spread]]:
    """The figures of K runs (names in the first run's order) and each non-count metric's
    spread (only for K ≥ 2, and only where every run measured it)."""
    if not runs:
        raise ValueError("combine needs at least one run")
    out: dict[str, Value] = {}
    spreads: dict[str, Spread] = {}
    for name in runs[0]:
        values = [r.get(name) for r in runs]
        if any(v is None for v in values):
            out[name] = None
            continue
        numbers = [v for v in values if v is not None]
        if name in COUNTS:
            out[name] = sum(numbers)
            continue
        s = spread([float(v) for v in numbers])
        out[name] = s.mean
        if len(runs) > 1:
            spreads[name] = s
    return out, spreads


@dataclass(frozen=True)
class Change:
    metric: str
    direction: Direction
    a: float | None
    b: float | None
    change: float | None  # (b − a) / |a|; None when not measured or a is 0 (b not 0)
    verdict: str

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "direction": self.direction,
            "a": self.a,
            "b": self.b,
            "change": self.change,
            "verdict": self.verdict,
        }


def relative_change(a: float, b: float) -> float | None:
    if a == 0:
        return 0.0 if b == 0 else None
    return (b - a) / abs(a)


def verdict(direction: Direction, a: float, b: float, sa: Spread | None, sb: Spread | None) -> str:
    if sa is None or sb is None:
        return NO_SPREAD
    if sb.min <= sa.max and sa.min <= sb.max:
        return WITHIN  # the ranges overlap: not beyond the spread
    better = b > a if direction == "higher" else b < a
    return IMPROVED if better else REGRESSED


def compare(
    a: Mapping[str, Value],
    a_spread: Mapping[str, Spread],
    b: Mapping[str, Value],
    b_spread: Mapping[str, Spread],
) -> list[Change]:
    """Run B against run A, one Change per judged metric present in either (DIRECTIONS'
    order)."""
    out = []
    for name, direction in DIRECTIONS.items():
        if name not in a and name not in b:
            continue
        va, vb = a.get(name), b.get(name)
        if va is None or vb is None:
            fa = None if va is None else float(va)
            fb = None if vb is None else float(vb)
            out.append(Change(name, direction, fa, fb, None, NOT_MEASURED))
            continue
        fa, fb = float(va), float(vb)
        v = verdict(direction, fa, fb, a_spread.get(name), b_spread.get(name))
        out.append(Change(name, direction, fa, fb, relative_change(fa, fb), v))
    return out
