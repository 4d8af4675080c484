"""Where the gateway hands its usage rows: a queue that never blocks the caller.

Every request ends with one ``store.usage.UsageRecord``, built by keyword in one place
(``accounting.usage_record``), and ``queue.submit(row)``. ``store.usage.UsageWriter`` is
the real queue: a background thread batching rows into SQLite, so a slow disk never delays
a response (the store's own ``UsageSink`` is what that writer writes *to*). Here:
``MemoryUsageQueue`` keeps rows in a list (tests); ``NullUsageQueue`` drops them (a gateway
run without a store).
"""

from __future__ import annotations

from typing import Protocol

from studioctl.store.usage import UsageRecord

__all__ = ["MemoryUsageQueue", "NullUsageQueue", "UsageQueue"]


class UsageQueue(Protocol):
    def submit(self, row: UsageRecord) -> None:
        """Take a row; must return at once and never do I/O on the caller's thread."""


class MemoryUsageQueue:
    """Keeps every row in ``rows`` (tests; unbounded, so not for a long-running gateway)."""

    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []

    def submit(self, row: UsageRecord) -> None:
        self.rows.append(row)


class NullUsageQueue:
    """Drops every row."""

    def submit(self, row: UsageRecord) -> None:
        return None
