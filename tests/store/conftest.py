"""Store fixtures: a migrated database of each backend.

``db`` is parametrized: the test's own SQLite file (in its STUDIOCTL_HOME, tests/conftest.py)
and a fresh database on the session's private PostgreSQL (tests/pg_server.py), so every
repository test runs on both implementations of ``Database``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pg_server import PgServer, pg_server
from studioctl import paths
from studioctl.store import Database, Store, open_database
from studioctl.store.migrations import migrate

__all__ = ["pg_server"]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    if request.param == "sqlite":
        database = open_database()
        assert database.where == str(paths.database_file())
    else:
        from studioctl.store.postgres import PostgresDatabase

        server: PgServer = request.getfixturevalue("pg_server")
        database = PostgresDatabase(server.new_database(), owner="host-a")
        migrate(database)
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> Store:
    return Store(db)


def query_plan(db: Database, sql: str, params: tuple[object, ...] = ()) -> str:
    """The engine's plan for ``sql`` as text: SQLite's EXPLAIN QUERY PLAN; PostgreSQL's
    EXPLAIN with sequential scans discouraged (a test table is too small for an index to
    win on cost: the question is whether the index can answer the query)."""
    if db.backend == "sqlite":
        return " ".join(r["detail"] for r in db.query("EXPLAIN QUERY PLAN " + sql, params))
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        return " ".join(str(r[0]) for r in db.query("EXPLAIN " + sql, params))
