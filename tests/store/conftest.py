"""Store fixtures: a migrated database in the test's own STUDIOCTL_HOME (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from studioctl import paths
from studioctl.store import Database, Store, open_database


@pytest.fixture
def db() -> Iterator[Database]:
    database = open_database()
    assert database.path == paths.database_file()
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> Store:
    return Store(db)
