"""Gateway metrics in the Prometheus text exposition format (version 0.0.4), hand-rolled.

Recording is a few dict updates and a bisect on a short tuple: O(1), nothing allocated
beyond a key tuple, no lock (one asyncio thread). ``prometheus_client`` is not used at
runtime (its registry locks and per-sample objects cost more than the whole budget of a
request); the tests parse ``render()`` with its parser.

Families (``tenant`` label only when ``tenant_labels`` is on, i.e.
``gateway.metrics_tenant_labels``; off bounds the cardinality to models × statuses)::

    studioctl_gateway_requests_total{model,status[,tenant]}            counter
    studioctl_gateway_route_requests_total{route,status}               counter
    studioctl_gateway_streamed_requests_total{model[,tenant]}          counter
    studioctl_gateway_prompt_tokens_total{model[,tenant]}              counter
    studioctl_gateway_completion_tokens_total{model[,tenant]}          counter
    studioctl_gateway_rejections_total{reason[,tenant]}                counter
    studioctl_gateway_inflight_requests                                gauge
    studioctl_gateway_request_duration_seconds{model}                  histogram
    studioctl_gateway_time_to_first_token_seconds{model}               histogram
    studioctl_gateway_upstream_latency_seconds                         histogram
    studioctl_gateway_queue_seconds{model}                             histogram

``model`` is the name the client asked for; past ``max_models`` distinct names, and for any
name longer than ``MAX_LABEL_LEN``, it is counted under ``model="__other__"``, so that clients
sending random or huge names cannot grow the output without bound. Every other label value
is cut to ``MAX_LABEL_LEN`` characters when rendered (a hash keeps cut values distinct).
``route`` is a name of the gateway's routes table (``routes.py``), never the client's path.

:meth:`GatewayMetrics.summary` gives the totals ``top`` shows straight from the counters, at a
cost independent of the number of series (rendering and re-parsing the text every second
is what a flood of invented model names turned into a stalled event loop).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from studioctl.promtext import escape, header, number

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_LABEL_LEN",
    "OTHER_MODEL",
    "TTFT_BUCKETS",
    "GatewayMetrics",
]

PREFIX = "studioctl_gateway_"
OTHER_MODEL = "__other__"
# The longest label value rendered (characters). Served model names are far shorter.
MAX_LABEL_LEN = 200

# Seconds. Requests range from a rejected call (< 1 ms) to a long generation (minutes).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
TTFT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _Histogram:
    """Per-bucket (not cumulative) counts; ``render`` accumulates."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "le": value <= bound; bisect_left finds the first such bound.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def lines(self, name: str, labels: str) -> Iterable[str]:
        sep = "," if labels else ""
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            yield f'{name}_bucket{{{labels}{sep}le="{number(bound)}"}} {running}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}'
        braces = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{braces} {number(self.total)}"
        yield f"{name}_count{braces} {self.count}"


class GatewayMetrics:
    """In-process counters and histograms of the gateway, rendered on ``GET /metrics``.

    The proxy calls ``request(...)`` once per answered request (rejections included),
    ``rejection(reason, tenant)`` for each request refused by the gateway itself (auth,
    limits, routing: the envelope's code as reason), ``upstream_latency(s)`` with the time
    from sending a request upstream to its response headers, and either passes
    ``inflight_source`` (e.g. ``limiter.inflight``: read at render time, zero cost per
    request) or calls ``inflight_inc()``/``inflight_dec()``.
    """

    __slots__ = (
        "_completion",
        "_inflight_source",
        "_latency",
        "_latency_buckets",
        "_max_models",
        "_models",
        "_prompt",
        "_queue",
        "_rejections",
        "_rejections_by_reason",
        "_requests",
        "_requests_total",
        "_routes",
        "_streamed",
        "_ttft",
        "_ttft_buckets",
        "_upstream",
        "inflight",
        "tenant_labels",
    )

    def __init__(
        self,
        *,
        tenant_labels: bool = True,
        inflight_source: Callable[[], int] | None = None,
        latency_buckets: tuple[float, ...] = LATENCY_BUCKETS,
        ttft_buckets: tuple[float, ...] = TTFT_BUCKETS,
        max_models: int = 256,
    ) -> None:
        self.tenant_labels = tenant_labels
        self.inflight = 0
        self._inflight_source = inflight_source
        self._latency_buckets = tuple(sorted(latency_buckets))
        self._ttft_buckets = tuple(sorted(ttft_buckets))
        self._max_models = max_models
        self._models: set[str] = set()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._routes: dict[tuple[str, int], int] = {}
        self._streamed: dict[tuple[str, str], int] = {}
        self._prompt: dict[tuple[str, str], int] = {}
        self._completion: dict[tuple[str, str], int] = {}
        self._rejections: dict[tuple[str, str], int] = {}
        # What summary() reads: kept beside the labelled series, O(1) to read.
        self._requests_total = 0
        self._rejections_by_reason: dict[str, int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._ttft: dict[str, _Histogram] = {}
        self._upstream = _Histogram(self._latency_buckets)
        self._queue: dict[str, _Histogram] = {}

    # -- recording (hot path) ------------------------------------------------------------

    def request(
        self,
        model: str,
        tenant: str | None,
        status: int,
        duration_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        streamed: bool,
    ) -> None:
        """Count one answered request."""
        if model not in self._models:
            model = self._admit_model(model)
        t = (tenant or "") if self.tenant_labels else ""
        key = (model, t, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        self._requests_total += 1
        mt = (model, t)
        if prompt_tokens:
            self._prompt[mt] = self._prompt.get(mt, 0) + prompt_tokens
        if completion_tokens:
            self._completion[mt] = self._completion.get(mt, 0) + completion_tokens
        if streamed:
            self._streamed[mt] = self._streamed.get(mt, 0) + 1
        hist = self._latency.get(model)
        if hist is None:
            hist = self._latency[model] = _Histogram(self._latency_buckets)
        hist.observe(duration_s)
        if ttft_s is not None:
            hist = self._ttft.get(model)
            if hist is None:
                hist = self._ttft[model] = _Histogram(self._ttft_buckets)
            hist.observe(ttft_s)

    def route(self, name: str, status: int) -> None:
        """Count one answered request on the route ``name`` (a routes-table name)."""
        key = (name, status)
        routes = self._routes
        routes[key] = routes.get(key, 0) + 1

    def _admit_model(self, model: str) -> str:
        if len(model) > MAX_LABEL_LEN or len(self._models) >= self._max_models:
            return OTHER_MODEL
        self._models.add(model)
        return model

    def rejection(self, reason: str, tenant: str | None) -> None:
        """Count a request the gateway refused itself (``reason``: the error code)."""
        reason = _bounded(reason)
        key = (reason, (tenant or "") if self.tenant_labels else "")
        self._rejections[key] = self._rejections.get(key, 0) + 1
        by_reason = self._rejections_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def upstream_latency(self, s: float) -> None:
        """Seconds from sending a request upstream to its response headers."""
        self._upstream.observe(s)

    def queue_wait(self, model: str | None, s: float) -> None:
        """Seconds a request waited in a queue (only requests that waited: not the hot
        path). Models are bounded as for ``request``."""
        if model is None:
            model = OTHER_MODEL
        elif model not in self._models:
            model = self._admit_model(model)
        hist = self._queue.get(model)
        if hist is None:
            hist = self._queue[model] = _Histogram(self._latency_buckets)
        hist.observe(s)

    def summary(self) -> dict[str, Any]:
        """The totals ``top`` shows: requests answered (rejections included) and rejections
        by reason, read from the counters (never from the rendered text)."""
        return {
            "requests_total": self._requests_total,
            "rejections": dict(self._rejections_by_reason),
        }

    def inflight_inc(self) -> None:
        self.inflight += 1

    def inflight_dec(self) -> None:
        self.inflight -= 1

    # -- exposition ----------------------------------------------------------------------

    def render(self, extra_lines: str = "") -> str:
        """The Prometheus text exposition, with ``extra_lines`` (other families, e.g. the
        daemon's instance states, already formatted) appended."""
        out: list[str] = []
        tl = self.tenant_labels

        def tenant_part(tenant: str) -> str:
            return f',tenant="{_esc(tenant)}"' if tl else ""

        name = PREFIX + "requests_total"
        header(out, name, "counter", "Requests answered by the gateway, by status.")
        for (model, tenant, status), n in sorted(self._requests.items()):
            labels = f'model="{_esc(model)}",status="{status}"{tenant_part(tenant)}'
            out.append(f"{name}{{{labels}}} {n}")

        name = PREFIX + "route_requests_total"
        header(out, name, "counter", "Requests answered by the gateway, by route and status.")
        for (route, status), n in sorted(self._routes.items()):
            out.append(f'{name}{{route="{_esc(route)}",status="{status}"}} {n}')

        for family, help_text, table in (
            ("streamed_requests_total", "Requests answered as a stream.", self._streamed),
            ("prompt_tokens_total", "Prompt tokens of answered requests.", self._prompt),
            (
                "completion_tokens_total",
                "Completion tokens produced (streams: chunks seen).",
                self._completion,
            ),
        ):
            name = PREFIX + family
            header(out, name, "counter", help_text)
            for (model, tenant), n in sorted(table.items()):
                out.append(f'{name}{{model="{_esc(model)}"{tenant_part(tenant)}}} {n}')

        name = PREFIX + "rejections_total"
        header(out, name, "counter", "Requests refused by the gateway, by reason.")
        for (reason, tenant), n in sorted(self._rejections.items()):
            out.append(f'{name}{{reason="{_esc(reason)}"{tenant_part(tenant)}}} {n}')

        name = PREFIX + "inflight_requests"
        header(out, name, "gauge", "Requests admitted and not yet finished.")
        source = self._inflight_source
        out.append(f"{name} {source() if source is not None else self.inflight}")

        for family, help_text, hists in (
            (
                "request_duration_seconds",
                "Time from request to the last byte answered.",
                self._latency,
            ),
            (
                "time_to_first_token_seconds",
                "Time from request to the first token (first chunk of a stream).",
                self._ttft,
            ),
            (
                "queue_seconds",
                "Time requests waited in a queue (for a loading model or a gateway slot).",
                self._queue,
            ),
        ):
            name = PREFIX + family
            header(out, name, "histogram", help_text)
            for model, hist in sorted(hists.items()):
                out.extend(hist.lines(name, f'model="{_esc(model)}"'))

        name = PREFIX + "upstream_latency_seconds"
        header(out, name, "histogram", "Time from sending upstream to the response headers.")
        out.extend(self._upstream.lines(name, ""))

        text = "\n".join(out) + "\n"
        if extra_lines:
            text += extra_lines if extra_lines.endswith("\n") else extra_lines + "\n"
        return text


def _bounded(value: str) -> str:
    """``value``, or if longer than MAX_LABEL_LEN its start and a hash of the whole."""
    if len(value) <= MAX_LABEL_LEN:
        return value
    digest = hashlib.blake2b(value.encode(errors="replace"), digest_size=6).hexdigest()
    return value[: MAX_LABEL_LEN - 13] + "~" + digest


def _esc(value: str) -> str:
    """A label value, bounded in length and escaped as the text format requires."""
    return escape(_bounded(value))
