"""Store fixtures: a private STUDIOCTL_HOME and a migrated database in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from studioctl import paths
from studioctl.store import Database, Store, open_database


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def db(home: Path) -> Iterator[Database]:
    database = open_database()
    assert database.path == paths.database_file()
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> Store:
    return Store(db)
