"""`studioctl --help` must not import the heavy modules (rich, httpx, pynvml, sqlite3, ...);
nor may `status` and `ps`, the commands typed all day and polled by scripts (issue 9.5), which
also keep clear of pydantic (typer's parameter handling would bring it).

Each case runs the CLI in a fresh interpreter with an import hook that records who first
imported a heavy module, so a failure names the studioctl module to fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_helpers import Daemon, running_daemon

HEAVY = ("rich", "httpx", "pynvml", "sqlite3", "aiohttp", "uvicorn")
# The hot read commands against a running daemon: none of the above, and no pydantic, yaml
# (settings, recipes), psutil, the HTTP stacks, or typer (cli/main.py serves them first).
HOT_HEAVY = (
    *HEAVY,
    "pydantic",
    "yaml",
    "psutil",
    "httpcore",
    "anyio",
    "starlette",
    "typer",
    "click",
)

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
from studioctl.cli.main import main
try:
    main()
except SystemExit:
    pass
loaded = sorted(m for m in HEAVY if m in sys.modules)
sys.stdout.write("\n@@" + json.dumps({"loaded": loaded, "who": first}) + "\n")
"""


def _probe(
    args: list[str],
    home: Path,
    *,
    heavy: tuple[str, ...] = HEAVY,
    env: dict[str, str] | None = None,
) -> dict[str, object]:
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
        env["STUDIOCTL_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(heavy), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "@@" in proc.stdout, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.rsplit("@@", 1)[1])
    result["stdout"], result["stderr"] = proc.stdout.rsplit("@@", 1)[0], proc.stderr
    return result


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(gateway=True) as d:
        d.recipe("hot-a")
        d.launch("hot-a")  # an instance to list: the table's rendering is on the path too
        yield d


@pytest.mark.parametrize(
    "args",
    [["--help"], ["config", "--help"], ["config", "path"], ["config", "show", "--json"]],
    ids=lambda a: " ".join(a),
)
def test_no_heavy_imports(args: list[str], tmp_path: Path) -> None:
    result = _probe(args, tmp_path)
    assert result["loaded"] == [], f"`studioctl {' '.join(args)}` imported: {result['who']}"


@pytest.mark.integration
@pytest.mark.parametrize(
    "args",
    [["status"], ["ps"], ["status", "--json"], ["ps", "--all", "--json"], ["ps", "-a"]],
    ids=lambda a: " ".join(a),
)
def test_hot_commands_stay_light(args: list[str], daemon: Daemon, tmp_path: Path) -> None:
    result = _probe(args, tmp_path, heavy=HOT_HEAVY, env=daemon.env)
    assert "hot-a-1" in str(result["stdout"]), result["stderr"]  # the real answer, printed
    assert result["loaded"] == [], f"`studioctl {' '.join(args)}` imported: {result['who']}"


def test_status_without_a_daemon_stays_light(tmp_path: Path) -> None:
    result = _probe(["status"], tmp_path, heavy=HOT_HEAVY)
    assert "daemon is not running" in str(result["stderr"])
    assert result["loaded"] == [], f"`studioctl status` imported: {result['who']}"


def test_the_probe_can_see_a_heavy_import(tmp_path: Path) -> None:
    # Guards the guard: the hook must notice when something does import a heavy module.
    script = _PROBE.replace(
        "from studioctl.cli.main import main", "import sqlite3\n" + "main=print"
    )
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


# ------------------------------------------------------------------ the fast path itself


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], ("status", {"as_json": False})),
        (["status", "--json"], ("status", {"as_json": True})),
        (["ps"], ("ps", {"as_json": False, "all_": False})),
        (["ps", "-a", "--json"], ("ps", {"as_json": True, "all_": True})),
        (["ps", "--all", "--all"], ("ps", {"as_json": False, "all_": True})),
        (["--config", "/x.yaml", "ps"], ("ps", {"as_json": False, "all_": False})),
        (["--config=/x.yaml", "status"], ("status", {"as_json": False})),
        # Everything else is typer's: help, typos, unknown flags, other commands.
        (["status", "-h"], None),
        (["ps", "--jsn"], None),
        (["ps", "-aj"], None),
        (["status", "extra"], None),
        (["--version"], None),
        (["logs", "x"], None),
        (["--config"], None),
        ([], None),
    ],
)
def test_fast_command_takes_only_the_exact_spellings(
    argv: list[str], expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from studioctl.cli.main import fast_command as _fast_command

    monkeypatch.delenv("STUDIOCTL_CONFIG", raising=False)
    assert _fast_command(argv) == expected
    if expected is not None and "config" in " ".join(argv):
        assert os.environ["STUDIOCTL_CONFIG"] == "/x.yaml"


@pytest.mark.integration
@pytest.mark.parametrize("args", [["ps", "--json"], ["ps", "-a", "--json"], ["ps"]])
def test_fast_path_prints_what_typer_prints(
    args: list[str], daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from studioctl.cli.app import app

    monkeypatch.setenv("STUDIOCTL_HOME", str(daemon.home))

    def both() -> tuple[Any, Any]:
        fast = daemon.cli(*args)  # a real process: main() serves it without typer
        slow = CliRunner().invoke(app, args)  # typer's own parsing and invocation
        assert fast.returncode == slow.exit_code == 0, (fast.stderr, slow.output)
        if "--json" not in args:
            return (
                [ln.split()[:2] for ln in fast.stdout.splitlines()],
                [ln.split()[:2] for ln in slow.stdout.splitlines()],
            )
        a, b = json.loads(fast.stdout), json.loads(slow.stdout)
        drop = ("uptime_s", "vram_bytes")  # moving figures
        for data in (a, b):
            for inst in data["instances"]:
                for key in drop:
                    inst.pop(key, None)
        return a, b

    # `foreign` lists every engine process of the machine: one that another program starts
    # or ends between the two calls differs them, so a difference must persist to count.
    for _ in range(3):
        a, b = both()
        if a == b:
            break
    assert a == b


@pytest.mark.integration
def test_other_spellings_still_get_typers_help_and_errors(daemon: Daemon) -> None:
    r = daemon.cli("ps", "--bogus")
    assert r.returncode == 2 and "No such option" in r.stderr
    r = daemon.cli("status", "-h")
    assert r.returncode == 0 and "Usage:" in r.stdout
    r = daemon.cli("--config", str(daemon.home / "missing.yaml"), "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["daemon"]["pid"] > 0
