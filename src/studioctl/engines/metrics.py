"""Engine ``/metrics``: a Prometheus text parser and the engine → studioctl name table.

Standard library only (no prometheus_client at runtime): the daemon scrapes every ready
instance every few seconds and this must stay cheap and dependency-free.

- :func:`parse_prometheus` reads the text exposition format (0.0.4, and the OpenMetrics
  ``# EOF`` / exemplar forms) into samples by sample name. ``# HELP``/``# TYPE`` and other
  comments are skipped; label values may hold escaped quotes, backslashes and newlines;
  values may be ``NaN``/``+Inf``/``-Inf``; histograms are their ``_bucket{le=…}``, ``_sum`` and
  ``_count`` samples. A malformed line is a :class:`MetricsParseError` naming the line.
- Each engine description (``engines/vllm.py``, ``engines/sglang.py``: their ``metrics``, the
  one home of the engine's metric names) maps its names (newest first, older names as
  fallbacks) to the studioctl names of :class:`EngineMetricSnapshot`; :data:`METRIC_TABLES`
  gathers them and :func:`summarize` applies one, combining label sets (model name, engine
  index, DP rank…).
- :class:`ThroughputTracker` turns counter deltas between snapshots into tokens/s; a counter
  that goes down (the engine restarted) counts from zero again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from studioctl.engines import BACKENDS, get_engine
from studioctl.engines.base import Agg, MetricSpec
from studioctl.errors import MetricsParseError, ValidationError


@dataclass(frozen=True)
class Sample:
    """One sample line: full sample name (``…_bucket``, ``…_total``), labels, value."""

    name: str
    labels: Mapping[str, str]
    value: float


Parsed = dict[str, list[Sample]]

# -- parser -----------------------------------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf(?:inity)?|NaN|nan)")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse_prometheus(text: str, *, source: str = "/metrics") -> Parsed:
    """Parse Prometheus text into ``{sample name: [Sample, …]}`` in file order.

    ``source`` names the text in errors (e.g. the URL scraped).
    """
    out: Parsed = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # blank, # HELP, # TYPE, # EOF, other comments
        try:
            sample = _parse_line(line)
        except _LineError as exc:
            raise MetricsParseError(f"{exc} in {_clip(line)!r}", file=source, line=lineno) from None
        out.setdefault(sample.name, []).append(sample)
    return out


class _LineError(Exception):
    pass


def _parse_line(line: str) -> Sample:
    m = _NAME.match(line)
    if not m:
        raise _LineError("expected a metric name")
    name, pos = m.group(), m.end()
    labels: dict[str, str] = {}
    brace = _skip_ws(line, pos)
    if line[brace : brace + 1] == "{":
        pos = _parse_labels(line, brace + 1, labels)
    rest = line[pos:].split()
    if not rest or (pos < len(line) and not line[pos].isspace()):
        raise _LineError("expected a space and a value after the name and labels")
    value = _parse_value(rest[0])
    if len(rest) > 1 and rest[1] != "#":  # "#": an OpenMetrics exemplar follows
        _parse_value(rest[1])  # a timestamp: validated, not kept
        if len(rest) > 2 and rest[2] != "#":
            raise _LineError(f"unexpected text after the value: {' '.join(rest[2:])!r}")
    return Sample(name, labels, value)


def _parse_labels(line: str, pos: int, labels: dict[str, str]) -> int:
    """Parse ``name="value",…}`` starting after ``{``; returns the index after ``}``."""
    while True:
        pos = _skip_ws(line, pos)
        if pos < len(line) and line[pos] == "}":
            return pos + 1
        m = _LABEL_NAME.match(line, pos)
        if not m:
            raise _LineError(f"expected a label name at column {pos + 1}")
        key = m.group()
        pos = _skip_ws(line, m.end())
        if line[pos : pos + 1] != "=":
            raise _LineError(f"expected '=' after label {key!r}")
        pos = _skip_ws(line, pos + 1)
        if line[pos : pos + 1] != '"':
            raise _LineError(f"expected '\"' to open the value of label {key!r}")
        pos += 1
        chars: list[str] = []
        while True:
            if pos >= len(line):
                raise _LineError(f"unterminated value of label {key!r}")
            ch = line[pos]
            if ch == "\\" and pos + 1 < len(line):
                nxt = line[pos + 1]
                chars.append(_ESCAPES.get(nxt, "\\" + nxt))
                pos += 2
                continue
            if ch == '"':
                pos += 1
                break
            chars.append(ch)
            pos += 1
        if key in labels:
            raise _LineError(f"label {key!r} given twice")
        labels[key] = "".join(chars)
        pos = _skip_ws(line, pos)
        if line[pos : pos + 1] == ",":
            pos += 1
        elif line[pos : pos + 1] != "}":
            raise _LineError(f"expected ',' or '}}' after label {key!r}")


def _parse_value(token: str) -> float:
    if not _NUMBER.fullmatch(token):
        raise _LineError(f"not a number: {token!r}")
    return float(token)


def _skip_ws(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _clip(line: str, limit: int = 120) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- aggregation helpers ----------------------------------------------------------------------


def combine(samples: Iterable[Sample], agg: Agg = "sum") -> float | None:
    """Combine one metric's label sets: ``sum`` (counts), ``mean`` or ``max`` (fractions).

    NaN samples are skipped; None when there is nothing left.
    """
    values = [s.value for s in samples if not math.isnan(s.value)]
    if not values:
        return None
    if agg == "sum":
        return math.fsum(values)
    if agg == "mean":
        return math.fsum(values) / len(values)
    return max(values)


@dataclass(frozen=True)
class Histogram:
    """A histogram summed over label sets: cumulative ``buckets`` as (upper bound, count)."""

    sum: float
    count: float
    buckets: tuple[tuple[float, float], ...]


def histogram(parsed: Parsed, name: str) -> Histogram | None:
    """The histogram ``name`` (without suffix) over all label sets, or None if absent."""
    sums = parsed.get(name + "_sum")
    counts = parsed.get(name + "_count")
    if sums is None or counts is None:
        return None
    by_le: dict[float, float] = {}
    for s in parsed.get(name + "_bucket", ()):
        le = s.labels.get("le")
        if le is None:
            continue
        bound = float(le)
        by_le[bound] = by_le.get(bound, 0.0) + s.value
    return Histogram(
        sum=math.fsum(s.value for s in sums),
        count=math.fsum(s.value for s in counts),
        buckets=tuple(sorted(by_le.items())),
    )


# -- the engine → studioctl table -------------------------------------------------------------


#: Each engine's table, from its description (see ``MetricSpec`` in engines/base.py).
METRIC_TABLES: dict[str, tuple[MetricSpec, ...]] = {b: get_engine(b).metrics for b in BACKENDS}


@dataclass(frozen=True)
class EngineMetricSnapshot:
    """An engine's metrics in studioctl's names; None when the engine did not report one.

    ``kv_cache_usage`` is a 0–1 fraction; token counts and histogram sums/counts are the
    engine's cumulative counters (see :class:`ThroughputTracker` for rates). ``sources`` maps
    each field to the engine metric name it came from.
    """

    backend: str
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    ttft_sum: float | None = None
    ttft_count: float | None = None
    itl_sum: float | None = None
    itl_count: float | None = None
    requests_total: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def ttft_mean(self) -> float | None:
        """Mean time to first token over the engine's lifetime, seconds."""
        if self.ttft_sum is None or not self.ttft_count:
            return None
        return self.ttft_sum / self.ttft_count

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "requests_running": self.requests_running,
            "requests_waiting": self.requests_waiting,
            "kv_cache_usage": self.kv_cache_usage,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "ttft_sum": self.ttft_sum,
            "ttft_count": self.ttft_count,
            "itl_sum": self.itl_sum,
            "itl_count": self.itl_count,
            "requests_total": self.requests_total,
        }


class EngineMetrics:
    """The metric table of one engine backend (``"vllm"`` or ``"sglang"``)."""

    def __init__(self, backend: str) -> None:
        if backend not in METRIC_TABLES:
            known = ", ".join(sorted(METRIC_TABLES))
            raise ValidationError(
                f"unknown engine backend {backend!r} (known: {known})", key="backend"
            )
        self.backend = backend
        self.specs = METRIC_TABLES[backend]

    def names(self) -> list[str]:
        """Every engine metric name the table knows (for docs and scrape filters)."""
        return [n for spec in self.specs for n in spec.names]

    def extract(self, parsed: Parsed) -> EngineMetricSnapshot:
        values: dict[str, float | None] = {}
        sources: dict[str, str] = {}
        for spec in self.specs:
            for name in spec.names:
                if spec.kind == "histogram":
                    h = histogram(parsed, name)
                    if h is None:
                        continue
                    values[spec.field + "_sum"] = h.sum
                    values[spec.field + "_count"] = h.count
                elif name in parsed:
                    values[spec.field] = combine(parsed[name], spec.agg)
                else:
                    continue
                sources[spec.field] = name
                break
        return EngineMetricSnapshot(
            backend=self.backend,
            requests_running=values.get("requests_running"),
            requests_waiting=values.get("requests_waiting"),
            kv_cache_usage=values.get("kv_cache_usage"),
            prompt_tokens_total=values.get("prompt_tokens_total"),
            generation_tokens_total=values.get("generation_tokens_total"),
            ttft_sum=values.get("ttft_sum"),
            ttft_count=values.get("ttft_count"),
            itl_sum=values.get("itl_sum"),
            itl_count=values.get("itl_count"),
            requests_total=values.get("requests_total"),
            sources=sources,
        )


def summarize(backend: str, text: str, *, source: str = "/metrics") -> EngineMetricSnapshot:
    """Parse an engine's /metrics text and map it to studioctl names."""
    return EngineMetrics(backend).extract(parse_prometheus(text, source=source))


# -- rates ------------------------------------------------------------------------------------


def counter_delta(previous: float | None, current: float | None) -> float | None:
    """Increase of a cumulative counter; a counter that went down restarted from zero."""
    if previous is None or current is None:
        return None
    if current < previous:
        return current  # the engine restarted: everything it counted happened since
    return current - previous


@dataclass(frozen=True)
class Throughput:
    """Rates over the interval between two snapshots (None on the first or when unknown).

    The ``*_delta`` fields are the counter increases (for lifetime totals); ``ttft_mean_s`` is
    the mean time to first token of the requests that got their first token in the interval.
    """

    interval_s: float | None = None
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    prompt_tokens_delta: float | None = None
    generation_tokens_delta: float | None = None
    ttft_mean_s: float | None = None
    reset: bool = False


class ThroughputTracker:
    """Tokens/s from counter deltas between successive :class:`EngineMetricSnapshot`s."""

    def __init__(self) -> None:
        self._last: tuple[float, EngineMetricSnapshot] | None = None

    def update(self, snap: EngineMetricSnapshot, ts: float) -> Throughput:
        last = self._last
        if last is None:
            self._last = (ts, snap)
            return Throughput()
        t0, prev = last
        dt = ts - t0
        if dt <= 0:
            # Same instant (or the clock stepped back): no rate, and keep the old baseline
            # so the tokens counted since it are not lost at the next update.
            return Throughput()
        self._last = (ts, snap)
        dp = counter_delta(prev.prompt_tokens_total, snap.prompt_tokens_total)
        dg = counter_delta(prev.generation_tokens_total, snap.generation_tokens_total)
        reset = any(
            b is not None and a is not None and b < a
            for a, b in (
                (prev.prompt_tokens_total, snap.prompt_tokens_total),
                (prev.generation_tokens_total, snap.generation_tokens_total),
                (prev.ttft_count, snap.ttft_count),
            )
        )
        ttft_mean: float | None = None
        dsum = counter_delta(prev.ttft_sum, snap.ttft_sum)
        dcount = counter_delta(prev.ttft_count, snap.ttft_count)
        if dsum is not None and dcount:
            ttft_mean = dsum / dcount
        return Throughput(
            interval_s=dt,
            prompt_tokens_per_s=None if dp is None else dp / dt,
            generation_tokens_per_s=None if dg is None else dg / dt,
            prompt_tokens_delta=dp,
            generation_tokens_delta=dg,
            ttft_mean_s=ttft_mean,
            reset=reset,
        )
