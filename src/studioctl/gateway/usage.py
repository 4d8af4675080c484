"""One usage row per gateway request, handed to a sink that never blocks the caller.

The proxy builds a ``UsageRecord`` when a request ends (success, error, rejection,
timeout or client disconnect) and calls ``sink.submit(row)``. ``store.usage.UsageWriter``
is the real sink: a background thread batching rows into SQLite, so a slow disk never
delays a response. ``MemoryUsageSink`` keeps rows in a list (tests); ``NullUsageSink``
drops them (a gateway run without a store).

There is one record type: ``UsageRecord`` here *is* a ``store.usage.UsageRecord`` (the
writer accepts only those), with the gateway's positional field order for the hot path,
and mutable like the gateway interface says (the proxy may correct ``prompt_tokens``
before it submits the row; nobody touches a row after ``submit``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol

from studioctl.store.usage import UsageRecord as _StoredUsageRecord

__all__ = ["MemoryUsageSink", "NullUsageSink", "UsageRecord", "UsageSink"]


class UsageRecord(_StoredUsageRecord):
    """A usage row; positional in this order (all fields also by keyword)::

    ts              wall-clock time (time.time()) the request arrived
    tenant_id       None: refused before a tenant was known (401)
    key_prefix      the display prefix of the key used
    model           as the client named it
    instance_id     None: never routed
    status          HTTP status answered to the client
    prompt_tokens, completion_tokens
    ttft_ms         time to the first token/chunk; None when none was produced
    duration_ms
    streamed        answered as a stream
    disconnected    the client went away before the end
    error_code      the envelope's code (limit_rpm, upstream_timeout, …) or None
    """

    __slots__ = ()

    # Re-declared (annotations only: the slots are the stored record's) so that type
    # checkers, too, see the fields as writable.
    ts: float
    tenant_id: str | None
    key_prefix: str | None
    model: str | None
    instance_id: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float
    streamed: bool
    disconnected: bool
    error_code: str | None

    def __init__(
        self,
        ts: float,
        tenant_id: str | None,
        key_prefix: str | None,
        model: str | None,
        instance_id: str | None,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        ttft_ms: float | None,
        duration_ms: float,
        streamed: bool,
        disconnected: bool,
        error_code: str | None,
    ) -> None:
        super().__init__(
            status=status,
            ts=ts,
            tenant_id=tenant_id,
            key_prefix=key_prefix,
            model=model,
            instance_id=instance_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_ms=ttft_ms,
            duration_ms=duration_ms,
            streamed=streamed,
            disconnected=disconnected,
            error_code=error_code,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        # The stored record is frozen; the gateway's own may be corrected before submit.
        object.__setattr__(self, name, value)

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
