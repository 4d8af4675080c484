"""The README's first command, `bash scripts/demo.sh`, does what the README says: a daemon,
a real vLLM on the CPU with the tiny model, a chat through the gateway with a tenant key
(the official openai client, streamed and not), ps and usage, then it evicts the engine and
stops the daemon, leaving no process behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest
from tests.e2e.helpers import REPO, engine_env, require

from helpers import free_port, free_port_block

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_demo_script_runs_the_main_job_and_cleans_up() -> None:
    require(engine_env("vllm"))
    home = Path(tempfile.mkdtemp(prefix="sc-demo-", dir="/tmp"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STUDIOCTL_")
        or k in ("STUDIOCTL_VLLM_PYTHON", "STUDIOCTL_TINY_MODEL", "STUDIOCTL_DEV_CACHE")
    }
    env.update(
        {
            "STUDIOCTL_HOME": str(home),
            "STUDIOCTL_GATEWAY_PORT": str(free_port()),
            "STUDIOCTL_ENGINES_PORT_MIN": str(free_port_block()),
        }
    )
    env["STUDIOCTL_ENGINES_PORT_MAX"] = str(int(env["STUDIOCTL_ENGINES_PORT_MIN"]) + 40)
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"demo.sh did not finish:\n{out[-3000:]}")
    try:
        assert proc.returncode == 0, out[-3000:]
        assert "demo ok" in out
        assert "tiny-cpu-1 ready on http://127.0.0.1:" in out
        assert re.search(r"^reply: '.*'$", out, re.M), out[-2000:]
        assert re.search(r"^usage: \{'completion_tokens': 16, ", out, re.M), out[-2000:]
        assert re.search(r"^stream: ", out, re.M)
        # ps printed the engine's pid; usage counted the two requests of the demo's tenant.
        m = re.search(r"^tiny-cpu-1\s+tiny-cpu\s+vllm\s+\S+\s+(\d+)\s+\d+\s+ready", out, re.M)
        assert m, out[-2000:]
        assert re.search(r"^tenant demo-\d+\s+2\s+0\s", out, re.M), out[-2000:]
        assert "daemon stopped" in out
        engine_pid = int(m.group(1))
        assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == (
            psutil.STATUS_ZOMBIE
        ), f"the engine (pid {engine_pid}) outlived the demo"
        lock = home / "state" / "daemon.lock"
        assert not lock.exists() or lock.read_text().strip() == "", "the daemon still runs"
    finally:
        shutil.rmtree(home, ignore_errors=True)
