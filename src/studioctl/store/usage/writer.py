"""``UsageWriter``: takes usage rows from the request path without blocking it.

The gateway calls ``submit(row)`` as a request ends; a thread of the writer's own writes
what has accumulated every ~20 ms, in one transaction, to a ``UsageRowStore`` (the
``UsageRepo``). The same thread prunes what is past retention (``retention.Pruner``), one
small batch between two writes, every ``prune_every_s``: off the request path, and never
holding the write lock long enough to delay the next batch of rows.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from studioctl.errors import StoreError
from studioctl.store.usage.record import UsageRow, invalid_reason

log = logging.getLogger(__name__)


class UsageRowStore(Protocol):
    """Where ``UsageWriter`` writes its batches (``UsageRepo``), from the writer's thread."""

    def insert_many(self, rows: Iterable[UsageRow]) -> int:
        """Store the rows (one transaction); raise to have them retried with the next batch."""
        ...

    def close_thread(self) -> None:
        """Release what the calling thread holds (its connection) as the thread ends."""
        ...


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
    next batch: while the store is unreachable (PostgreSQL down) the rows are held in memory
    and written when it is back; beyond ``max_pending`` rows waiting (``store.buffer_rows``),
    the oldest are dropped, counted in ``dropped`` and logged.

    Close it (which flushes) before closing the Database.
    """

    def __init__(
        self,
        store: UsageRowStore,
        *,
        # Short batches: a write burst on the gateway's core shows up in its p99 latency
        # (measured by benchmarks/gateway_overhead.py: +2.1 ms at 100 ms, +1.0 ms at 20 ms).
        interval_s: float = 0.02,
        max_pending: int = 100_000,
        max_batch: int = 20_000,
        prune: Callable[[], int] | None = None,
        prune_every_s: float = 600.0,
    ) -> None:
        """``prune``: deletes one batch past retention, returns the count (0: done)."""
        self._store = store
        self._prune = prune
        self.prune_every_s = prune_every_s
        self._prune_due = time.monotonic() + 1.0  # soon after start: a backlog after a pause
        self._pruning = False
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.max_batch = max_batch
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closed = False
        self.written = 0  # rows written so far
        self.dropped = 0  # rows given up on (store failing for too long, or at shutdown)
        self.failures = 0  # failed write attempts
        self.failing = False  # the last write failed (the store is down): rows are held
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
                elif not stopping:
                    self._prune_step()
        finally:
            for m in markers:
                m.done.set()  # not ok: those rows were not written
            self._store.close_thread()

    def _prune_step(self) -> None:
        """One batch of pruning when it is due (or under way); never raises."""
        if self._prune is None or not (self._pruning or time.monotonic() >= self._prune_due):
            return
        try:
            self._pruning = self._prune() > 0
        except Exception:
            self._pruning = False
            log.exception("usage writer: pruning old rows failed (will retry)")
        if not self._pruning:
            self._prune_due = time.monotonic() + self.prune_every_s

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
                problem = invalid_reason(item)
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
            self._store.insert_many(pending)
        except Exception as exc:
            self.failures += 1
            if not self.failing:  # once per outage, not every interval_s
                log.error(
                    "usage writer: writing %d rows failed, holding them (up to %d) and "
                    "retrying: %s",
                    len(pending),
                    self.max_pending,
                    exc,
                    exc_info=not isinstance(exc, StoreError),
                )
            self.failing = True
            return False
        if self.failing:
            log.warning("usage writer: the store is back; wrote %d held rows", len(pending))
            self.failing = False
        self.written += len(pending)
        pending.clear()
        return True
