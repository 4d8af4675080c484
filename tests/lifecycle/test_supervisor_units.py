"""Unit tests of the lifecycle's pure parts: restart decisions, resource locks, log files,
launch-stage tracking, ``--since`` parsing, the client's API version check, sd_notify, the
daemon lock and the control socket's mode. No daemon, no engine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from studioctl import daemon, daemon_lock
from studioctl.cli.log_cmds import parse_since
from studioctl.client import Client
from studioctl.engines import get_engine
from studioctl.errors import EXIT_CONFLICT, ConflictError, UsageError
from studioctl.lifecycle import logfiles
from studioctl.lifecycle.locks import ResourceLocks
from studioctl.lifecycle.readiness import StageTracker
from studioctl.lifecycle.restart import RestartPolicy, decide

# --------------------------------------------------------------------------- restart.decide

POLICY = RestartPolicy(backoff_s=10.0, backoff_max_s=300.0, budget=5, window_s=600.0)


def test_decide_never_does_not_restart() -> None:
    d = decide(POLICY, "never", [100.0], 100.0, exit_code=1)
    assert not d.restart
    assert d.delay_s == 0.0
    assert "never" in d.reason


@pytest.mark.parametrize("mode", ["on-failure", "always"])
@pytest.mark.parametrize(
    ("crashes", "delay"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0)],
)
def test_decide_backoff_doubles_per_crash_in_the_window(
    mode: str, crashes: int, delay: float
) -> None:
    now = 1000.0
    times = [now - i for i in range(crashes)]
    d = decide(POLICY, mode, times, now)
    assert d.restart
    assert d.delay_s == delay
    assert f"restart {crashes}" in d.reason


def test_decide_on_failure_restarts_a_clean_exit_too() -> None:
    # An engine is meant to keep serving: exit code 0 on its own is still a failure.
    assert decide(POLICY, "on-failure", [5.0], 5.0, exit_code=0).restart


def test_decide_backoff_is_capped() -> None:
    policy = RestartPolicy(backoff_s=100.0, backoff_max_s=300.0, budget=50, window_s=600.0)
    d = decide(policy, "always", [1.0] * 10, 2.0)
    assert d.restart
    assert d.delay_s == 300.0


def test_decide_budget_spent_fails_with_a_reason() -> None:
    now = 1000.0
    d = decide(POLICY, "on-failure", [now - 50 * i for i in range(5)], now)
    assert not d.restart
    assert "crash loop" in d.reason
    assert "5 crashes" in d.reason
    assert "budget 5" in d.reason


def test_decide_forgets_crashes_outside_the_window() -> None:
    now = 10_000.0
    old = [now - 601 - i for i in range(10)]  # ten crashes, all older than the window
    d = decide(POLICY, "on-failure", [*old, now], now)
    assert d.restart
    assert d.delay_s == 10.0  # only the crash just now counts: first backoff
    # One crash short of the budget inside the window still restarts.
    d = decide(POLICY, "on-failure", [*old, *(now - i for i in range(4))], now)
    assert d.restart
    assert d.delay_s == 80.0


# --------------------------------------------------------------------------- locks


def test_locks_conflict_names_what_is_in_progress() -> None:
    async def main() -> None:
        locks = ResourceLocks()
        async with locks.hold({"recipe:a", "gpu:0"}, "launch a"):
            with pytest.raises(ConflictError) as info:
                async with locks.hold({"gpu:0", "gpu:1"}, "launch b"):
                    pytest.fail("a second holder of gpu:0 got in")
            assert info.value.exit_code == EXIT_CONFLICT
            assert info.value.code == "operation_in_progress"
            assert "launch a is in progress" in info.value.message
            assert "gpu:0" in info.value.message
            assert "recipe:a" not in info.value.message  # only the shared resources
            # Disjoint resources go ahead at once.
            async with locks.hold({"recipe:b", "gpu:1"}, "launch b"):
                ops = {op["operation"] for op in locks.in_progress()}
                assert ops == {"launch a", "launch b"}
        assert locks.in_progress() == []

    asyncio.run(main())


def test_locks_wait_queues_behind_the_holder() -> None:
    async def main() -> None:
        locks = ResourceLocks()
        order: list[str] = []
        first_in = asyncio.Event()

        async def first() -> None:
            async with locks.hold({"recipe:a"}, "evict a-1"):
                first_in.set()
                order.append("first in")
                await asyncio.sleep(0.2)
                order.append("first out")

        async def second() -> None:
            await first_in.wait()
            async with locks.hold({"recipe:a"}, "launch a", wait=True):
                order.append("second in")

        await asyncio.wait_for(asyncio.gather(first(), second()), 5)
        assert order == ["first in", "first out", "second in"]

    asyncio.run(main())


def test_locks_released_when_the_operation_fails() -> None:
    async def main() -> None:
        locks = ResourceLocks()
        with pytest.raises(RuntimeError):
            async with locks.hold({"recipe:a"}, "launch a"):
                raise RuntimeError("boom")
        async with locks.hold({"recipe:a"}, "launch a again"):
            pass

    asyncio.run(main())


# --------------------------------------------------------------------------- logfiles


def test_follower_reads_whole_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    f = logfiles.LogFollower(log)
    assert f.read_new() == []  # no file yet
    log.write_bytes(b"one\ntw")
    assert f.read_new() == ["one"]
    with open(log, "ab") as fh:
        fh.write(b"o\r\nthree\n")
    assert f.read_new() == ["two", "three"]
    assert f.read_new() == []


def test_follower_survives_copy_truncate(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    writer = open(log, "ab", buffering=0)  # noqa: SIM115 - the engine's O_APPEND descriptor
    try:
        writer.write(b"a1\na2\na3\n")
        f = logfiles.LogFollower(log)
        assert f.read_new() == ["a1", "a2", "a3"]
        # Rotation as the supervisor does it: copy, then truncate in place.
        (tmp_path / "e.log.1").write_bytes(log.read_bytes())
        with open(log, "r+b") as t:
            t.truncate(0)
        writer.write(b"b1\n")  # O_APPEND: lands at the new end (offset 0)
        assert f.read_new() == ["b1"]
        writer.write(b"b2\n")
        assert f.read_new() == ["b2"]
    finally:
        writer.close()
    assert (tmp_path / "e.log.1").read_text() == "a1\na2\na3\n"


def test_follower_from_an_offset(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text("old\n")
    f = logfiles.LogFollower(log, offset=log.stat().st_size)
    with open(log, "a") as fh:
        fh.write("new\n")
    assert f.read_new() == ["new"]


def test_tail_lines(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert logfiles.tail_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert logfiles.tail_lines(tmp_path / "missing.log") == []


def _epoch(y: int, mo: int, d: int, h: int, mi: int, s: int) -> float:
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))


def test_line_time_formats() -> None:
    assert logfiles.line_time("2025-03-01 10:20:30 INFO x") == _epoch(2025, 3, 1, 10, 20, 30)
    assert logfiles.line_time("[2025-03-01T10:20:30] x") == _epoch(2025, 3, 1, 10, 20, 30)
    vllm = "INFO 03-01 10:20:30 [core.py:1] Starting to load model"
    assert logfiles.line_time(vllm, year=2024) == _epoch(2024, 3, 1, 10, 20, 30)
    assert logfiles.line_time("no time here") is None


def test_since_keeps_stamped_lines_and_their_continuations() -> None:
    lines = [
        "2025-03-01 10:00:00 early",
        "  continuation of early",
        "2025-03-01 10:05:00 at the cut",
        "Traceback (most recent call last):",
        "  File x",
        "INFO 03-01 10:06:00 [x.py:1] vllm line",
        "2025-03-01 09:00:00 clock went back",
        "  its continuation",
    ]
    cut = _epoch(2025, 3, 1, 10, 5, 0)
    assert list(logfiles.since(lines, cut)) == [
        "2025-03-01 10:05:00 at the cut",
        "Traceback (most recent call last):",
        "  File x",
        "INFO 03-01 10:06:00 [x.py:1] vllm line",
    ]
    # Unstamped lines before any stamp are dropped (nothing says they are recent).
    assert list(logfiles.since(["no stamp", "2025-03-01 10:06:00 y"], cut)) == [
        "2025-03-01 10:06:00 y"
    ]


# --------------------------------------------------------------------------- readiness


def test_stage_tracker_in_order_and_once() -> None:
    stages = get_engine("vllm").stages
    names = [s.name for s in stages]
    tracker = StageTracker(stages)
    assert tracker.feed(["nothing to see"], 0.1) == []
    got = tracker.feed(["INFO 03-01 10:00:00 [x] Starting to load model m..."], 1.0)
    # A later stage implies the earlier ones (a log line may be missed or reworded).
    first_three = names[: names.index("loading") + 1]
    assert [s.name for s in got] == first_three
    assert all(tracker.reached[n] == 1.0 for n in first_three)
    # Seen again: not reported twice, first time kept.
    assert tracker.feed(["Starting to load model m..."], 2.0) == []
    got = tracker.feed(
        ["Loading weights took 0.40 seconds", "INFO: Application startup complete."], 3.0
    )
    assert [s.name for s in got] == names[len(first_three) :]
    assert tracker.reached["loading"] == 1.0
    assert set(tracker.reached) == set(names)


def test_stage_tracker_sglang_markers() -> None:
    stages = get_engine("sglang").stages
    tracker = StageTracker(stages)
    got = tracker.feed(["[2025-03-01 10:00:00] The server is fired up and ready to roll!"], 5.0)
    assert [s.name for s in got] == [s.name for s in stages]


# --------------------------------------------------------------------------- parse_since


NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - 30),
        ("10m", NOW - 600),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        ("1.5m", NOW - 90),
        (" 5s ", NOW - 5),
        ("1700000000", 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=NOW) == pytest.approx(expected)


def test_parse_since_iso() -> None:
    assert parse_since("2025-03-01T10:20:30") == _epoch(2025, 3, 1, 10, 20, 30)
    assert parse_since("2025-03-01 10:20:30+00:00") == 1740824430.0


@pytest.mark.parametrize("bad", ["yesterday", "10x", "-5m", "", "m10"])
def test_parse_since_rejects_with_the_value(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_since(bad, now=NOW)
    assert repr(bad) in info.value.message
    assert "--since" in info.value.message


# --------------------------------------------------------------------------- client


# httpcore 1.0 leaks the socket of a failed Unix connect (its connect_unix_socket does not
# close it): a ResourceWarning at garbage collection, not studioctl's to fix.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_client_unreachable_daemon_is_exit_4(tmp_path: Path) -> None:
    from studioctl.errors import EXIT_DAEMON_UNREACHABLE, DaemonUnreachable

    with Client(tmp_path / "nothing.sock") as client:
        assert client.ping() is None
        with pytest.raises(DaemonUnreachable) as info:
            client.status()
    assert info.value.exit_code == EXIT_DAEMON_UNREACHABLE
    assert "nothing.sock" in info.value.message
    del info
    gc.collect()  # the leaked socket's warning belongs to this test, not the next one


# --------------------------------------------------------------------------- sd_notify


@contextlib.contextmanager
def _notify_socket() -> Iterator[tuple[socket.socket, str]]:
    folder = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")  # AF_UNIX paths are short
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(folder)


def test_sd_notify_sends_to_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    with _notify_socket() as (sock, path):
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert daemon.sd_notify("READY=1") is True
        assert sock.recv(256) == b"READY=1"
        assert daemon.sd_notify("STOPPING=1") is True
        assert sock.recv(256) == b"STOPPING=1"


def test_sd_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"studioctl-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert daemon.sd_notify("READY=1") is True
        assert sock.recv(256) == b"READY=1"


def test_sd_notify_without_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert daemon.sd_notify("READY=1") is False


def test_sd_notify_to_a_dead_socket_does_not_raise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert daemon.sd_notify("READY=1") is False


# --------------------------------------------------------------------------- daemon lock, socket


def test_daemon_lock_second_holder_is_refused_with_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "run" / "daemon.lock"
    assert daemon_lock.lock_holder(path) is None
    first = daemon_lock.DaemonLock(path)
    first.acquire()
    try:
        assert path.read_text() == str(os.getpid())
        assert daemon_lock.lock_holder(path) == os.getpid()
        second = daemon_lock.DaemonLock(path)
        with pytest.raises(ConflictError) as info:
            second.acquire()
        assert info.value.exit_code == EXIT_CONFLICT
        assert f"pid {os.getpid()}" in info.value.message
        assert info.value.details["pid"] == os.getpid()
    finally:
        first.release()
    assert daemon_lock.lock_holder(path) is None
    again = daemon_lock.DaemonLock(path)
    again.acquire()
    again.release()


def test_bind_unix_is_0600_and_replaces_a_stale_socket() -> None:
    folder = Path(tempfile.mkdtemp(prefix="sck-", dir="/tmp"))
    path = folder / "run" / "control.sock"
    try:
        path.parent.mkdir(mode=0o700)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))  # a socket a dead daemon left behind
        stale.close()
        sock = daemon.bind_unix(path)
        try:
            mode = os.stat(path).st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o600
        finally:
            sock.close()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        path.parent.rmdir()
        folder.rmdir()


# --------------------------------------------------------------------------- exit codes


def test_an_exit_between_two_looks_still_reports_its_code() -> None:
    """The child exits after `reap` looked and before `is_alive` does: the code is still
    collected ("exited with code 3", not a bare "process exited")."""
    import subprocess
    import sys
    from types import SimpleNamespace

    import psutil

    from studioctl.lifecycle.osproc import OsProc
    from studioctl.lifecycle.registry import exited

    class LateOs(OsProc):
        looked = False

        def reap(self, spawned: object) -> int | None:
            if not self.looked:  # the first look came just before the child exited
                self.looked = True
                return None
            return super().reap(spawned)  # type: ignore[arg-type]

    class SlowOs(OsProc):
        looks = 0

        def reap(self, spawned: object) -> int | None:
            self.looks += 1
            if self.looks <= 4:  # the first look, then three more before it is waitable
                return None
            return super().reap(spawned)  # type: ignore[arg-type]

    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        created = psutil.Process(proc.pid).create_time()
        deadline = time.monotonic() + 30
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        inst = SimpleNamespace(
            spawned=SimpleNamespace(popen=proc), pid=proc.pid, create_time=created, exit_code=None
        )
        assert exited(LateOs(), inst) is True  # type: ignore[arg-type]
        assert inst.exit_code == 3
        # A zombie leader whose threads are still exiting: waitpid has nothing for a few
        # more looks (as under load on CI); the code is still collected.
        inst.exit_code = None
        assert exited(SlowOs(), inst) is True  # type: ignore[arg-type]
        assert inst.exit_code == 3
    finally:
        proc.wait(timeout=30)
