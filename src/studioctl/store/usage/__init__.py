"""Usage accounting: one row per gateway request, plus a rollup that keeps summaries cheap.

- ``record``: ``UsageRecord``, the one usage record, and the checks a row must pass.
- ``rollup``: the histogram and rollup arithmetic (periods, scopes, quantiles), no I/O.
- ``repo``: ``UsageRepo``, inserts (rows + rollup in one transaction) and summaries.
- ``writer``: ``UsageWriter``, batches rows from the request path into a ``UsageRowStore``
  from its own thread, and prunes between batches.
- ``log``: ``RequestLog``, the request log (rows by filter, followed, one request's bodies).
- ``retention``: ``Pruner``, what is past ``usage.retention_days`` deleted in batches.
"""

from __future__ import annotations

from studioctl.store.usage.log import MAX_ROWS, RequestFilter, RequestLog
from studioctl.store.usage.record import UsageRecord, UsageRow
from studioctl.store.usage.repo import UsageRepo, UsageSummary
from studioctl.store.usage.retention import Pruner, Retention
from studioctl.store.usage.rollup import VALUE_COLUMNS, UsageStats
from studioctl.store.usage.writer import UsageRowStore, UsageWriter

__all__ = [
    "MAX_ROWS",
    "VALUE_COLUMNS",
    "Pruner",
    "RequestFilter",
    "RequestLog",
    "Retention",
    "UsageRecord",
    "UsageRepo",
    "UsageRow",
    "UsageRowStore",
    "UsageStats",
    "UsageSummary",
    "UsageWriter",
]
