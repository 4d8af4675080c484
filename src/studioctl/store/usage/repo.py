"""``UsageRepo``: the ``usage`` and ``usage_rollup`` tables.

``insert_many`` stores request rows and adds them into the rollup in the same
transaction. ``summary`` reads the coarsest rollup periods that fit inside its window and
finer ones only at its edges (a 30-day window: at most 29 days + 46 hours + 10 ten-minute
periods + 18 minutes) instead of every request: its time grows with the number of tenants
and models, not of requests. Windows are exact to the minute.
(benchmarks/usage_summary.py: a million rows, 30 days.)
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from studioctl.store.db import Database, Row
from studioctl.store.usage.log import cap_body
from studioctl.store.usage.record import USAGE_COLUMNS, UsageRecord, UsageRow, row_params
from studioctl.store.usage.retention import Retention
from studioctl.store.usage.rollup import (
    MAX_COLUMNS,
    N_VALUES,
    SCOPE_ALL,
    SCOPE_MODEL,
    SCOPE_PAIR,
    SCOPE_TENANT,
    VALUE_COLUMNS,
    UsageStats,
    cover,
    merge,
    rollup_rows,
    stats_of,
)


@dataclass(frozen=True)
class UsageSummary:
    window_s: float
    start: float  # the window covers [start, end]; start is on a minute boundary
    end: float
    tenant: str | None  # the filters asked for
    model: str | None
    total: UsageStats
    by_tenant: dict[str, UsageStats]  # '' = requests without a tenant (refused before auth)
    by_model: dict[str, UsageStats]  # '' = requests without a model

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "start": self.start,
            "end": self.end,
            "tenant": self.tenant,
            "model": self.model,
            "total": self.total.to_dict(),
            "by_tenant": {k: v.to_dict() for k, v in self.by_tenant.items()},
            "by_model": {k: v.to_dict() for k, v in self.by_model.items()},
        }


_UPSERT = (
    "INSERT INTO usage_rollup (res, scope, period, tenant_id, model, "
    f"{', '.join(VALUE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, {', '.join('?' for _ in VALUE_COLUMNS)})"
    " ON CONFLICT (res, scope, period, tenant_id, model) DO UPDATE SET "
    + ", ".join(
        f"{c} = GREATEST(usage_rollup.{c}, excluded.{c})"
        if c in MAX_COLUMNS
        else f"{c} = usage_rollup.{c} + excluded.{c}"
        for c in VALUE_COLUMNS
    )
)
_INSERT = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in USAGE_COLUMNS)})"
)
_SELECT_SUMS = ", ".join(
    f"MAX({c}) AS {c}" if c in MAX_COLUMNS else f"SUM({c}) AS {c}" for c in VALUE_COLUMNS
)


def _record(row: Row) -> UsageRecord:
    return UsageRecord(
        ts=row["ts"],
        tenant_id=row["tenant_id"],
        key_prefix=row["key_prefix"],
        model=row["model"],
        instance_id=row["instance_id"],
        status=row["status"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        ttft_ms=row["ttft_ms"],
        duration_ms=row["duration_ms"],
        streamed=bool(row["streamed"]),
        disconnected=bool(row["disconnected"]),
        error_code=row["error_code"],
        queue_ms=row["queue_ms"],
    )


def _rollup_query(
    start_min: int, end_min: int, tenant: str | None, model: str | None
) -> tuple[str, list[Any]]:
    """The SELECT summing the rollup rows that cover the minutes [start_min, end_min)."""
    ranges = cover(start_min * 60, end_min * 60)
    if tenant is None and model is None:
        # Unfiltered: the per-tenant, per-model and overall rows, not every pair.
        scopes = f"scope IN ({SCOPE_TENANT}, {SCOPE_MODEL}, {SCOPE_ALL})"
    else:
        scopes = f"scope = {SCOPE_PAIR}"
    where = " OR ".join(f"(res = ? AND {scopes} AND period >= ? AND period < ?)" for _ in ranges)
    params: list[Any] = [x for r in ranges for x in r]
    sql = f"SELECT scope, tenant_id, model, {_SELECT_SUMS} FROM usage_rollup WHERE ({where})"
    if tenant is not None:
        sql += " AND tenant_id = ?"
        params.append(tenant)
    if model is not None:
        sql += " AND model = ?"
        params.append(model)
    return sql + " GROUP BY scope, tenant_id, model", params


_INSERT_BODY = (
    "INSERT INTO request_bodies (request_id, ts, request, response, truncated)"
    " VALUES (?, ?, ?, ?, ?)"
)


class UsageRepo:
    def __init__(
        self, db: Database, *, retention: Retention | None = None, body_max_bytes: int = 65536
    ) -> None:
        """``retention``: how far back each rollup is kept (summaries of longer windows round
        their far edge, see ``retention``); ``body_max_bytes``: the cap on each stored body."""
        self.db = db
        self.retention = retention if retention is not None else Retention()
        self.body_max_bytes = body_max_bytes

    def _bodies(self, rows: list[UsageRow]) -> list[tuple[Any, ...]]:
        """The ``request_bodies`` rows of the rows that carry bodies (capped)."""
        out: list[tuple[Any, ...]] = []
        cap = self.body_max_bytes
        for r in rows:
            req = getattr(r, "request_body", None)
            resp = getattr(r, "response_body", None)
            if req is None and resp is None:
                continue
            cut_req = cut_resp = False
            if req is not None:
                req, cut_req = cap_body(req, cap)
            if resp is not None:
                resp, cut_resp = cap_body(resp, cap)
            out.append((r.request_id, r.ts, req, resp, int(cut_req or cut_resp)))
        return out

    def insert_many(self, rows: Iterable[UsageRow]) -> int:
        """Insert rows and add them into the rollup, in one transaction. Returns the count."""
        rows = list(rows)
        if not rows:
            return 0
        raw = [row_params(r) for r in rows]
        upserts = rollup_rows(rows)
        bodies = self._bodies(rows)
        with self.db.transaction():
            self.db.executemany(_INSERT, raw)
            self.db.executemany(_UPSERT, upserts)
            if bodies:
                self.db.executemany(_INSERT_BODY, bodies)
        return len(rows)

    def summary(
        self,
        window_s: float,
        *,
        tenant: str | None = None,
        model: str | None = None,
        now: float | None = None,
    ) -> UsageSummary:
        """Totals and per-tenant / per-model stats over the last ``window_s`` seconds.

        The window is whole minutes: the current one and the ``ceil(window_s / 60) - 1``
        before it. A start older than a rollup resolution keeps (``retention.horizons``)
        is rounded down to the next coarser period: those fine rows are pruned.
        """
        if window_s <= 0:
            raise ValueError(f"usage window must be positive, got {window_s}")
        end = time.time() if now is None else now
        end_min = int(end // 60) + 1
        start_min = self._kept_start(end_min - math.ceil(window_s / 60), end)
        total = [0.0] * N_VALUES
        by_tenant: dict[str, list[float]] = {}
        by_model: dict[str, list[float]] = {}
        cur = self.db.execute(*_rollup_query(start_min, end_min, tenant, model))
        # Columns by name, resolved once: Row's own name lookup is a linear scan,
        # too slow over 110 columns x every row.
        index = {d[0]: i for i, d in enumerate(cur.description)}
        value_idx = [index[c] for c in VALUE_COLUMNS]
        scope_i, tenant_i, model_i = index["scope"], index["tenant_id"], index["model"]
        for row in cur:
            v = [row[i] for i in value_idx]
            scope = row[scope_i]
            if scope in (SCOPE_PAIR, SCOPE_ALL):
                merge(total, v)
            if scope in (SCOPE_PAIR, SCOPE_TENANT):
                merge(by_tenant.setdefault(row[tenant_i], [0.0] * N_VALUES), v)
            if scope in (SCOPE_PAIR, SCOPE_MODEL):
                merge(by_model.setdefault(row[model_i], [0.0] * N_VALUES), v)
        return UsageSummary(
            window_s=window_s,
            start=float(start_min * 60),
            end=end,
            tenant=tenant,
            model=model,
            total=stats_of(total),
            by_tenant={k: stats_of(v) for k, v in sorted(by_tenant.items())},
            by_model={k: stats_of(v) for k, v in sorted(by_model.items())},
        )

    def _kept_start(self, start_min: int, now: float) -> int:
        """``start_min`` rounded down to the finest resolution still kept at that age."""
        start = start_min * 60
        for res, keep_s in self.retention.horizons().items():
            if start >= now - keep_s:
                return start // res * res // 60
        return start // 86400 * 86400 // 60

    def rows(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
        model: str | None = None,
        limit: int = 1000,
    ) -> builtins.list[UsageRecord]:
        """Raw request rows, newest first (for inspection and export)."""
        where: list[str] = []
        params: list[Any] = []
        for cond, value in (
            ("ts >= ?", since),
            ("ts < ?", until),
            ("tenant_id = ?", tenant),
            ("model = ?", model),
        ):
            if value is not None:
                where.append(cond)
                params.append(value)
        sql = "SELECT * FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        return [_record(r) for r in self.db.query(sql, [*params, limit])]

    def close_thread(self) -> None:
        """Close the calling thread's connection (the writer thread, as it ends)."""
        self.db.close_thread()
