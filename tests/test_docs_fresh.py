"""The committed man page and shell completions match what the scripts generate now."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generate(script: str, out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env["STUDIOCTL_HOME"] = str(out / "home")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--out", str(out)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def man_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    _generate("gen_man.py", out)
    return out / "studioctl.1"


def test_man_page_is_fresh(man_page: Path) -> None:
    committed = ROOT / "man" / "studioctl.1"
    assert committed.read_text(encoding="utf-8") == man_page.read_text(encoding="utf-8"), (
        "man/studioctl.1 is stale: run `python scripts/gen_man.py`"
    )


def test_man_page_covers_every_command(man_page: Path) -> None:
    import typer.main

    from studioctl.cli.app import app

    text = man_page.read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="studioctl")
    for name in root.list_commands(ctx):  # type: ignore[attr-defined]
        assert f'.SS "studioctl {name}"' in text
    assert '.SS "studioctl config validate"' in text
    assert ".B STUDIOCTL_GATEWAY_PORT" in text
    assert "Sets \\fBgateway.port\\fR (default 8000)." in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_page_renders_without_warnings(man_page: Path) -> None:
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(man_page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_completions_are_fresh(tmp_path: Path) -> None:
    _generate("gen_completions.py", tmp_path)
    for name in ("studioctl.bash", "_studioctl", "studioctl.fish"):
        fresh = (tmp_path / name).read_text(encoding="utf-8")
        committed = ROOT / "completions" / name
        assert committed.read_text(encoding="utf-8") == fresh, (
            f"completions/{name} is stale: run `python scripts/gen_completions.py`"
        )
    assert (tmp_path / "_studioctl").read_text().startswith("#compdef studioctl\n")
    assert "complete -o default -F _studioctl_completion studioctl" in (
        tmp_path / "studioctl.bash"
    ).read_text(encoding="utf-8")
