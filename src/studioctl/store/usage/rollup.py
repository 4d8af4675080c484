"""The usage rollup's arithmetic: histogram buckets, value vectors, periods, quantiles.

Every stored row also adds into ``usage_rollup`` at four resolutions (minute, 10 minutes,
hour, day) and four scopes (per tenant and model, per tenant, per model, everything).
Each rollup row holds one *value vector*: the sums of ``VALUE_COLUMNS``. Latency and TTFT
are counted in fixed, log-spaced histogram buckets (8 per decade from 1 ms to 12.5 min,
so each bucket is 33 % wide) so that periods can be added together; ``quantile``
interpolates inside a bucket. Latency counts successful requests that the client did not
abandon; TTFT counts successful requests that had a first token.

No I/O here: ``UsageRepo`` reads and writes the table.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from studioctl.store.migrations import USAGE_HIST_BUCKETS
from studioctl.store.usage.record import UsageRow

#: Upper bounds (ms) of the histogram buckets; one more bucket holds everything above.
#: Bucket i counts values in (BOUNDS_MS[i-1], BOUNDS_MS[i]].
BOUNDS_MS: tuple[float, ...] = tuple(10 ** (k / 8) for k in range(USAGE_HIST_BUCKETS - 1))
N_BUCKETS = len(BOUNDS_MS) + 1
assert N_BUCKETS == USAGE_HIST_BUCKETS  # the layout is fixed by migration m003

#: Rollup resolutions in seconds, finest first.
RESOLUTIONS: tuple[int, ...] = (60, 600, 3600, 86400)

#: What a rollup row adds up (its ``scope`` column): per (tenant, model) pair, per
#: tenant, per model, or everything. A filtered summary reads pairs; an unfiltered one
#: reads the others (tenants + models + 1 rows per period, not tenants x models).
SCOPE_PAIR, SCOPE_TENANT, SCOPE_MODEL, SCOPE_ALL = 0, 1, 2, 3

# The rollup's value columns, in the order of the value vectors.
_SUMS = (
    "requests",
    "errors",
    "disconnected",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "lat_count",
    "lat_sum_ms",
    "lat_max_ms",  # combined with max(), not +
    "ttft_count",
    "ttft_sum_ms",
    "ttft_max_ms",  # max()
)
_LAT0 = len(_SUMS)
_TTFT0 = _LAT0 + N_BUCKETS
VALUE_COLUMNS: tuple[str, ...] = (
    *_SUMS,
    *(f"lat_b{i}" for i in range(N_BUCKETS)),
    *(f"ttft_b{i}" for i in range(N_BUCKETS)),
)
#: The value columns that combine with max() instead of +.
MAX_COLUMNS = frozenset({"lat_max_ms", "ttft_max_ms"})
#: The length of a value vector.
N_VALUES = len(VALUE_COLUMNS)
_MAX_IDX = tuple(i for i, c in enumerate(VALUE_COLUMNS) if c in MAX_COLUMNS)

# A rollup key: (scope, period, tenant id or '', model or '').
_Key = tuple[int, int, str, str]


def bucket_of(ms: float) -> int:
    """The histogram bucket index of a duration in milliseconds."""
    return bisect.bisect_left(BOUNDS_MS, ms)


def quantile(buckets: Sequence[int], q: float, max_ms: float) -> float | None:
    """The ``q`` quantile of a bucketed histogram, interpolated geometrically inside its
    bucket (linearly in the first, which starts at 0) and never above ``max_ms``."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    cum = 0
    for i, count in enumerate(buckets):
        if count and cum + count >= rank:
            lo = BOUNDS_MS[i - 1] if i > 0 else 0.0
            hi = BOUNDS_MS[i] if i < len(BOUNDS_MS) else max(max_ms, lo)
            if lo <= max_ms < hi:
                hi = max_ms  # the largest value seen bounds this bucket
            frac = (rank - cum) / count
            if lo <= 0:
                return hi * frac
            return float(lo * (hi / lo) ** frac)
        cum += count
    return max_ms  # pragma: no cover — rank <= total always lands in a bucket


@dataclass(frozen=True)
class UsageStats:
    requests: int = 0
    errors: int = 0
    disconnected: int = 0
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_mean_ms: float | None = None
    latency_max_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}


def stats_of(v: Sequence[float]) -> UsageStats:
    """The figures of one value vector."""
    lat = [int(c) for c in v[_LAT0:_TTFT0]]
    ttft = [int(c) for c in v[_TTFT0:]]
    lat_count, lat_sum, lat_max = int(v[6]), v[7], v[8]
    ttft_max = v[11]
    return UsageStats(
        requests=int(v[0]),
        errors=int(v[1]),
        disconnected=int(v[2]),
        streamed=int(v[3]),
        prompt_tokens=int(v[4]),
        completion_tokens=int(v[5]),
        latency_p50_ms=quantile(lat, 0.50, lat_max),
        latency_p95_ms=quantile(lat, 0.95, lat_max),
        latency_mean_ms=lat_sum / lat_count if lat_count else None,
        latency_max_ms=lat_max if lat_count else None,
        ttft_p50_ms=quantile(ttft, 0.50, ttft_max),
        ttft_p95_ms=quantile(ttft, 0.95, ttft_max),
    )


def merge(into: list[float], v: Sequence[float]) -> None:
    """Add value vector ``v`` into ``into`` in place (the max columns take the max)."""
    maxes = [max(into[i], v[i]) for i in _MAX_IDX]
    into[:] = [a + b for a, b in zip(into, v, strict=True)]
    for i, m in zip(_MAX_IDX, maxes, strict=True):
        into[i] = m


def cover(lo: int, hi: int, level: int = 0) -> list[tuple[int, int, int]]:
    """Split the seconds [lo, hi) (minute-aligned) into (res, first, end) period ranges,
    coarsest that fit first."""
    coarse = RESOLUTIONS[::-1]
    if lo >= hi:
        return []
    res = coarse[level]
    if level == len(coarse) - 1:
        return [(res, lo // res, hi // res)]
    a = -(-lo // res) * res
    b = hi // res * res
    if a >= b:
        return cover(lo, hi, level + 1)
    return [*cover(lo, a, level + 1), (res, a // res, b // res), *cover(b, hi, level + 1)]


def rollup_rows(rows: Iterable[UsageRow]) -> list[tuple[Any, ...]]:
    """What ``rows`` add into ``usage_rollup``: ``(res, scope, period, tenant, model,
    *values)`` for every resolution and scope they touch."""
    # Each (minute, tenant, model) also adds into its tenant's, its model's and the
    # overall row (scopes 1-3), then every scope into the coarser resolutions.
    scoped: dict[_Key, list[float]] = {}
    for (minute, tenant, model), v in _minute_sums(rows).items():
        scoped[(SCOPE_PAIR, minute, tenant, model)] = v
        for skey in (
            (SCOPE_TENANT, minute, tenant, ""),
            (SCOPE_MODEL, minute, "", model),
            (SCOPE_ALL, minute, "", ""),
        ):
            _add_into(scoped, skey, v)
    out: list[tuple[Any, ...]] = [(60, *key, *v) for key, v in scoped.items()]
    for res in RESOLUTIONS[1:]:
        coarse: dict[_Key, list[float]] = {}
        for (scope, minute, tenant, model), v in scoped.items():
            _add_into(coarse, (scope, minute * 60 // res, tenant, model), v)
        out.extend((res, *key, *v) for key, v in coarse.items())
    return out


def _add_into(acc: dict[_Key, list[float]], key: _Key, v: list[float]) -> None:
    into = acc.get(key)
    if into is None:
        acc[key] = list(v)
    else:
        merge(into, v)


def _minute_sums(rows: Iterable[UsageRow]) -> dict[tuple[int, str, str], list[float]]:
    """The value vector of each (minute, tenant, model) the rows fall in.

    One loop with the vector indexes written out: it runs for every request accounted.
    """
    minutes: dict[tuple[int, str, str], list[float]] = {}
    for r in rows:
        key = (int(r.ts // 60), r.tenant_id or "", r.model or "")
        v = minutes.get(key)
        if v is None:
            v = minutes[key] = [0] * N_VALUES
        v[0] += 1
        err = r.status >= 400 or r.error_code is not None
        if err:
            v[1] += 1
        if r.disconnected:
            v[2] += 1
        if r.streamed:
            v[3] += 1
        v[4] += r.prompt_tokens
        v[5] += r.completion_tokens
        if not err and not r.disconnected:
            d = r.duration_ms
            v[6] += 1
            v[7] += d
            if d > v[8]:
                v[8] = d
            v[_LAT0 + bisect.bisect_left(BOUNDS_MS, d)] += 1
        if not err and r.ttft_ms is not None:
            t = r.ttft_ms
            v[9] += 1
            v[10] += t
            if t > v[11]:
                v[11] = t
            v[_TTFT0 + bisect.bisect_left(BOUNDS_MS, t)] += 1
    return minutes
