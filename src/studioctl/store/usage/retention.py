"""Usage retention: old rows deleted in small batches, so the database stops growing.

What is kept, counted back from now:

- request rows (``usage``) and the minute and 10-minute rollups: ``usage.retention_days``
  (so any window up to it is exact to the minute);
- hour rollups: ``HOUR_KEEP_DAYS`` (at least the retention);
- day rollups: ``DAY_KEEP_DAYS``, the longest window a summary takes (``api.params``);
- stored bodies (``request_bodies``): ``usage.body_retention_days``.

A summary whose window starts before a resolution's horizon reads it from the coarser
rollups that are kept (``UsageRepo.summary`` rounds that edge down to the hour, or the day).

``Pruner.step`` deletes at most one batch and returns how many rows went: the usage writer
calls it between its inserts (its own thread, off the request path) until it returns 0, so
a backlog of millions of rows never holds the write lock for long. Freed pages go to
SQLite's free list and are reused by the next inserts: the file stops growing once the
rows written per day match the rows pruned per day.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from studioctl.store.db import Database

__all__ = ["DAY_KEEP_DAYS", "HOUR_KEEP_DAYS", "Pruner", "Retention"]

HOUR_KEEP_DAYS = 400
DAY_KEEP_DAYS = 3660
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How many days each kind of row is kept (see the module docstring)."""

    days: float = 90.0  # request rows, minute and 10-minute rollups (usage.retention_days)
    hour_days: float = HOUR_KEEP_DAYS
    day_days: float = DAY_KEEP_DAYS

    def horizons(self) -> dict[int, float]:
        """Rollup resolution (s) → how many seconds back its rows are kept, finest first."""
        keep = self.days * _DAY
        hours = max(keep, self.hour_days * _DAY)
        return {60: keep, 600: keep, 3600: hours, 86400: max(hours, self.day_days * _DAY)}


class Pruner:
    """Deletes what is past retention, one batch per :meth:`step` (see the module)."""

    def __init__(
        self,
        db: Database,
        *,
        retention: Retention,
        body_retention_days: float,
        batch: int = 2000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.retention = retention
        self.body_retention_days = body_retention_days
        self.batch = batch
        self.clock = clock
        self.deleted = 0  # rows deleted so far (every table)

    def step(self) -> int:
        """Delete at most one batch from the first table that has rows past retention;
        the count (0: nothing left to delete)."""
        now = self.clock()
        n = self._usage(now - self.retention.days * _DAY)
        if not n:
            n = self._bodies(now - self.body_retention_days * _DAY)
        if not n:
            n = self._rollup(now)
        self.deleted += n
        return n

    def run(self) -> int:
        """Every batch until nothing is past retention (tests, a manual prune)."""
        total = 0
        while n := self.step():
            total += n
        return total

    def _delete(self, sql: str, params: tuple[object, ...]) -> int:
        with self.db.transaction():
            return int(self.db.execute(sql, params).rowcount)

    def _usage(self, cutoff: float) -> int:
        return self._delete(
            "DELETE FROM usage WHERE id IN (SELECT id FROM usage WHERE ts < ? LIMIT ?)",
            (cutoff, self.batch),
        )

    def _bodies(self, cutoff: float) -> int:
        return self._delete(
            "DELETE FROM request_bodies WHERE rowid IN"
            " (SELECT rowid FROM request_bodies WHERE ts < ? LIMIT ?)",
            (cutoff, self.batch),
        )

    def _rollup(self, now: float) -> int:
        for res, keep_s in self.retention.horizons().items():
            first_kept = int((now - keep_s) // res)
            n = self._delete(
                "DELETE FROM usage_rollup WHERE (res, scope, period, tenant_id, model) IN"
                " (SELECT res, scope, period, tenant_id, model FROM usage_rollup"
                "  WHERE res = ? AND scope IN (0, 1, 2, 3) AND period < ? LIMIT ?)",
                (res, first_kept, self.batch),
            )
            if n:
                return n
        return 0
