"""The test harness itself (tests/helpers.py, tests/daemon_helpers.py): waiting, the slowloris
client, and the leak check that ends only processes a test started (by pid + create time)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from daemon_helpers import alive, kill_leftovers, running_daemon
from helpers import free_port_block, slowloris, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "got it", "later"])
    assert wait_for(lambda: next(answers), timeout=5, interval=0.01) == "got it"


def test_wait_for_names_what_it_waited_for_and_asks_once_more_after_the_deadline() -> None:
    calls: list[float] = []

    def never() -> None:
        calls.append(time.monotonic())

    with pytest.raises(AssertionError, match=r"timed out after 0.2 s waiting for the moon"):
        wait_for(never, timeout=0.2, interval=0.05, what="the moon")
    assert calls[-1] - calls[0] > 0.2  # the last look is past the deadline
    seen = ["nothing yet"]
    with pytest.raises(AssertionError, match="waiting for state; last: nothing yet"):
        wait_for(lambda: None, timeout=0.05, what=lambda: f"state; last: {seen[-1]}")


def test_free_port_block_is_bindable_and_below_the_ephemeral_range() -> None:
    base = free_port_block(20)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert base >= 20000 and base + 20 <= low
    with contextlib.ExitStack() as stack:
        for port in range(base, base + 20):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", port))


def test_slowloris_sends_the_head_then_drips_until_the_block_ends() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            with slowloris([client], b"GET / HTTP/1.1\r\nX-a: ", every=0.05):
                time.sleep(0.4)
            peer.settimeout(1.0)
            got = b""
            with contextlib.suppress(TimeoutError):
                while chunk := peer.recv(4096):
                    got += chunk
            assert got.startswith(b"GET / HTTP/1.1\r\nX-a: a")
            assert got.count(b"a") >= 4  # dripped, one byte at a time
            peer.settimeout(0.3)  # and stopped with the block
            with pytest.raises(TimeoutError):
                peer.recv(1)


@contextlib.contextmanager
def sleepers(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def test_kill_leftovers_ends_only_the_processes_it_recorded() -> None:
    with sleepers(2) as (mine, other):
        created = psutil.Process(mine.pid).create_time()
        # ``other`` is recorded with another create time: a reused pid is not ours.
        seen = {(mine.pid, created), (other.pid, psutil.Process(other.pid).create_time() - 5)}
        left = kill_leftovers(seen)
        assert len(left) == 1 and left[0].startswith(f"{mine.pid} ")
        assert mine.wait(10) == -signal.SIGKILL
        assert other.poll() is None  # not ours: untouched


@pytest.mark.integration
def test_the_teardown_ends_and_reports_an_engine_its_killed_daemon_left() -> None:
    processes: list[dict[str, float]] = []
    outlived = False
    with (
        pytest.raises(AssertionError, match="processes left behind"),
        running_daemon() as d,
    ):
        d.recipe("orphan")
        processes = d.launch("orphan")["processes"]
        d.kill9()  # the engine outlives its daemon
        outlived = any(alive(int(p["pid"]), p["create_time"]) for p in processes)
    assert processes and outlived
    assert not any(alive(int(p["pid"]), p["create_time"]) for p in processes)
