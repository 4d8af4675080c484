"""The usage record: one gateway request as accounted, and what makes a row storable.

``UsageRecord`` is the one record type: the gateway builds it by keyword when a request
ends. The store reads any object with the same attributes (``UsageRow``), and checks each
one before it joins a batch (``invalid_reason``): one bad row must not fail the rows
written with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The columns of the ``usage`` table a row fills, in insert order.
USAGE_COLUMNS = (
    "ts",
    "tenant_id",
    "key_prefix",
    "model",
    "instance_id",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "duration_ms",
    "streamed",
    "disconnected",
    "error_code",
    "queue_ms",
    "request_id",
)
#: Columns a row may lack (rows built before they existed): stored as NULL.
_OPTIONAL = frozenset({"request_id"})


class UsageRow(Protocol):
    """What the store reads from a usage row (``UsageRecord`` below, or any object with
    these attributes)."""

    @property
    def ts(self) -> float: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def key_prefix(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def instance_id(self) -> str | None: ...
    @property
    def status(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def ttft_ms(self) -> float | None: ...
    @property
    def duration_ms(self) -> float: ...
    @property
    def streamed(self) -> bool: ...
    @property
    def disconnected(self) -> bool: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def queue_ms(self) -> float: ...
    @property
    def request_id(self) -> str | None: ...


# Not frozen: a frozen dataclass's __init__ sets each of its 17 fields through
# object.__setattr__, ~3 µs per request on the gateway's hot path (a plain one: under 1).
# Nothing changes a record once built: the gateway submits it, the writer's thread reads it.
@dataclass(slots=True, kw_only=True)
class UsageRecord:
    """One gateway request, as accounted. ``tenant_id`` None: refused before auth."""

    status: int  # the HTTP status answered
    ts: float = field(default_factory=time.time)  # the request's time (it picks the minute)
    tenant_id: str | None = None
    key_prefix: str | None = None
    model: str | None = None
    instance_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    streamed: bool = False
    disconnected: bool = False
    error_code: str | None = None
    queue_ms: float = 0.0  # time waited in a gateway queue (a loading model, a busy gateway)
    request_id: str | None = None  # the X-Request-Id answered (gateway.context)
    # With log_bodies only (a recipe's or tenant's): what was sent and answered (a stream:
    # its assembled text), stored apart and capped by the store (usage.body_max_bytes).
    request_body: str | None = field(default=None, repr=False)
    response_body: str | None = field(default=None, repr=False)


def row_params(r: UsageRow) -> tuple[Any, ...]:
    """The values of ``USAGE_COLUMNS`` for one row (flags as 0/1)."""
    return (
        r.ts,
        r.tenant_id,
        r.key_prefix,
        r.model,
        r.instance_id,
        r.status,
        r.prompt_tokens,
        r.completion_tokens,
        r.ttft_ms,
        r.duration_ms,
        int(r.streamed),
        int(r.disconnected),
        r.error_code,
        r.queue_ms,
        getattr(r, "request_id", None),
    )


_MISSING = object()


def invalid_reason(row: object) -> str | None:
    """Why ``row`` cannot be stored, or None."""
    if type(row) is not UsageRecord:  # a record has every column (checked per row: skip it)
        missing = [
            name
            for name in USAGE_COLUMNS
            if name not in _OPTIONAL and getattr(row, name, _MISSING) is _MISSING
        ]
        if missing:
            return f"{type(row).__name__} has no {', '.join(missing)}"
    for name in ("status", "prompt_tokens", "completion_tokens"):
        value = getattr(row, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name}={value!r}"
    for name in ("ts", "duration_ms", "ttft_ms", "queue_ms"):
        value = getattr(row, name)
        if value is None and name == "ttft_ms":
            continue
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            return f"{name}={value!r}"
    for name in ("tenant_id", "key_prefix", "model", "instance_id", "error_code", "request_id"):
        value = getattr(row, name, None)
        if value is not None and not isinstance(value, str):
            return f"{name}={value!r}"
    return None
