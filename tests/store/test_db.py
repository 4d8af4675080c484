"""Database: pragmas, one connection per thread, transactions, errors, health."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from studioctl.errors import StoreError
from studioctl.store.sqlite import SqliteDatabase as Database


def pragma(db: Database, name: str, column: str | None = None) -> object:
    row = db.query_one(f"PRAGMA {name}")
    assert row is not None
    return row[column or name]


def test_pragmas(tmp_path: Path) -> None:
    with Database(tmp_path / "a.db", busy_timeout_ms=1234) as db:
        assert pragma(db, "journal_mode") == "wal"
        assert pragma(db, "foreign_keys") == 1
        assert pragma(db, "synchronous") == 1  # NORMAL
        assert pragma(db, "busy_timeout", "timeout") == 1234
        assert isinstance(db.query_one("SELECT 1 AS one"), sqlite3.Row)


def test_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "x.db"
    with Database(path):
        assert path.exists()


def test_one_connection_per_thread(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    db.execute("CREATE TABLE t (v INTEGER)")
    mine = db.conn
    assert db.conn is mine  # stable within a thread
    seen: list[sqlite3.Connection] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            seen.append(db.conn)
            db.execute("INSERT INTO t VALUES (1)")
            db.close_thread()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(c) for c in seen}) == 3 and mine not in seen
    row = db.query_one("SELECT COUNT(*) AS n FROM t")
    assert row is not None and row["n"] == 3
    db.close()


def test_close_closes_every_thread_connection(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    other: list[sqlite3.Connection] = []
    t = threading.Thread(target=lambda: other.append(db.conn))
    t.start()
    t.join()
    assert db.check()
    db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        other[0].execute("SELECT 1")
    with pytest.raises(StoreError, match="closed"):
        db.execute("SELECT 1")
    assert db.check() is False  # /healthz says no, never raises


def test_transaction_commits_and_rolls_back(tmp_path: Path) -> None:
    with Database(tmp_path / "a.db") as db:
        db.execute("CREATE TABLE t (v INTEGER)")
        with db.transaction():
            db.execute("INSERT INTO t VALUES (1)")
            with db.transaction():  # nested: joins the outer one
                db.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(RuntimeError), db.transaction():
            db.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("boom")
        assert [r["v"] for r in db.query("SELECT v FROM t ORDER BY v")] == [1, 2]
        assert not db.conn.in_transaction


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    # busy_timeout: a writer blocked by another connection waits instead of failing.
    path = tmp_path / "a.db"
    a = Database(path)
    b = Database(path, busy_timeout_ms=5000)
    a.execute("CREATE TABLE t (v INTEGER)")
    done = threading.Event()

    def write_b() -> None:
        with b.transaction():
            b.execute("INSERT INTO t VALUES (2)")
        b.close_thread()
        done.set()

    with a.transaction():
        a.execute("INSERT INTO t VALUES (1)")
        t = threading.Thread(target=write_b)
        t.start()
        assert not done.wait(0.2)  # b is waiting for a's write lock
    t.join(5)
    assert done.is_set()
    assert [r["v"] for r in a.query("SELECT v FROM t ORDER BY v")] == [1, 2]
    a.close()
    b.close()


def test_not_a_database_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite, just some bytes " * 100)
    with pytest.raises(StoreError, match=r"junk\.db") as info:
        Database(path)
    assert "studioctl database" in info.value.message
    assert info.value.hint


def test_unusable_folder_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"file/x\.db"):
        Database(blocker / "x.db")


def test_a_forked_child_opens_its_own_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import studioctl.store.sqlite as dbmod

    db = Database(tmp_path / "a.db")
    parent = db.conn
    child_pid = os.getpid() + 1
    monkeypatch.setattr(dbmod.os, "getpid", lambda: child_pid)  # as after fork()
    child = db.conn
    assert child is not parent
    assert db.conn is child
    parent.execute("SELECT 1")  # the parent's connection was left open, untouched
    db.close()
    parent.close()
