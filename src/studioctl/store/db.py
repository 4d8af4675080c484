"""The repository interface: ``Database``, which the repositories (store/*.py) talk to.

Two implementations: ``studioctl.store.sqlite.SqliteDatabase`` (a local file, the default)
and ``studioctl.store.postgres.PostgresDatabase`` (a database several daemons share). The
repositories write one SQL, in the portable subset both understand (``?`` placeholders,
``ON CONFLICT ... DO UPDATE`` with the target table named in the expressions, ``RETURNING``
for generated ids, ``GREATEST``/``LEAST``, the SQLite column types of the migrations); each
implementation rewrites what its engine spells differently in one place (its
``translate``), so no repository asks which backend it runs on.

Both open one connection per thread (the asyncio thread for short queries, the usage
writer's thread for batched inserts) and run ``transaction()`` blocks as one transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

Params = Sequence[Any] | dict[str, Any]


class Row(Protocol):
    """A result row: by column name (``row["id"]``) or by position."""

    def __getitem__(self, key: str | int, /) -> Any: ...

    def keys(self) -> Any: ...


class Cursor(Protocol):
    """What ``execute`` returns: affected row count, rows, column descriptions."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Feed(Protocol):
    """What tells a daemon of the tenant and key changes other daemons made
    (``studioctl.store.feed.ChangeFeed`` on PostgreSQL)."""

    def subscribe(self, listener: Callable[[], None]) -> None: ...

    def poll(self) -> bool: ...

    def announce(self) -> None: ...

    def close(self) -> None: ...


class Database(ABC):
    """One database, opened once per thread on first use.

    >>> db = open_database(); migrations.migrate(db)
    >>> with db.transaction():
    ...     db.execute("INSERT ...", (...))
    """

    #: "sqlite" | "postgres" (for messages and /healthz; repositories never branch on it).
    backend: str = ""
    #: The exception classes a unique or foreign key violation raises.
    integrity_errors: tuple[type[Exception], ...] = ()
    #: The daemon this connection works for, when several share the database: the
    #: instance rows it lists, adopts and evicts are its own. None: the database is ours
    #: alone (a local file), every row is.
    owner: str | None = None

    @property
    @abstractmethod
    def where(self) -> str:
        """The database's name in messages: a file path, or a URL without its password."""

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Params]) -> Cursor: ...

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        return list(self.execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self.execute(sql, params).fetchone()
        return row

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Database]:
        """One transaction (committed at the end, rolled back on error); a nested
        ``transaction()`` joins the outer one."""

    @abstractmethod
    def lock_schema(self) -> None:
        """Inside a transaction: keep a concurrent migrator (another process) out until it
        ends, so each step is applied once."""

    @abstractmethod
    def schema_step(self, number: int) -> None:
        """After migration ``number`` ran (inside its transaction): any engine-side record."""

    @abstractmethod
    def schema(self) -> dict[str, list[str]]:
        """Each table's columns, in order (the migration tests compare the backends)."""

    @abstractmethod
    def notify(self, payload: str) -> None:
        """Tell the other daemons sharing this database that tenants or keys changed
        (``payload`` names what). A local SQLite file has no one to tell."""

    def change_feed(self) -> Feed | None:
        """What tells this daemon of tenant and key changes made by the others sharing the
        database (``notify``), or None when there are no others (a local file)."""
        return None

    @abstractmethod
    def check(self) -> bool:
        """True when the database answers a query (for /healthz). Never raises."""

    @abstractmethod
    def close_thread(self) -> None:
        """Close this thread's connection (a worker thread calls it before it ends)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection. The Database cannot be used afterwards."""

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
