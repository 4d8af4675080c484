"""Serving metrics from per-request timelines: pure functions, no I/O.

The definitions are those of vLLM's serving benchmark (``vllm/benchmarks/serve.py``,
``calculate_metrics``, and ``lib/endpoint_request_func.py``), so that the same workload
measured by both agrees:

- A request's clock starts just before its bytes are written (``start``).
- Streaming: a *token chunk* is a server-sent event whose ``choices`` is not empty (its text
  may be empty, as the role chunk of a chat stream); the trailing usage chunk and
  ``data: [DONE]`` are not token chunks. Every chunk of one network read gets that read's
  time.
- **TTFT** (time to first token): first token chunk − start. Non-streaming requests have none.
- **ITL** (inter-token latency): the gaps between consecutive token chunks of a request; the
  gaps of every successful request are pooled into one distribution (a chunk that carries
  several tokens is one gap, as in vLLM).
- **E2E** latency: the last token chunk − start when streaming (vLLM's ``latency``: the usage
  chunk and ``[DONE]`` do not move it); the end of the answer's body − start otherwise.
- **TPOT** (time per output token after the first): (e2e − ttft) / (output_tokens − 1), for
  requests with more than one output token (the others are left out of the distribution and
  count as 0 against a TPOT SLO, as in vLLM).
- Tokens: ``prompt_tokens`` and ``output_tokens`` are the engine's own ``usage`` (never
  counted or guessed here); a successful answer without usage is an error of kind
  ``no_usage``.
- **Duration**: from the first measured request's arrival (after the warm-up) until the last
  measured request has finished, as vLLM's ``benchmark_duration``.
- **Throughput** over that duration: successful requests/s (``request_rps``), output
  tokens/s (``output_tps``), prompt + output tokens/s (``total_tps``), all over successful
  requests.
- **Goodput** (``goodput_rps``): successful requests meeting every SLO (value ≤ limit) per
  second; SLOs on ``ttft``, ``tpot`` and ``e2e``.
- **Percentiles**: numpy's default ``percentile`` (method ``linear``: the value at the
  virtual index (n − 1)·q/100, interpolated linearly between its two neighbours, with
  numpy's own rounding-symmetric interpolation), written without numpy; ``std`` is the
  population standard deviation (numpy's ``std``). An empty distribution is ``None`` (vLLM
  prints 0).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: The percentiles every distribution reports.
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
#: The distributions, in report order.
DISTRIBUTIONS: tuple[str, ...] = ("ttft", "itl", "tpot", "e2e")
#: The SLO names ``--slo`` takes (``e2el`` is vLLM's spelling of ``e2e``).
SLO_NAMES: tuple[str, ...] = ("ttft", "tpot", "e2e")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One measured request. Times are seconds on one monotonic clock.

    ``first_token`` is None when not streaming (or when no token chunk came); ``gaps`` holds
    the inter-token gaps (one float each, nothing else per token). ``error`` is None for a
    success, else its kind (``http_503``, ``timeout``, ``connect``, ...).
    """

    start: float
    end: float
    first_token: float | None = None
    gaps: array[float] = field(default_factory=lambda: array("d"))
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """(e2e − ttft) / (output_tokens − 1); None below two output tokens or unstreamed."""
        ttft = self.ttft
        if ttft is None or self.output_tokens <= 1:
            return None
        return (self.e2e - ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Distribution:
    """Summary of one metric's values (seconds): count, mean, std and the percentiles."""

    count: int
    mean: float | None
    std: float | None
    percentiles: Mapping[int, float | None]

    def get(self, stat: str) -> float | None:
        """``mean``, ``std`` or ``pNN``."""
        if stat == "mean":
            return self.mean
        if stat == "std":
            return self.std
        return self.percentiles.get(int(stat.removeprefix("p")))


@dataclass(frozen=True)
class Summary:
    """Every figure of one run."""

    duration_s: float
    requests_ok: int
    requests_failed: int
    prompt_tokens: int
    output_tokens: int
    request_rps: float
    output_tps: float
    total_tps: float
    goodput_rps: float | None
    distributions: Mapping[str, Distribution]
    errors: Mapping[str, int]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """numpy.percentile(values, q) with the default method (``linear``), exactly.

    ``sorted_values`` must be sorted and not empty; ``q`` in [0, 100].
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    n = len(sorted_values)
    index = (n - 1) * (q / 100)
    lo = math.floor(index)
    hi = min(lo + 1, n - 1)
    t = index - lo
    a, b = sorted_values[lo], sorted_values[hi]
    diff = b - a
    # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly.
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def distribution(values: Iterable[float]) -> Distribution:
    data = sorted(values)
    if not data:
        return Distribution(0, None, None, {p: None for p in PERCENTILES})
    n = len(data)
    mean = math.fsum(data) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / n)
    return Distribution(n, mean, std, {p: percentile(data, p) for p in PERCENTILES})


def is_good(record: RequestRecord, slo: Mapping[str, float]) -> bool:
    """Whether a successful request meets every SLO (seconds); TPOT counts as 0 below two
    output tokens, as in vLLM."""
    for name, limit in slo.items():
        if name == "ttft":
            value = record.ttft
        elif name == "tpot":
            value = record.tpot if record.output_tokens > 1 else 0.0
        elif name == "e2e":
            value = record.e2e
        else:
            raise ValueError(f"unknown SLO {name!r}")
        if value is None or value > limit:
            return False
    return True


def summarize(
    records: Iterable[RequestRecord], duration_s: float, slo: Mapping[str, float] | None = None
) -> Summary:
    """The run's figures from its measured requests (warm-up excluded) and its duration."""
    ok: list[RequestRecord] = []
    errors: Counter[str] = Counter()
    for record in records:
        if record.error is None:
            ok.append(record)
        else:
            errors[record.error] += 1
    prompt = sum(r.prompt_tokens for r in ok)
    output = sum(r.output_tokens for r in ok)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    gaps: list[float] = []
    for r in ok:
        gaps.extend(r.gaps)
    dists = {
        "ttft": distribution(t for r in ok if (t := r.ttft) is not None),
        "itl": distribution(gaps),
        "tpot": distribution(t for r in ok if (t := r.tpot) is not None),
        "e2e": distribution(r.e2e for r in ok),
    }
    goodput = None
    if slo:
        goodput = sum(1 for r in ok if is_good(r, slo)) * per_s
    return Summary(
        duration_s=duration_s,
        requests_ok=len(ok),
        requests_failed=sum(errors.values()),
        prompt_tokens=prompt,
        output_tokens=output,
        request_rps=len(ok) * per_s,
        output_tps=output * per_s,
        total_tps=(prompt + output) * per_s,
        goodput_rps=goodput,
        distributions=dists,
        errors=dict(sorted(errors.items())),
    )


def flat(summary: Summary) -> dict[str, float | int | None]:
    """The run's figures under the flat names of the JSON document's ``metrics`` (and of
    ``--fail-if``): ``request_rps``, ``output_tps``, ``ttft_p95``, ``itl_mean``, ... Times
    are seconds."""
    out: dict[str, float | int | None] = {
        "requests_ok": summary.requests_ok,
        "requests_failed": summary.requests_failed,
        "prompt_tokens": summary.prompt_tokens,
        "output_tokens": summary.output_tokens,
        "request_rps": summary.request_rps,
        "output_tps": summary.output_tps,
        "total_tps": summary.total_tps,
        "goodput_rps": summary.goodput_rps,
    }
    for name in DISTRIBUTIONS:
        d = summary.distributions[name]
        out[f"{name}_mean"] = d.mean
        out[f"{name}_std"] = d.std
        for p in PERCENTILES:
            out[f"{name}_p{p}"] = d.percentiles[p]
    return out


#: Every name ``flat`` gives, and whether it is a time (seconds) or a count/rate.
TIME_METRICS: frozenset[str] = frozenset(
    f"{n}_{s}" for n in DISTRIBUTIONS for s in ("mean", "std", *(f"p{p}" for p in PERCENTILES))
)
METRIC_NAMES: tuple[str, ...] = (
    "requests_ok",
    "requests_failed",
    "prompt_tokens",
    "output_tokens",
    "request_rps",
    "output_tps",
    "total_tps",
    "goodput_rps",
    *sorted(TIME_METRICS),
)
