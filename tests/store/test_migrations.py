"""Migrations on an empty database, on one left at m001, and refusing a newer one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pg_server import PgServer
from studioctl.errors import SchemaTooNew
from studioctl.store import InstanceRepo, TenantRepo
from studioctl.store import migrations as mig
from studioctl.store.instances import InstanceRow
from studioctl.store.sqlite import SqliteDatabase as Database
from studioctl.store.usage import VALUE_COLUMNS

ALL = [m.name for m in mig.MIGRATIONS]


def tables(db: Database) -> set[str]:
    rows = db.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r["name"] for r in rows if not r["name"].startswith("sqlite_")}


def columns(db: Database, table: str) -> list[str]:
    return [r["name"] for r in db.query(f"PRAGMA table_info({table})")]


def test_names_are_numbered_in_order() -> None:
    assert ALL[:3] == ["m001_initial", "m002_tenants", "m003_usage"]
    assert [m.number for m in mig.MIGRATIONS] == list(range(1, len(ALL) + 1))
    assert mig.latest() == ALL[-1]


def test_empty_database(tmp_path: Path) -> None:
    with Database(tmp_path / "a.db") as db:
        assert mig.migrate(db) == ALL
        assert mig.applied(db) == ALL
        assert {
            "schema_migrations",
            "instances",
            "instance_transitions",
            "instance_ids",
            "events",
            "launches",
            "tenants",
            "api_keys",
            "usage",
            "usage_rollup",
        } <= tables(db)
        row = db.query_one("PRAGMA user_version")
        assert row is not None and row["user_version"] == len(ALL)
        # The rollup's columns are the ones usage.py adds into.
        assert columns(db, "usage_rollup")[5:] == list(VALUE_COLUMNS)
        # The row's fields, and the daemon that owns it (m010: several share PostgreSQL).
        assert set(columns(db, "instances")) == {*InstanceRow.__dataclass_fields__, "owner"}
        assert mig.migrate(db) == []  # idempotent


def test_database_left_at_m001_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with Database(path) as db:
        assert mig.migrate(db, target="m001_initial") == ["m001_initial"]
        assert "tenants" not in tables(db)
        # The row as studioctl 0.1 wrote it (its columns only).
        db.execute(
            "INSERT INTO instances (id, recipe_id, backend, model, served_name, host, port,"
            " state, created_at, updated_at) VALUES"
            " ('tiny-cpu-1', 'tiny-cpu', 'vllm', '/m', 'tiny', '127.0.0.1', 18000,"
            " 'ready', 100.0, 100.0)"
        )
    with Database(path) as db:  # a later studioctl opens it
        assert mig.migrate(db) == ALL[1:]
        repo = InstanceRepo(db)
        inst = repo.get("tiny-cpu-1")
        assert inst is not None and inst.port == 18000 and inst.created_at == 100.0
        assert inst.api_key is None  # started before engines had keys
        assert TenantRepo(db).create("acme").name == "acme"  # the new tables work
        assert repo.update("tiny-cpu-1", api_key="sce-x").api_key == "sce-x"


def test_the_engine_key_is_stored_but_never_shown(tmp_path: Path) -> None:
    with Database(tmp_path / "a.db") as db:
        mig.migrate(db)
        repo = InstanceRepo(db)
        rec = InstanceRow(
            id="t-1",
            recipe_id="t",
            backend="vllm",
            model="/m",
            served_name="t",
            host="127.0.0.1",
            port=18000,
            api_key="sce-secret",
        )
        got = repo.insert(rec)
        assert got.api_key == "sce-secret" and repo.list()[0].api_key == "sce-secret"
        assert "api_key" not in got.to_dict() and "sce-secret" not in repr(got)


def test_refuses_a_database_from_a_newer_studioctl(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with Database(path) as db:
        mig.migrate(db)
        db.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('m999_future', 0)")
    with Database(path) as db, pytest.raises(SchemaTooNew) as info:
        mig.migrate(db)
    msg = info.value.message
    assert "newer studioctl" in msg and "m999_future" in msg and str(path) in msg
    assert mig.latest() in msg
    assert info.value.hint and "upgrade" in info.value.hint


def test_unknown_target(tmp_path: Path) -> None:
    with (
        Database(tmp_path / "a.db") as db,
        pytest.raises(ValueError, match="unknown migration 'm042_nope'"),
    ):
        mig.migrate(db, target="m042_nope")


@pytest.mark.parametrize("round_", range(30))
def test_connections_opening_a_new_file_at_once(tmp_path: Path, round_: int) -> None:
    """Four connections open and migrate one new file together (the daemon and CLI
    commands starting at once). Switching a new file to WAL races; without the retry
    about one round in six answered "database is locked"."""
    path = tmp_path / "a.db"
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=30)

    def run() -> None:
        try:
            barrier.wait()
            db = Database(path)
            try:
                results.append(mig.migrate(db))
            finally:
                db.close()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    # Every migration ran exactly once, in one connection or another.
    assert sorted(m for r in results for m in r) == sorted(ALL)


def test_a_failing_migration_leaves_the_previous_step(tmp_path: Path) -> None:
    def broken(db: Database) -> None:
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    broken.__name__ = f"m{len(ALL) + 1:03d}_broken"
    mig.migration(broken)
    try:
        with Database(tmp_path / "a.db") as db:
            with pytest.raises(RuntimeError, match="boom"):
                mig.migrate(db)
            assert mig.applied(db) == ALL
            assert "half_done" not in tables(db)
    finally:
        mig.MIGRATIONS.pop()


def test_migration_names_are_checked() -> None:
    def badname(db: Database) -> None: ...

    def skips(db: Database) -> None: ...

    skips.__name__ = f"m{len(ALL) + 2:03d}_skips"
    with pytest.raises(ValueError, match="mNNN_description"):
        mig.migration(badname)
    with pytest.raises(ValueError, match=f"expected number {len(ALL) + 1:03d}"):
        mig.migration(skips)
    assert [m.name for m in mig.MIGRATIONS] == ALL


def test_both_backends_have_the_same_tables_and_columns(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """The same numbered migrations, run on SQLite and on PostgreSQL, give one schema."""
    from studioctl.store.postgres import PostgresDatabase

    with Database(tmp_path / "a.db") as lite, PostgresDatabase(pg_server.new_database()) as pg:
        assert mig.migrate(lite) == ALL
        assert mig.migrate(pg) == ALL
        assert mig.applied(pg) == ALL
        assert pg.schema() == lite.schema()
        assert "owner" in pg.schema()["instances"]
        assert mig.migrate(pg) == []  # idempotent there too


def test_two_processes_migrating_one_postgres_apply_each_step_once(
    pg_server: PgServer,
) -> None:
    """Two daemons starting together on one fresh database: each step runs once (the
    advisory lock), and both end at the latest migration."""
    from studioctl.store.postgres import PostgresDatabase

    url = pg_server.new_database()
    ran: list[list[str]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with PostgresDatabase(url) as db:
                ran.append(mig.migrate(db))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(ran[0] + ran[1]) == sorted(ALL)
