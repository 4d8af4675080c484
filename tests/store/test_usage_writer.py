"""UsageWriter: submit never blocks nor does I/O on the caller's thread; batches, retries,
flush and close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import pytest

from studioctl.store import Database, UsageRecord, UsageRepo, UsageWriter
from studioctl.store.usage import UsageRow


class SlowDisk:
    """A sink standing in for a store on a slow (or stuck) disk."""

    def __init__(self, *, fail_first: int = 0, fail_always: bool = False) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[UsageRow]] = []
        self.threads: set[int] = set()
        self.fail_first = fail_first
        self.fail_always = fail_always
        self.calls = 0
        self.closed_threads: set[int] = set()
        self.entered = threading.Event()

    def insert_many(self, rows: Iterable[UsageRow]) -> int:
        self.threads.add(threading.get_ident())
        self.calls += 1
        self.entered.set()
        self.gate.wait(10)
        if self.fail_always or self.calls <= self.fail_first:
            raise OSError("disk I/O error")
        batch = list(rows)
        self.batches.append(batch)
        return len(batch)

    def close_thread(self) -> None:
        self.closed_threads.add(threading.get_ident())

    @property
    def rows(self) -> list[UsageRow]:
        return [r for b in self.batches for r in b]


def row(i: int = 0) -> UsageRecord:
    return UsageRecord(ts=1000.0 + i, status=200, tenant_id="t_a", model="m", duration_ms=1.0)


@pytest.fixture
def writers() -> Iterator[list[UsageWriter]]:
    made: list[UsageWriter] = []
    yield made
    for w in made:
        w.close(timeout=5)


def test_submit_returns_at_once_while_the_disk_is_stuck(writers: list[UsageWriter]) -> None:
    sink = SlowDisk()
    sink.gate.clear()  # the disk hangs
    w = UsageWriter(sink, interval_s=0.01)
    writers.append(w)
    w.submit(row(0))
    assert sink.entered.wait(5)  # the writer thread is now stuck inside insert_many
    worst = 0.0
    for i in range(1, 2001):
        t0 = time.perf_counter()
        w.submit(row(i))
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05  # never waits for the disk (a stuck write would take 10 s)
    assert sink.rows == []
    sink.gate.set()
    assert w.flush(timeout=5)
    assert [r.ts for r in sink.rows] == [1000.0 + i for i in range(2001)]  # in order


def test_writes_happen_on_the_writer_thread(writers: list[UsageWriter]) -> None:
    sink = SlowDisk()
    w = UsageWriter(sink, interval_s=0.01)
    writers.append(w)
    for i in range(10):
        w.submit(row(i))
    assert w.flush(timeout=5)
    assert sink.threads and threading.get_ident() not in sink.threads
    w.close()
    assert sink.closed_threads == sink.threads  # its DB connection is closed as it ends


def test_batches_every_interval(writers: list[UsageWriter]) -> None:
    sink = SlowDisk()
    w = UsageWriter(sink, interval_s=0.05)
    writers.append(w)
    for i in range(100):
        w.submit(row(i))
    deadline = time.monotonic() + 5
    while len(sink.rows) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sink.rows) == 100
    assert len(sink.batches) <= 3  # batched, not one write per row


def test_close_flushes(writers: list[UsageWriter]) -> None:
    sink = SlowDisk()
    w = UsageWriter(sink, interval_s=3600)  # the timer would never fire in this test
    writers.append(w)
    for i in range(50):
        w.submit(row(i))
    assert sink.rows == []
    w.close()
    assert len(sink.rows) == 50
    with pytest.raises(RuntimeError, match="after close"):
        w.submit(row())
    w.close()  # twice is fine


def test_max_batch_splits_a_backlog(writers: list[UsageWriter]) -> None:
    sink = SlowDisk()
    w = UsageWriter(sink, interval_s=3600, max_batch=10)
    writers.append(w)
    for i in range(35):
        w.submit(row(i))
    assert w.flush(timeout=5)
    assert [len(b) for b in sink.batches] == [10, 10, 10, 5]


def test_a_failed_write_is_retried(writers: list[UsageWriter]) -> None:
    sink = SlowDisk(fail_first=2)
    w = UsageWriter(sink, interval_s=0.01)
    writers.append(w)
    for i in range(5):
        w.submit(row(i))
    assert w.flush(timeout=5)
    assert len(sink.rows) == 5 and w.failures == 2 and w.dropped == 0 and w.written == 5


def test_a_store_that_keeps_failing_drops_the_oldest(writers: list[UsageWriter]) -> None:
    sink = SlowDisk(fail_always=True)
    w = UsageWriter(sink, interval_s=3600, max_pending=10)
    writers.append(w)
    for i in range(25):
        w.submit(row(i))
    assert w.flush(timeout=0.3) is False  # not written: the store is failing
    assert w.dropped == 15
    w.close()
    assert w.dropped == 25 and w.written == 0  # the rest is given up at shutdown


def test_a_bad_row_is_dropped_alone(writers: list[UsageWriter]) -> None:
    sink = SlowDisk()
    w = UsageWriter(sink, interval_s=3600)
    writers.append(w)
    w.submit(row(1))
    w.submit(UsageRecord(ts=float("nan"), status=200))
    w.submit(object())  # type: ignore[arg-type]
    w.submit(UsageRecord(ts=1.0, status=200, prompt_tokens=-1))
    w.submit(row(2))
    assert w.flush(timeout=5)
    assert [r.ts for r in sink.rows] == [1001.0, 1002.0]
    assert w.dropped == 3


def test_with_the_real_store(db: Database, writers: list[UsageWriter]) -> None:
    repo = UsageRepo(db)
    w = UsageWriter(repo, interval_s=0.02)
    writers.append(w)
    for i in range(300):
        w.submit(row(i))
    w.close()
    assert len(repo.rows()) == 300
    assert repo.summary(3600, now=1300.0).total.requests == 300
