"""``studioctl launch`` against a real daemon and the engine stand-in: stages and readiness,
--no-wait, --dry-run, early exit, readiness timeout, and every refusal (already running,
port taken, GPUs held, a concurrent launch)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon_helpers import Daemon, alive, json_lines, running_daemon
from helpers import free_port
from standin.helpers import STANDIN_DIR, group_pids, http_status
from studioctl.daemon_lock import lock_holder
from studioctl.errors import (
    EXIT_CONFLICT,
    EXIT_ENGINE_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
)

pytestmark = pytest.mark.integration

VLLM_STAGES = ["started", "config", "engine", "loading", "weights", "warmup", "api"]


def all_gone(inst: dict[str, Any]) -> list[int]:
    """The recorded processes of ``inst`` that are still alive (should be none)."""
    return [p["pid"] for p in inst["processes"] if alive(p["pid"], p["create_time"])]


def test_launch_streams_stages_then_ready(d: Daemon) -> None:
    d.recipe("ready-a")
    r = d.cli("launch", "ready-a", "--json")
    assert r.returncode == 0, r.stderr
    lines = json_lines(r.stdout)
    assert [m["type"] for m in lines[:-1]] == ["event"] * (len(lines) - 1)
    result = lines[-1]
    assert result["type"] == "result"
    d.track(result)
    assert result["state"] == "ready"
    assert result["recipe"] == "ready-a"
    assert result["id"] == "ready-a-1"
    # The stages parsed from the engine's log, in order, each once, with rising times.
    stages = [m["data"] for m in lines[:-1] if m["kind"] == "stage"]
    assert [s["stage"] for s in stages] == VLLM_STAGES
    times = [s["t"] for s in stages]
    assert times == sorted(times)
    assert stages[-1]["label"] == "API server up"
    assert set(result["stages"]) == {*VLLM_STAGES, "ready"}
    # State changes end in ready; the launch event carries the pid and the exact command.
    states = [(m["data"]["from"], m["data"]["to"]) for m in lines if m.get("kind") == "state"]
    assert states[-1][1] == "ready"
    launch = next(m for m in lines if m.get("kind") == "launch")
    assert launch["data"]["pid"] == result["pid"]
    assert "--served-model-name ready-a" in launch["data"]["command"]
    assert all(m["recipe_id"] == "ready-a" for m in lines[:-1])
    # Really up: the engine answers on its port, the tree has the server and its child.
    assert http_status(f"{result['url']}/health") == 200
    assert len(result["processes"]) >= 2
    names = {psutil.Process(p["pid"]).name() for p in result["processes"]}
    assert any(n.startswith("VLLM::EngineCor") for n in names), names
    assert d.instance("ready-a-1")["state"] == "ready"


def test_launch_no_wait_returns_before_ready(d: Daemon) -> None:
    d.recipe("nowait", env={"STANDIN_STARTUP_S": "2"})
    t0 = time.monotonic()
    out = d.cli_json("launch", "nowait", "--no-wait", "--json")
    d.track(out)
    assert out["state"] in ("starting", "loading")
    assert out["pid"] is not None and psutil.pid_exists(out["pid"])
    ready = d.wait_state(out["id"], "ready", timeout=20)
    assert ready["pid"] == out["pid"]
    assert time.monotonic() - t0 >= 1.5  # it really was not ready when launch returned


def test_launch_dry_run_needs_no_daemon_and_prints_the_argv() -> None:
    with running_daemon(start=False) as d:
        d.recipe("dry", port=18123, env={"STANDIN_STARTUP_S": "0.1"})
        expected = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "standin/model",
            "--served-model-name",
            "dry",
            "--host",
            "127.0.0.1",
            "--port",
            "18123",
        ]
        out = d.cli_json("launch", "dry", "--dry-run", "--json", "--gpus", "2,3")
        assert out["argv"] == expected
        assert out["port"] == 18123
        assert out["env"]["CUDA_VISIBLE_DEVICES"] == "2,3"
        assert out["env"]["PYTHONPATH"] == str(STANDIN_DIR)
        assert out["env"]["STANDIN_STARTUP_S"] == "0.1"
        # Plain output: the shell line, env assignments first, then exactly the argv.
        r = d.cli("launch", "dry", "--dry-run", "--port", "18124")
        assert r.returncode == 0, r.stderr
        words = shlex.split(r.stdout)
        assert words[-len(expected) :] == [*expected[:-1], "18124"]
        assert f"PYTHONPATH={STANDIN_DIR}" in words[: -len(expected)]
        # Nothing was started: no daemon, no socket, no engine.
        assert not d.socket.exists()
        assert lock_holder(d.home / "state" / "daemon.lock") is None
        assert not (d.home / "log" / "instances").exists()


def test_early_exit_fails_with_exit_7_and_the_log_tail(d: Daemon) -> None:
    d.recipe("crashy", env={"STANDIN_MODE": "crash_at_start"})
    r = d.cli("launch", "crashy")
    assert r.returncode == EXIT_ENGINE_FAILED, (r.returncode, r.stderr)
    assert "crashy-1 (vllm) exited with code 3 before it was ready" in r.stderr
    assert "--- last log lines ---" in r.stderr
    tail = r.stderr.split("--- last log lines ---", 1)[1]
    assert "stand-in crash at start (STANDIN_MODE=crash_at_start)" in tail
    assert "Engine core initialization failed" in tail
    assert "=== studioctl: launch of crashy" in tail  # our marker with the command
    assert "studioctl logs crashy-1" in r.stderr  # the hint
    inst = d.instance("crashy-1")
    assert inst["state"] == "failed"
    assert all_gone(inst) == []


def test_readiness_timeout_exit_6_and_the_group_is_gone(d: Daemon) -> None:
    d.recipe("hangs", env={"STANDIN_MODE": "hang"})
    t0 = time.monotonic()
    r = d.cli("launch", "hangs", "--timeout", "2", "--json")
    elapsed = time.monotonic() - t0
    assert r.returncode == EXIT_TIMEOUT, (r.returncode, r.stderr)
    assert "hangs-1 was not ready after 2s; stopped it" in r.stderr
    assert 2.0 <= elapsed < 15.0
    # --json still streamed the stages it reached before giving up.
    stages = [m["data"]["stage"] for m in json_lines(r.stdout) if m.get("kind") == "stage"]
    assert "loading" in stages and "api" not in stages
    inst = d.instance("hangs-1")
    assert inst["state"] == "failed"
    assert "not ready after 2s" in inst["reason"]
    assert len(inst["processes"]) >= 2  # the server and its child were recorded
    assert all_gone(inst) == []
    assert group_pids(inst["pid"]) == []


def test_already_running_is_exit_5(d: Daemon) -> None:
    d.recipe("twice")
    assert d.cli("launch", "twice").returncode == 0
    r = d.cli("launch", "twice")
    assert r.returncode == EXIT_CONFLICT
    assert "recipe twice is already running as twice-1 (ready)" in r.stderr
    assert "studioctl evict twice-1" in r.stderr
    assert [i["id"] for i in d.instances() if i["recipe"] == "twice"] == ["twice-1"]


def test_port_conflict_names_the_holder(d: Daemon) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        d.recipe("porty", port=port)
        r = d.cli("launch", "porty")
        assert r.returncode == EXIT_CONFLICT, r.stderr
        assert f"port {port} on 127.0.0.1 is taken by pid {os.getpid()}" in r.stderr
        assert "--port" in r.stderr  # the hint says how to pick another
        # --port moves it elsewhere.
        other = free_port()
        out = json_lines(d.cli("launch", "porty", "--port", str(other), "--json").stdout)[-1]
        d.track(out)
        assert out["state"] == "ready" and out["port"] == other
    assert not any(i["port"] == port for i in d.instances())


def test_gpu_conflict_refused_unless_forced(d: Daemon) -> None:
    d.recipe("gpu-a", gpus=[3])
    d.recipe("gpu-b", gpus=[3, 4])
    assert d.cli("launch", "gpu-a").returncode == 0
    r = d.cli("launch", "gpu-b")
    assert r.returncode == EXIT_CONFLICT
    assert "GPU 3 is held by gpu-a-1 (recipe gpu-a)" in r.stderr
    assert "--force" in r.stderr
    r = d.cli("launch", "gpu-b", "--force", "--json")
    assert r.returncode == 0, r.stderr
    b = json_lines(r.stdout)[-1]
    d.track(b)
    assert b["state"] == "ready" and b["gpus"] == [3, 4]
    environ = Path(f"/proc/{b['pid']}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=3,4" in environ
    # Disjoint GPUs need no force.
    d.recipe("gpu-c", gpus=[5])
    assert d.cli("launch", "gpu-c").returncode == 0


def test_concurrent_launches_one_wins(d: Daemon) -> None:
    d.recipe("race", env={"STANDIN_STARTUP_S": "1"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "studioctl", "launch", "race"],
            env=d.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, EXIT_CONFLICT], outs
    loser = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode)
    assert "recipe race is already running as race-1" in loser
    assert [i["id"] for i in d.instances() if i["recipe"] == "race"] == ["race-1"]
    assert d.instance("race-1")["state"] == "ready"


def test_relaunch_after_failure_gets_a_new_instance(d: Daemon) -> None:
    path = d.recipe("second-go", env={"STANDIN_MODE": "crash_at_start"})
    assert d.cli("launch", "second-go").returncode == EXIT_ENGINE_FAILED
    d.recipe("second-go")  # fixed
    assert path.exists()
    out = json_lines(d.cli("launch", "second-go", "--json").stdout)[-1]
    d.track(out)
    assert out["id"] == "second-go-2" and out["state"] == "ready"
    assert d.instance("second-go-1")["state"] == "failed"


def test_unknown_recipe_is_exit_3(d: Daemon) -> None:
    r = d.cli("launch", "no-such-recipe")
    assert r.returncode == EXIT_NOT_FOUND, r.stderr
    assert "no-such-recipe" in r.stderr
    assert not any(i["recipe"] == "no-such-recipe" for i in d.instances())
