"""One usage row per gateway request, handed to a sink that never blocks the caller.

The proxy builds a ``UsageRecord`` when a request ends (success, error, rejection,
timeout or client disconnect) and calls ``sink.submit(row)``. ``store.usage.UsageWriter``
is the real sink: a background thread batching rows into SQLite, so a slow disk never
delays a response. ``MemoryUsageSink`` keeps rows in a list (tests); ``NullUsageSink``
drops them (a gateway run without a store).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["MemoryUsageSink", "NullUsageSink", "UsageRecord", "UsageSink"]


@dataclass(slots=True)
class UsageRecord:
    ts: float  # wall-clock time the request arrived (time.time())
    tenant_id: str | None  # None: refused before a tenant was known (401)
    key_prefix: str | None
    model: str  # as the client named it
    instance_id: str | None  # None: never routed
    status: int  # HTTP status answered to the client
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None  # time to the first token/chunk; None when none was produced
    duration_ms: float
    streamed: bool
    disconnected: bool  # the client went away before the end
    error_code: str | None  # the envelope's code (limit_rpm, upstream_timeout, …) or None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UsageSink(Protocol):
    def submit(self, row: UsageRecord) -> None:
        """Take a row; must return at once and never do I/O on the caller's thread."""


class MemoryUsageSink:
    """Keeps every row in ``rows`` (tests; unbounded, so not for a long-running gateway)."""

    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    def submit(self, row: UsageRecord) -> None:
        self.rows.append(row)


class NullUsageSink:
    """Drops every row."""

    def submit(self, row: UsageRecord) -> None:
        return None
