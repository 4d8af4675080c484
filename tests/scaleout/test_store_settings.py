"""The ``store.*`` settings: validation with clear errors, ``${ENV}`` in the URL, and
``studioctl config validate`` reaching PostgreSQL (an error names the URL, never its
password)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pg_server import PgServer
from studioctl.cli.app import app
from studioctl.errors import ConfigError
from studioctl.settings import load_settings, validate_settings_file

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings(env={}).store
    assert (s.backend, s.url, s.fail_open, s.buffer_rows) == ("sqlite", None, False, 100_000)


@pytest.mark.parametrize(
    ("text", "key", "said"),
    [
        ("store:\n  backend: mysql\n", "store.backend", "'sqlite', 'postgres'"),
        ("store:\n  backend: postgres\n", "store.backend", "store.url is not set"),
        ("store:\n  url: http://db:5432/x\n", "store.url", "postgresql://"),
        ("store:\n  url: postgresql://db:99999/x\n", "store.url", "not a valid URL"),
        ("store:\n  buffer_rows: 0\n", "store.buffer_rows", "at least 1"),
    ],
)
def test_bad_values_are_refused_clearly(tmp_path: Path, text: str, key: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_settings_file(write(tmp_path / "s.yaml", text))
    assert info.value.key == key
    assert said in info.value.message


def test_the_url_takes_env_variables(tmp_path: Path) -> None:
    f = write(
        tmp_path / "s.yaml",
        "store:\n  backend: postgres\n  url: postgresql://app:${PGPASS}@db:5432/studio\n",
    )
    s = load_settings(file=f, env={"PGPASS": "s3cret"}).store
    assert s.url == "postgresql://app:s3cret@db:5432/studio"


def test_config_validate_reaches_postgres(tmp_path: Path, pg_server: PgServer) -> None:
    url = pg_server.new_database()
    f = write(tmp_path / "s.yaml", f"store:\n  backend: postgres\n  url: {url}\n")
    result = runner.invoke(app, ["config", "validate", str(f)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok: {f}"


def test_config_validate_names_an_unreachable_url_without_its_password(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://app:hunter2@127.0.0.1:{port}/studio"
    f = write(tmp_path / "s.yaml", f"store:\n  backend: postgres\n  url: {url}\n")
    result = runner.invoke(app, ["config", "validate", "--json", str(f)])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["key"] == "store.url"
    assert f"postgresql://app:***@127.0.0.1:{port}/studio" in out["error"]
    assert "hunter2" not in result.stdout


def test_the_cli_saves_bench_runs_in_the_configured_store(
    monkeypatch: pytest.MonkeyPatch, pg_server: PgServer
) -> None:
    from bench.test_store_bench import document
    from studioctl.store import open_database
    from studioctl.store.bench import BenchRepo, open_existing, save_run

    url = pg_server.new_database()
    monkeypatch.setenv("STUDIOCTL_STORE_BACKEND", "postgres")
    monkeypatch.setenv("STUDIOCTL_STORE_URL", url)
    with open_database() as db:
        assert db.backend == "postgres"
        run_id = save_run(db, document())
    found = open_existing()
    assert found is not None
    with found:
        assert found.backend == "postgres"
        assert [r.id for r in BenchRepo(found).list()] == [run_id]
