"""`studioctl config show|path|validate` through typer's runner (and once through main())."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from studioctl import paths
from studioctl.cli.app import app
from studioctl.errors import ConfigError
from studioctl.settings import all_keys

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("STUDIOCTL_"):
            monkeypatch.delenv(name)
    # `--config` sets STUDIOCTL_CONFIG in os.environ; set-then-delete makes monkeypatch
    # remove it again after the test.
    monkeypatch.setenv("STUDIOCTL_CONFIG", "")
    monkeypatch.delenv("STUDIOCTL_CONFIG")
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run_json(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_path_json_reports_existence() -> None:
    data = run_json("config", "path")
    assert data == {"path": str(paths.settings_file()), "exists": False}
    write(paths.settings_file(), "{}\n")
    assert run_json("config", "path")["exists"] is True


def test_path_plain_says_when_missing() -> None:
    result = runner.invoke(app, ["config", "path"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"{paths.settings_file()} (does not exist)"


def test_root_config_option_picks_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "alt.yaml", "gateway:\n  port: 8444\n")
    data = run_json("--config", str(f), "config", "path")
    assert data == {"path": str(f), "exists": True}
    data = run_json("--config", str(f), "config", "show")
    assert data["settings"]["gateway"]["port"] == 8444
    assert data["sources"]["gateway.port"] == f"file:{f}:2"


def test_show_json_values_and_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(paths.settings_file(), "gateway:\n  port: 9000\nlogs:\n  retention_days: 3\n")
    monkeypatch.setenv("STUDIOCTL_ADMIN_TOKEN", "super-secret")
    monkeypatch.setenv("STUDIOCTL_ENGINES_PORT_MIN", "18100")
    data = run_json("config", "show")
    assert data["path"] == str(f) and data["exists"] is True
    assert data["settings"]["gateway"]["port"] == 9000
    assert data["settings"]["gateway"]["host"] == "127.0.0.1"
    assert data["settings"]["engines"]["port_min"] == 18100
    assert data["settings"]["daemon"]["admin_token"] == "***"
    assert data["sources"]["gateway.port"] == f"file:{f}:2"
    assert data["sources"]["logs.retention_days"] == f"file:{f}:4"
    assert data["sources"]["engines.port_min"] == "env:STUDIOCTL_ENGINES_PORT_MIN"
    assert data["sources"]["daemon.admin_token"] == "env:STUDIOCTL_ADMIN_TOKEN"
    assert data["sources"]["gateway.host"] == "default"
    assert set(data["sources"]) == set(all_keys())


def test_show_never_prints_the_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIOCTL_DAEMON_ADMIN_TOKEN", "super-secret")
    for args in (["config", "show"], ["config", "show", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert "super-secret" not in result.output
        assert "***" in result.output


def test_show_table_lists_every_key_with_its_source() -> None:
    write(paths.settings_file(), "daemon:\n  autostart: false\n")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"# settings file: {paths.settings_file()}"
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(all_keys())
    assert rows["daemon.autostart"][1:] == ["false", f"file:{paths.settings_file()}:2"]
    assert rows["gateway.port"][1:] == ["8000", "default"]


def test_show_without_file_says_defaults_apply() -> None:
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    assert "(not found: defaults apply)" in result.stdout.splitlines()[0]


def test_show_fails_on_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIOCTL_GATEWAY_PORT", "http")
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ConfigError)
    assert result.exception.key == "STUDIOCTL_GATEWAY_PORT"


def test_validate_ok(tmp_path: Path) -> None:
    f = write(tmp_path / "good.yaml", "gateway:\n  port: 8080\n")
    result = runner.invoke(app, ["config", "validate", str(f)])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ok: {f}"


def test_validate_defaults_to_the_settings_file() -> None:
    result = runner.invoke(app, ["config", "validate"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ConfigError)
    assert "not found" in result.exception.message
    write(paths.settings_file(), "engines:\n  port_min: 18000\n")
    result = runner.invoke(app, ["config", "validate"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ok: {paths.settings_file()}"


def test_validate_bad_file_names_line_and_key(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.yaml", "gateway:\n  host: 0.0.0.0\n  prot: 80\n")
    result = runner.invoke(app, ["config", "validate", str(f)])
    assert result.exit_code == 1
    exc = result.exception
    assert isinstance(exc, ConfigError)
    assert (exc.file, exc.line, exc.key) == (str(f), 3, "gateway.prot")
    assert "did you mean 'port'" in exc.message


def test_validate_through_main_prints_error_and_exits_1(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.yaml", "engines:\n  port_min: 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "studioctl", "config", "validate", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {f}:2: engines.port_min: must be between 1 and 65535")


def test_validate_json_reports_either_way(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", "gateway:\n  port: 8080\n")
    result = runner.invoke(app, ["config", "validate", "--json", str(good)])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "ok": True,
        "file": str(good),
        "line": None,
        "key": None,
        "error": None,
    }
    bad = write(tmp_path / "bad.yaml", "gateway:\n  host: 0.0.0.0\n  prot: 80\n")
    result = runner.invoke(app, ["config", "validate", "--json", str(bad)])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["ok"], data["file"], data["line"], data["key"]) == (
        False,
        str(bad),
        3,
        "gateway.prot",
    )
    assert "did you mean 'port'" in data["error"]
