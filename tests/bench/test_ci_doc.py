"""docs/ci.md's job script, taken from the page as it is written and run with bash against a
real daemon (gateway on) whose recipe is the stand-in engine: exit 0 with loose thresholds,
8 with an impossible one, the archived JSON valid against the schema each time, and the
recipe evicted after both."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.test_cli_bench import SRC, valid
from daemon_helpers import Daemon, running_daemon
from gateway_daemon.helpers import create_tenant
from standin.helpers import write_standin_recipe
from studioctl import paths
from studioctl.errors import EXIT_OK, EXIT_THRESHOLD

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"
RECIPE = "ci-tiny"


def job_script() -> str:
    """The one bash block of docs/ci.md that is a script (it starts with a shebang)."""
    blocks = re.findall(r"```bash\n(#!/usr/bin/env bash\n.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/ci.md must hold exactly one job script"
    return str(blocks[0])


def run_job(d: Daemon, tmp: Path, key: str, thresholds: str, name: str) -> tuple[int, Path]:
    script = tmp / "ci-bench.sh"
    script.write_text(job_script())
    # `studioctl` on PATH is this checkout's (the test's interpreter and src/).
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "studioctl"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m studioctl "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    artifacts = tmp / name
    env = {
        **d.env,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(SRC), d.env.get("PYTHONPATH", "")]),
        "RECIPE": RECIPE,
        "THRESHOLDS": thresholds,
        "REQUESTS": "6",
        "CONCURRENCY": "2",
        "PROMPT_TOKENS": "8",
        "OUTPUT_TOKENS": "3",
        "ARTIFACTS": str(artifacts),
        "STUDIOCTL_API_KEY": key,
    }
    r = subprocess.run(
        ["bash", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert "no measurement" not in r.stderr, r.stdout + r.stderr + d.log_text(2000)
    return r.returncode, artifacts


def archived(artifacts: Path) -> dict[str, Any]:
    results = sorted(artifacts.glob(f"bench-{RECIPE}-*.json"))
    assert len(results) == 1, list(artifacts.iterdir())
    return valid(results[0].read_text())


def test_the_ci_job_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_daemon({}, start=False, gateway=True) as d:
        monkeypatch.setenv("STUDIOCTL_HOME", str(d.home))
        write_standin_recipe(RECIPE)
        assert (paths.user_recipes_dir() / f"{RECIPE}.yaml").exists()
        d.start()
        _, key = create_tenant(d, "ci", "--rpm", "100000", "--max-concurrent", "8")

        loose = "ttft_p95>30s e2e_p99>60s requests_failed>0 output_tps<0.001"
        code, artifacts = run_job(d, tmp_path, key, loose, "loose")
        assert code == EXIT_OK
        doc = archived(artifacts)
        assert doc["passed"] is True and len(doc["thresholds"]) == 4
        assert doc["metrics"]["requests_ok"] == 6 and doc["metrics"]["output_tokens"] == 18
        t = doc["target"]
        # The script launched the recipe: bench measured the running instance, left it alone.
        assert (t["name"], t["kind"], t["launched"], t["through_gateway"]) == (
            RECIPE,
            "recipe",
            False,
            True,
        )
        assert json.loads((artifacts / "launch.json").read_text().splitlines()[-1])
        assert (artifacts / "evict.json").exists() and d.live(RECIPE) is None  # the trap

        code, artifacts = run_job(d, tmp_path, key, "ttft_p95>0.001ms", "impossible")
        assert code == EXIT_THRESHOLD
        doc = archived(artifacts)
        assert doc["passed"] is False
        assert [x["crossed"] for x in doc["thresholds"]] == [True]
        assert d.live(RECIPE) is None

        runs = d.cli_json("bench", "history", RECIPE, "--json")["runs"]
        assert [r["passed"] for r in runs] == [False, True]  # --save kept both, newest first
