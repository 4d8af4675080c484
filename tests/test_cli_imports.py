"""`studioctl --help` must not import the heavy modules (rich, httpx, pynvml, sqlite3, ...).

Each case runs the CLI in a fresh interpreter with an import hook that records who first
imported a heavy module, so a failure names the studioctl module to fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("rich", "httpx", "pynvml", "sqlite3", "aiohttp", "uvicorn")

_PROBE = r"""
import json, sys, traceback

HEAVY = set(sys.argv[1].split(","))
ARGS = json.loads(sys.argv[2])
first = {}

class Spy:
    # Sees every top-level import before the real finders; records the studioctl frames.
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in first:
            frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()
                      if "studioctl" in f.filename]
            first[top] = frames
        return None

sys.meta_path.insert(0, Spy())
sys.argv = ["studioctl", *ARGS]
from studioctl.cli.app import main
try:
    main()
except SystemExit:
    pass
loaded = sorted(m for m in HEAVY if m in sys.modules)
sys.stdout.write("\n@@" + json.dumps({"loaded": loaded, "who": first}) + "\n")
"""


def _probe(args: list[str], home: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env["STUDIOCTL_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(HEAVY), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "@@" in proc.stdout, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.rsplit("@@", 1)[1])
    return result


@pytest.mark.parametrize(
    "args",
    [["--help"], ["config", "--help"], ["config", "path"], ["config", "show", "--json"]],
    ids=lambda a: " ".join(a),
)
def test_no_heavy_imports(args: list[str], tmp_path: Path) -> None:
    result = _probe(args, tmp_path)
    assert result["loaded"] == [], f"`studioctl {' '.join(args)}` imported: {result['who']}"


def test_the_probe_can_see_a_heavy_import(tmp_path: Path) -> None:
    # Guards the guard: the hook must notice when something does import a heavy module.
    script = _PROBE.replace("from studioctl.cli.app import main", "import sqlite3\n" + "main=print")
    proc = subprocess.run(
        [sys.executable, "-c", script, ",".join(HEAVY), "[]"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = json.loads(proc.stdout.rsplit("@@", 1)[1])
    assert result["loaded"] == ["sqlite3"]
    assert "sqlite3" in result["who"]
