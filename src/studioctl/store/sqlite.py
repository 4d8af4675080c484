"""The SQLite implementation of ``Database``: WAL, one connection per thread, transactions.

The daemon uses the database from two threads: the asyncio thread (short queries) and the
usage writer's thread (batched inserts). SQLite connections must not be shared across
threads while in use, so each thread gets its own (``threading.local``); WAL lets readers
run while the writer writes, and ``busy_timeout`` makes a second writer wait instead of
failing at once.

``sqlite3`` is imported inside functions: the CLI imports this package and
``studioctl --help`` must stay fast. Everything here is a local file access, cheap enough
to run on the asyncio thread for the short queries the gateway and control API make.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from studioctl.errors import StoreError
from studioctl.store.db import Database, Params

if TYPE_CHECKING:
    import sqlite3

# The portable SQL's two-argument GREATEST/LEAST are SQLite's scalar MAX/MIN.
_SCALAR = re.compile(r"\b(GREATEST|LEAST)\(", re.IGNORECASE)


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """The repositories' portable SQL in SQLite's spelling (cached: a few dozen statements)."""
    return _SCALAR.sub(lambda m: "MAX(" if m.group(1).upper() == "GREATEST" else "MIN(", sql)


class SqliteDatabase(Database):
    """A SQLite database file, opened once per thread on first use.

    >>> db = SqliteDatabase(path); migrations.migrate(db)
    >>> with db.transaction():
    ...     db.execute("INSERT ...", (...))
    """

    backend = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 5000) -> None:
        import sqlite3

        self.integrity_errors = (sqlite3.IntegrityError,)
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        self._pid = os.getpid()
        self.conn  # noqa: B018 — open now, so a bad path or a non-database fails here

    # -- connections ---------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        if self._pid != os.getpid():
            # A forked child (daemon start detaching) must not use the parent's
            # connections (SQLite forbids carrying them across fork): start afresh, and
            # keep the parent's referenced, never closed (closing could checkpoint the
            # parent's WAL under it).
            self._pid = os.getpid()
            self._inherited = [*getattr(self, "_inherited", []), *self._all]
            self._local = threading.local()
            self._all = []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError(f"database {self.path} is closed")
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for {self.path}: {exc}") from exc
        try:
            # isolation_level=None: no implicit transactions; `transaction()` says BEGIN.
            # check_same_thread=False only so that close() may close every thread's
            # connection at shutdown; each connection is otherwise used by its own thread.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = self._set_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL-safe
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"cannot use {self.path}: {exc} (is it a studioctl database?)",
                hint="move the file away; studioctl creates a new database on the next start",
            ) from exc
        if str(mode).lower() != "wal":
            conn.close()
            raise StoreError(f"cannot switch {self.path} to WAL mode (got {mode!r})")
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL, waiting out another connection doing the same.

        Changing the journal mode of a new file takes an exclusive lock, and SQLite
        answers "database is locked" at once, without its busy handler, when two
        connections race to do it (the daemon and a CLI command opening a fresh
        database together): retry until the busy timeout has passed.
        """
        import sqlite3

        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = 0.005
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def close_thread(self) -> None:
        """Close this thread's connection (a worker thread calls it before it ends)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            conn.close()

    def close(self) -> None:
        """Close every thread's connection. The Database cannot be used afterwards."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local.conn = None

    @property
    def where(self) -> str:
        return str(self.path)

    # -- queries -------------------------------------------------------------------------

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        return self.conn.execute(translate(sql), params)

    def executemany(self, sql: str, rows: Sequence[Params]) -> sqlite3.Cursor:
        return self.conn.executemany(translate(sql), rows)

    @contextmanager
    def transaction(self) -> Iterator[SqliteDatabase]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error).

        IMMEDIATE takes the write lock up front, so a transaction that reads then writes
        waits for ``busy_timeout`` instead of failing with "database is locked" when it
        upgrades. A nested ``transaction()`` joins the outer one.
        """
        conn = self.conn
        if conn.in_transaction:
            yield self
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def lock_schema(self) -> None:
        pass  # BEGIN IMMEDIATE already holds the write lock

    def schema_step(self, number: int) -> None:
        # For sqlite3 shell users: PRAGMA user_version tells the schema step.
        self.conn.execute(f"PRAGMA user_version = {int(number)}")

    def schema(self) -> dict[str, list[str]]:
        names = self.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        tables = [r["name"] for r in names if not r["name"].startswith("sqlite_")]
        return {t: [c["name"] for c in self.query(f"PRAGMA table_info({t})")] for t in tables}

    def notify(self, payload: str) -> None:
        pass  # one daemon per file: nobody else to tell

    # -- health --------------------------------------------------------------------------

    def check(self) -> bool:
        """True when the database answers a query (for /healthz). Never raises."""
        import sqlite3

        try:
            row = self.query_one("SELECT 1 AS ok")
            return row is not None and row["ok"] == 1
        except (sqlite3.Error, StoreError):
            return False
