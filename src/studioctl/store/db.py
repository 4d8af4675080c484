"""The SQLite connection: WAL, one connection per thread, transactions, health check.

The daemon uses the database from two threads: the asyncio thread (short queries) and the
usage writer's thread (batched inserts). SQLite connections must not be shared across
threads while in use, so each thread gets its own (``threading.local``); WAL lets readers
run while the writer writes, and ``busy_timeout`` makes a second writer wait instead of
failing at once.

``sqlite3`` is imported inside functions: the CLI imports this package and
``studioctl --help`` must stay fast.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl.errors import StoreError

if TYPE_CHECKING:
    import sqlite3

Params = Sequence[Any] | dict[str, Any]


class Database:
    """A SQLite database file, opened once per thread on first use.

    >>> db = Database(path); migrations.migrate(db)
    >>> with db.transaction():
    ...     db.execute("INSERT ...", (...))
    """

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 5000) -> None:
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

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries -------------------------------------------------------------------------

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Params]) -> sqlite3.Cursor:
        return self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    @contextmanager
    def transaction(self) -> Iterator[Database]:
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

    # -- health --------------------------------------------------------------------------

    def check(self) -> bool:
        """True when the database answers a query (for /healthz). Never raises."""
        import sqlite3

        try:
            row = self.query_one("SELECT 1 AS ok")
            return row is not None and row["ok"] == 1
        except (sqlite3.Error, StoreError):
            return False


# -- helpers shared by the repositories ----------------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON for a column."""
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def loads(text: str | None) -> Any:
    import json

    return None if text is None else json.loads(text)


def now(ts: float | None) -> float:
    """``ts`` when a caller (a test) injects one, else the wall clock."""
    import time

    return time.time() if ts is None else ts
