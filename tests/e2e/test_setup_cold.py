"""The README's two commands `eval` the output of scripts/setup-engines.sh: on a first run
(empty cache) its stdout must hold KEY=VALUE lines only, whatever the build steps print.

A warm cache hides a broken first run (it did once: the tiny-model script printed a sentence on
stdout and `eval` ran it as a command). So this test builds the tiny model into an empty cache;
the multi-GB engine venv is reused through a symlink to keep it to a few seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from tests.e2e.helpers import REPO, SETUP, engine_env, require

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KEY_VALUE = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _cold_cache(tmp: Path) -> tuple[Path, dict[str, str]]:
    env = engine_env("vllm")
    require(env)
    venv = Path(env.env["STUDIOCTL_VLLM_PYTHON"]).parent.parent
    cache = tmp / "cache"
    cache.mkdir()
    (cache / venv.name).symlink_to(venv)  # the venv is reused; the model is built anew
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    run_env["STUDIOCTL_DEV_CACHE"] = str(cache)
    return cache, run_env


def test_first_run_prints_only_key_value_lines_and_eval_works() -> None:
    with tempfile.TemporaryDirectory(prefix="sc-cold-") as tmp:
        cache, env = _cold_cache(Path(tmp))
        out = subprocess.run(
            ["bash", SETUP], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
        )
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert lines, "setup-engines.sh printed nothing on stdout"
        assert [line for line in lines if not KEY_VALUE.match(line)] == []
        # The build's own messages go to stderr, where a person still sees them.
        assert "tiny model written to" in out.stderr
        # Exactly what the README's scripts do with it.
        shell = subprocess.run(
            [
                "bash",
                "-c",
                'set -euo pipefail; eval "$(bash scripts/setup-engines.sh 2>/dev/null)"; '
                'printf "%s\\n%s\\n" "$STUDIOCTL_VLLM_PYTHON" "$STUDIOCTL_TINY_MODEL"',
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shell.returncode == 0, shell.stderr[-2000:]
        python, model = shell.stdout.splitlines()
        assert Path(python).is_file()
        assert Path(model) == cache / Path(model).name
        assert (Path(model) / "config.json").is_file()
        assert (Path(model) / ".complete").is_file()


def test_unknown_argument_is_an_error_on_stderr_only() -> None:
    out = subprocess.run(
        ["bash", SETUP, "--bogus"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert "unknown argument: --bogus" in out.stderr
