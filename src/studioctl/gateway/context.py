"""One proxied request as it goes through the gateway: what it took and how far it got.

``app.GatewayApp`` creates a ``RequestContext`` per ``POST /v1/...``; admission fills in the
tenant, model, admission (slot, RPM, TPM) and upstream; the relays set ``started``,
``finished`` and read ``prompt``; accounting reads it on every finish path (one usage row,
one metrics record, what was taken given back). The disconnect watcher and
``GatewayApp.drain`` set ``gone``/``drained`` and cancel ``task``.

A plain class with ``__slots__`` (no dataclass, no validation): one is built per request on
the hot path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from studioctl.gateway.limits import Admission
from studioctl.gateway.routing import Upstream
from studioctl.tenants import TenantContext

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "Headers", "RequestContext"]

# The proxied endpoints.
CHAT, COMPLETIONS, EMBEDDINGS = 0, 1, 2

Headers = list[tuple[bytes, bytes]]


class RequestContext:
    """One proxied request (see the module docstring)."""

    __slots__ = (
        "accounted",
        "admission",
        "body",
        "client_usage",
        "drained",
        "endpoint",
        "exact",
        "extra",
        "finished",
        "gone",
        "known",
        "model",
        "prompt",
        "queue_s",
        "started",
        "stream",
        "t0",
        "task",
        "tenant",
        "ts",
        "ttft",
        "upstream",
    )

    def __init__(
        self, task: asyncio.Task[Any], endpoint: int, t0: float, ts: float, extra: Headers | None
    ) -> None:
        self.task = task
        self.endpoint = endpoint
        self.t0 = t0  # perf_counter() at arrival: durations and time to first token
        self.ts = ts  # time.time() at arrival: the usage row's time
        self.extra = extra  # CORS headers for every answer, or None
        self.tenant: TenantContext | None = None
        self.model: str | None = None  # a valid (bounded) model name, once seen
        self.known = False  # the route table knows the model: it may be a metrics label
        self.admission: Admission | None = None
        self.upstream: Upstream | None = None  # set once the request is sent upstream
        self.body: dict[str, Any] | None = None  # the parsed body (a stream's exact count)
        self.prompt = 0  # prompt tokens as measured before sending
        self.exact = False  # ``prompt`` is the engine's count, not the estimate
        self.stream = False
        self.client_usage = True  # a stream: the client asked for the usage chunk
        self.ttft: float | None = None  # seconds to the first streamed bytes, once sent
        self.started = False  # the response head was sent
        self.finished = False  # the final response message is being sent: leave it be
        self.gone = False  # the client went away; ``task`` was cancelled for it
        self.drained = False  # GatewayApp.drain ended it; ``task`` was cancelled for it
        self.accounted = False  # the usage row and metrics are written
        self.queue_s = 0.0  # seconds waited in a queue (queue.py), the usage row's queue_ms
