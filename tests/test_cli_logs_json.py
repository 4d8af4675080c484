"""``studioctl logs --json`` (issue 9.7): one JSON object per log line — ts, source,
instance, line — from the daemon, with -f, and from the file when the daemon is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_helpers import Daemon, running_daemon
from standin.helpers import http_status
from studioctl import paths
from studioctl.cli.log_cmds import LogJson

KEYS = {"ts", "source", "instance", "line"}


def test_record_fields_and_carried_timestamps() -> None:
    lj = LogJson("x-1")
    first = lj.record("no stamp yet")
    assert first == {"ts": None, "source": "engine", "instance": "x-1", "line": "no stamp yet"}
    marker = lj.record("=== studioctl: launch of x at 2026-11-30 16:00:05: python -m vllm")
    assert marker["source"] == "studioctl"
    assert marker["ts"] == time.mktime((2026, 11, 30, 16, 0, 5, 0, 0, -1))
    vllm = lj.record("INFO 11-30 16:00:07 [api_server.py:1] Starting")
    assert vllm["source"] == "engine"
    assert vllm["ts"] == marker["ts"] + 2
    # A traceback line belongs with the line before it.
    assert lj.record("  File 'x.py', line 3")["ts"] == vllm["ts"]


def lines_json(text: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in text.splitlines()]
    assert all(set(o) == KEYS for o in out), out[:3]
    return out


class Reader:
    """Collects a CLI process's stdout lines in a thread (reads never block the test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.got: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.got.append(line.rstrip("\n"))

    def wait_for(self, text: str, poke: Any = None, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.got):
                if text in line:
                    found: dict[str, Any] = json.loads(line)
                    return found
            assert time.monotonic() < deadline, f"no {text!r} in {self.got[-5:]}"
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            if poke is not None:
                poke()
            time.sleep(0.3)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the CLI process this test started
        self.proc.wait(10)
        self.thread.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


# ------------------------------------------------------------------ from the daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon() as d:
        d.recipe("lj")
        d.launch("lj")
        yield d


@pytest.mark.integration
def test_logs_json_from_the_daemon(daemon: Daemon) -> None:
    inst = daemon.instance("lj-1")
    before = Path(inst["log_path"]).read_text().splitlines()
    r = daemon.cli("logs", "lj", "--json", "-n", "1000")  # a recipe id: its instance
    assert r.returncode == 0, r.stderr
    out = lines_json(r.stdout)
    text = Path(inst["log_path"]).read_text().splitlines()  # the engine goes on logging
    assert [o["line"] for o in out] == text[: len(out)] and len(out) >= len(before)
    assert {o["instance"] for o in out} == {"lj-1"}
    assert out[0]["source"] == "studioctl" and out[0]["line"].startswith("=== studioctl: launch")
    assert abs(out[0]["ts"] - inst["started_at"]) < 5
    assert {o["source"] for o in out[1:]} == {"engine"}
    assert all(o["ts"] is not None for o in out)  # carried from the marker at least
    r = daemon.cli("logs", "lj-1", "--json", "-n", "2")
    last = lines_json(r.stdout)
    text = Path(inst["log_path"]).read_text().splitlines()
    assert len(last) == 2 and all(o["line"] in text and o["instance"] == "lj-1" for o in last)
    r = daemon.cli("logs", "nope", "--json")
    assert r.returncode == 3 and r.stdout == ""


@pytest.mark.integration
def test_logs_follow_json(daemon: Daemon) -> None:
    inst = daemon.instance("lj-1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "studioctl", "logs", "lj", "-f", "-n", "0", "--json"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = Reader(proc)
    marker = f"/follow-{uuid.uuid4().hex}"
    try:
        got = reader.wait_for(marker, poke=lambda: http_status(f"{inst['url']}{marker}"))
    finally:
        reader.close()
    assert got["instance"] == "lj-1" and got["source"] == "engine"
    assert marker in got["line"]


# ------------------------------------------------------------------ from the file


def test_logs_json_from_the_file_when_the_daemon_is_down(tmp_path: Path) -> None:
    folder = paths.instance_log_dir()  # under this test's STUDIOCTL_HOME
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "old-2.log"
    log.write_text(
        "=== studioctl: launch of old at 2026-11-30 10:00:00: python -m vllm\n"
        "INFO 11-30 10:00:03 [engine.py:1] Loading\n"
        "Traceback (most recent call last):\n"
    )
    (folder / "old-1.log").write_text("an older instance\n")
    env = {**os.environ, "STUDIOCTL_DAEMON_AUTOSTART": "false"}
    cmd = [sys.executable, "-m", "studioctl", "logs", "old", "--json"]
    r = subprocess.run([*cmd, "-n", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "daemon not running" in r.stderr
    out = lines_json(r.stdout)
    assert [o["line"] for o in out] == [
        "INFO 11-30 10:00:03 [engine.py:1] Loading",
        "Traceback (most recent call last):",
    ]
    assert {o["instance"] for o in out} == {"old-2"}
    assert out[0]["ts"] == out[1]["ts"] is not None

    proc = subprocess.Popen(
        [*cmd, "-f", "-n", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    reader = Reader(proc)
    try:

        def append() -> None:  # until the CLI, started at the file's end, shows one
            with log.open("a") as f:
                f.write("INFO 11-30 10:00:09 [engine.py:2] appended\n")

        got = reader.wait_for("appended", poke=append)
        assert got["instance"] == "old-2" and got["source"] == "engine"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
    finally:
        reader.close()
