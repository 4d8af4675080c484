"""Usage accounting: one row per gateway request, plus a rollup that keeps summaries cheap.

Every insert also adds into ``usage_rollup``, in the same transaction, at four
resolutions (minute, 10 minutes, hour, day) and four scopes (per tenant and model, per
tenant, per model, everything). A summary over a window then reads the coarsest periods
that fit inside it and finer ones only at its edges (a 30-day window: at most 29 days +
46 hours + 10 ten-minute periods + 18 minutes) instead of every request: the time of
``summary()`` grows with the number of tenants and models, not of requests. Windows
are exact to the minute. (benchmarks/usage_summary.py: a million rows, 30 days.)

Latency and TTFT percentiles come from fixed, log-spaced histogram buckets (8 per decade
from 1 ms to 12.5 min, so each bucket is 33 % wide; interpolated inside the bucket,
within a few % on real distributions), so they can be added across periods. Latency
counts successful requests that the client did not abandon; TTFT counts successful
requests that had a first token.

``UsageWriter`` takes rows from the request path without blocking it and writes them in
batches every ~20 ms from its own thread.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from studioctl.store.db import Database
from studioctl.store.migrations import USAGE_HIST_BUCKETS

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger(__name__)

#: Upper bounds (ms) of the histogram buckets; one more bucket holds everything above.
#: Bucket i counts values in (BOUNDS_MS[i-1], BOUNDS_MS[i]].
BOUNDS_MS: tuple[float, ...] = tuple(10 ** (k / 8) for k in range(USAGE_HIST_BUCKETS - 1))
N_BUCKETS = len(BOUNDS_MS) + 1
assert N_BUCKETS == USAGE_HIST_BUCKETS  # the layout is fixed by migration m003

#: Rollup resolutions in seconds, finest first.
RESOLUTIONS: tuple[int, ...] = (60, 600, 3600, 86400)

#: What a rollup row adds up (its ``scope`` column): per (tenant, model) pair, per
#: tenant, per model, or everything. A filtered summary reads pairs; an unfiltered one
#: reads the others (tenants + models + 1 rows per period, not tenants x models).
SCOPE_PAIR, SCOPE_TENANT, SCOPE_MODEL, SCOPE_ALL = 0, 1, 2, 3

# The rollup's value columns, in the order of the accumulator vectors below.
_SUMS = (
    "requests",
    "errors",
    "disconnected",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "lat_count",
    "lat_sum_ms",
    "lat_max_ms",  # combined with max(), not +
    "ttft_count",
    "ttft_sum_ms",
    "ttft_max_ms",  # max()
)
_LAT0 = len(_SUMS)
_TTFT0 = _LAT0 + N_BUCKETS
VALUE_COLUMNS: tuple[str, ...] = (
    *_SUMS,
    *(f"lat_b{i}" for i in range(N_BUCKETS)),
    *(f"ttft_b{i}" for i in range(N_BUCKETS)),
)
_MAX_COLUMNS = frozenset({"lat_max_ms", "ttft_max_ms"})
_N = len(VALUE_COLUMNS)
_MAX_IDX = tuple(i for i, c in enumerate(VALUE_COLUMNS) if c in _MAX_COLUMNS)

_USAGE_COLUMNS = (
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
)


class UsageRow(Protocol):
    """What the store reads from a usage row (``UsageRecord`` below, or the gateway's own
    record type: any object with these attributes)."""

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


@dataclass(frozen=True, slots=True, kw_only=True)
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

    @property
    def is_error(self) -> bool:
        return self.status >= 400 or self.error_code is not None


_MISSING = object()


def _invalid(row: object) -> str | None:
    """Why ``row`` cannot be stored, or None."""
    missing = [name for name in _USAGE_COLUMNS if getattr(row, name, _MISSING) is _MISSING]
    if missing:
        return f"{type(row).__name__} has no {', '.join(missing)}"
    for name in ("status", "prompt_tokens", "completion_tokens"):
        value = getattr(row, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name}={value!r}"
    for name in ("ts", "duration_ms", "ttft_ms"):
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
    for name in ("tenant_id", "key_prefix", "model", "instance_id", "error_code"):
        value = getattr(row, name)
        if value is not None and not isinstance(value, str):
            return f"{name}={value!r}"
    return None


def bucket_of(ms: float) -> int:
    """The histogram bucket index of a duration in milliseconds."""
    return bisect.bisect_left(BOUNDS_MS, ms)


def quantile(buckets: Sequence[int], q: float, max_ms: float) -> float | None:
    """The ``q`` quantile of a bucketed histogram, interpolated geometrically inside its
    bucket (linearly in the first, which starts at 0) and never above ``max_ms``."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    cum = 0
    for i, count in enumerate(buckets):
        if count and cum + count >= rank:
            lo = BOUNDS_MS[i - 1] if i > 0 else 0.0
            hi = BOUNDS_MS[i] if i < len(BOUNDS_MS) else max(max_ms, lo)
            if lo <= max_ms < hi:
                hi = max_ms  # the largest value seen bounds this bucket
            frac = (rank - cum) / count
            if lo <= 0:
                return hi * frac
            return float(lo * (hi / lo) ** frac)
        cum += count
    return max_ms  # pragma: no cover — rank <= total always lands in a bucket


@dataclass(frozen=True)
class UsageStats:
    requests: int = 0
    errors: int = 0
    disconnected: int = 0
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_mean_ms: float | None = None
    latency_max_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}


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


def _stats(v: Sequence[float]) -> UsageStats:
    lat = v[_LAT0:_TTFT0]
    ttft = v[_TTFT0:]
    lat_count, lat_sum, lat_max = int(v[6]), v[7], v[8]
    ttft_max = v[11]
    return UsageStats(
        requests=int(v[0]),
        errors=int(v[1]),
        disconnected=int(v[2]),
        streamed=int(v[3]),
        prompt_tokens=int(v[4]),
        completion_tokens=int(v[5]),
        latency_p50_ms=quantile([int(c) for c in lat], 0.50, lat_max),
        latency_p95_ms=quantile([int(c) for c in lat], 0.95, lat_max),
        latency_mean_ms=lat_sum / lat_count if lat_count else None,
        latency_max_ms=lat_max if lat_count else None,
        ttft_p50_ms=quantile([int(c) for c in ttft], 0.50, ttft_max),
        ttft_p95_ms=quantile([int(c) for c in ttft], 0.95, ttft_max),
    )


def _merge(into: list[float], v: Sequence[float]) -> None:
    """Add ``v`` into ``into`` in place (the max columns take the max)."""
    maxes = [max(into[i], v[i]) for i in _MAX_IDX]
    into[:] = [a + b for a, b in zip(into, v, strict=True)]
    for i, m in zip(_MAX_IDX, maxes, strict=True):
        into[i] = m


def _cover(lo: int, hi: int, level: int = 0) -> builtins.list[tuple[int, int, int]]:
    """Split the seconds [lo, hi) (minute-aligned) into (res, first, end) period ranges,
    coarsest that fit first."""
    coarse = RESOLUTIONS[::-1]
    if lo >= hi:
        return []
    res = coarse[level]
    if level == len(coarse) - 1:
        return [(res, lo // res, hi // res)]
    a = -(-lo // res) * res
    b = hi // res * res
    if a >= b:
        return _cover(lo, hi, level + 1)
    return [*_cover(lo, a, level + 1), (res, a // res, b // res), *_cover(b, hi, level + 1)]


_UPSERT = (
    "INSERT INTO usage_rollup (res, scope, period, tenant_id, model, "
    f"{', '.join(VALUE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, {', '.join('?' for _ in VALUE_COLUMNS)})"
    " ON CONFLICT (res, scope, period, tenant_id, model) DO UPDATE SET "
    + ", ".join(
        f"{c} = max({c}, excluded.{c})" if c in _MAX_COLUMNS else f"{c} = {c} + excluded.{c}"
        for c in VALUE_COLUMNS
    )
)
_INSERT = (
    f"INSERT INTO usage ({', '.join(_USAGE_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _USAGE_COLUMNS)})"
)
_SELECT_SUMS = ", ".join(
    f"MAX({c}) AS {c}" if c in _MAX_COLUMNS else f"SUM({c}) AS {c}" for c in VALUE_COLUMNS
)


def _record(row: sqlite3.Row) -> UsageRecord:
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
    )


class UsageRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, row: UsageRow) -> None:
        self.insert_many([row])

    def insert_many(self, rows: Iterable[UsageRow]) -> int:
        """Insert rows and add them into the rollup, in one transaction. Returns the count."""
        rows = list(rows)
        if not rows:
            return 0
        minutes: dict[tuple[int, str, str], list[float]] = {}
        raw = []
        for r in rows:
            raw.append(
                (
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
                )
            )
            key = (int(r.ts // 60), r.tenant_id or "", r.model or "")
            v = minutes.get(key)
            if v is None:
                v = minutes[key] = [0] * _N
            v[0] += 1
            err = r.status >= 400 or r.error_code is not None
            if err:
                v[1] += 1
            if r.disconnected:
                v[2] += 1
            if r.streamed:
                v[3] += 1
            v[4] += r.prompt_tokens
            v[5] += r.completion_tokens
            if not err and not r.disconnected:
                d = r.duration_ms
                v[6] += 1
                v[7] += d
                if d > v[8]:
                    v[8] = d
                v[_LAT0 + bisect.bisect_left(BOUNDS_MS, d)] += 1
            if not err and r.ttft_ms is not None:
                t = r.ttft_ms
                v[9] += 1
                v[10] += t
                if t > v[11]:
                    v[11] = t
                v[_TTFT0 + bisect.bisect_left(BOUNDS_MS, t)] += 1
        # Each (minute, tenant, model) also adds into its tenant's, its model's and the
        # overall row (scopes 1-3), then every scope into the coarser resolutions.
        scoped: dict[tuple[int, int, str, str], list[float]] = {}
        for (minute, tenant, model), v in minutes.items():
            scoped[(SCOPE_PAIR, minute, tenant, model)] = v
            for skey in (
                (SCOPE_TENANT, minute, tenant, ""),
                (SCOPE_MODEL, minute, "", model),
                (SCOPE_ALL, minute, "", ""),
            ):
                acc = scoped.get(skey)
                if acc is None:
                    scoped[skey] = list(v)
                else:
                    _merge(acc, v)
        upserts: list[tuple[Any, ...]] = [
            (60, scope, m, t, mo, *v) for (scope, m, t, mo), v in scoped.items()
        ]
        for res in RESOLUTIONS[1:]:
            coarse: dict[tuple[int, int, str, str], list[float]] = {}
            for (scope, minute, tenant, model), v in scoped.items():
                ckey = (scope, minute * 60 // res, tenant, model)
                acc = coarse.get(ckey)
                if acc is None:
                    coarse[ckey] = list(v)
                else:
                    _merge(acc, v)
            upserts.extend((res, sc, p, t, mo, *v) for (sc, p, t, mo), v in coarse.items())
        with self.db.transaction():
            self.db.executemany(_INSERT, raw)
            self.db.executemany(_UPSERT, upserts)
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
        before it.
        """
        if window_s <= 0:
            raise ValueError(f"usage window must be positive, got {window_s}")
        end = time.time() if now is None else now
        end_min = int(end // 60) + 1
        start_min = end_min - math.ceil(window_s / 60)
        ranges = _cover(start_min * 60, end_min * 60)
        params: list[Any] = []
        if tenant is None and model is None:
            # Unfiltered: the per-tenant, per-model and overall rows, not every pair.
            scopes = f"scope IN ({SCOPE_TENANT}, {SCOPE_MODEL}, {SCOPE_ALL})"
        else:
            scopes = f"scope = {SCOPE_PAIR}"
        where = " OR ".join(
            f"(res = ? AND {scopes} AND period >= ? AND period < ?)" for _ in ranges
        )
        params = [x for r in ranges for x in r]
        sql = f"SELECT scope, tenant_id, model, {_SELECT_SUMS} FROM usage_rollup WHERE ({where})"
        if tenant is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant)
        if model is not None:
            sql += " AND model = ?"
            params.append(model)
        sql += " GROUP BY scope, tenant_id, model"
        total = [0.0] * _N
        by_tenant: dict[str, list[float]] = {}
        by_model: dict[str, list[float]] = {}
        cur = self.db.execute(sql, params)
        # Columns by name, resolved once: sqlite3.Row's own name lookup is a linear scan,
        # too slow over 110 columns x every row.
        index = {d[0]: i for i, d in enumerate(cur.description)}
        value_idx = [index[c] for c in VALUE_COLUMNS]
        scope_i, tenant_i, model_i = index["scope"], index["tenant_id"], index["model"]
        for row in cur:
            v = [row[i] for i in value_idx]
            scope = row[scope_i]
            if scope in (SCOPE_PAIR, SCOPE_ALL):
                _merge(total, v)
            if scope in (SCOPE_PAIR, SCOPE_TENANT):
                _merge(by_tenant.setdefault(row[tenant_i], [0.0] * _N), v)
            if scope in (SCOPE_PAIR, SCOPE_MODEL):
                _merge(by_model.setdefault(row[model_i], [0.0] * _N), v)
        return UsageSummary(
            window_s=window_s,
            start=float(start_min * 60),
            end=end,
            tenant=tenant,
            model=model,
            total=_stats(total),
            by_tenant={k: _stats(v) for k, v in sorted(by_tenant.items())},
            by_model={k: _stats(v) for k, v in sorted(by_model.items())},
        )

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

    def count(self) -> int:
        row = self.db.query_one("SELECT COUNT(*) AS n FROM usage")
        return int(row["n"]) if row else 0

    def prune(self, older_than_ts: float) -> int:
        """Delete request rows older than ``older_than_ts`` and rollup periods that ended
        before it. Summaries reaching further back are partial. Returns rows deleted."""
        with self.db.transaction():
            n = self.db.execute("DELETE FROM usage WHERE ts < ?", (older_than_ts,)).rowcount
            self.db.execute(
                "DELETE FROM usage_rollup WHERE (period + 1) * res <= ?", (older_than_ts,)
            )
        return n

    def close_thread(self) -> None:
        """Close the calling thread's connection (the writer thread, as it ends)."""
        self.db.close_thread()


# -- the background writer ---------------------------------------------------------------


class UsageSink(Protocol):
    def insert_many(self, rows: Iterable[UsageRow]) -> int: ...

    def close_thread(self) -> None: ...


class _Flush:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


_STOP = object()


def _lower_thread_priority(nice: int = 10) -> None:
    """Make this thread yield the CPU to the event loop's (Linux: nice is per thread).

    Usage is written off the request path; on a busy core its inserts must not delay the
    responses they account for."""
    import os

    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class UsageWriter:
    """Batches usage rows into the store from a thread of its own.

    ``submit()`` only puts the row on an in-memory queue (no lock held for long, no I/O),
    so a slow disk never delays a response. The thread writes what has accumulated every
    ``interval_s``; a kill -9 loses at most that much. A failed write is retried with the
    next batch; beyond ``max_pending`` rows waiting, the oldest are dropped (and counted).

    Close it (which flushes) before closing the Database.
    """

    def __init__(
        self,
        sink: UsageSink,
        *,
        # Short batches: a write burst on the gateway's core shows up in its p99 latency
        # (measured by benchmarks/gateway_overhead.py: +2.1 ms at 100 ms, +1.0 ms at 20 ms).
        interval_s: float = 0.02,
        max_pending: int = 100_000,
        max_batch: int = 20_000,
    ) -> None:
        self._sink = sink
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.max_batch = max_batch
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closed = False
        self.written = 0  # rows written so far
        self.dropped = 0  # rows given up on (store failing for too long, or at shutdown)
        self.failures = 0  # failed write attempts
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._thread.start()

    def submit(self, row: UsageRow) -> None:
        """Queue a row for writing. Never blocks, never touches the disk."""
        if self._closed:
            raise RuntimeError("UsageWriter.submit() after close()")
        self._q.put(row)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything submitted so far. True once written; False on timeout or when
        the rows could not be written."""
        marker = _Flush()
        self._q.put(marker)
        self._wake.set()
        return marker.done.wait(timeout) and marker.ok

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting rows, write what is queued, end the thread."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("usage writer: still writing after %.1f s at close", timeout or 0)

    def __enter__(self) -> UsageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Rows submitted and not yet taken by the thread."""
        return self._q.qsize()

    def _run(self) -> None:
        _lower_thread_priority()
        pending: list[UsageRow] = []
        markers: list[_Flush] = []
        stopping = False
        try:
            while True:
                if not stopping:
                    self._wake.wait(self.interval_s)
                    self._wake.clear()
                more, stop = self._drain(pending, markers)
                stopping = stopping or stop
                if pending and not self._write(pending):
                    if stopping:
                        log.error("usage writer: %d rows lost at shutdown", len(pending))
                        self.dropped += len(pending)
                        pending.clear()
                        break
                    if len(pending) > self.max_pending:
                        lost = len(pending) - self.max_pending
                        del pending[:lost]
                        self.dropped += lost
                        log.error("usage writer: store failing, dropped %d oldest rows", lost)
                if not pending:
                    for m in markers:
                        m.ok = True
                        m.done.set()
                    markers.clear()
                if stopping and not more:
                    break
                if more:
                    self._wake.set()  # a full batch was taken: go again without waiting
        finally:
            for m in markers:
                m.done.set()  # not ok: those rows were not written
            self._sink.close_thread()

    def _drain(self, pending: list[UsageRow], markers: list[_Flush]) -> tuple[bool, bool]:
        """Move queued items into ``pending``: (batch full so more may wait, stop seen)."""
        taken = 0
        stop = False
        while taken < self.max_batch:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return False, stop
            if item is _STOP:
                stop = True
            elif isinstance(item, _Flush):
                markers.append(item)
            else:
                problem = _invalid(item)
                if problem is None:
                    pending.append(item)  # type: ignore[arg-type]
                    taken += 1
                else:
                    # A bad row would fail every batch it is in: drop it alone, loudly.
                    self.dropped += 1
                    log.error("usage writer: dropped a bad row (%s): %r", problem, item)
        return True, stop

    def _write(self, pending: list[UsageRow]) -> bool:
        try:
            self._sink.insert_many(pending)
        except Exception:
            self.failures += 1
            log.exception("usage writer: writing %d rows failed (will retry)", len(pending))
            return False
        self.written += len(pending)
        pending.clear()
        return True
