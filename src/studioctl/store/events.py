"""The event log: launch stages, state changes, crashes, restarts, admin actions.

Ids only grow (AUTOINCREMENT, even across ``prune``), so a stream that remembers the last
id it sent resumes with ``since(last_id)`` and never sees an event twice or misses one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl.store.db import Database, dumps, loads, now

if TYPE_CHECKING:
    import sqlite3


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str  # e.g. "launch.stage", "state", "crash", "restart"
    message: str
    instance_id: str | None = None
    recipe_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _from_row(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        ts=row["ts"],
        kind=row["kind"],
        message=row["message"],
        instance_id=row["instance_id"],
        recipe_id=row["recipe_id"],
        data=loads(row["data"]) or {},
    )


class EventRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        kind: str,
        message: str,
        *,
        instance_id: str | None = None,
        recipe_id: str | None = None,
        data: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> int:
        """Store an event; return its id."""
        cur = self.db.execute(
            "INSERT INTO events (ts, kind, message, instance_id, recipe_id, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (now(ts), kind, message, instance_id, recipe_id, dumps(data) if data else None),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def since(self, after_id: int, limit: int = 500) -> list[Event]:
        """Events with an id above ``after_id``, oldest first, at most ``limit``."""
        rows = self.db.query(
            "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [_from_row(r) for r in rows]

    def tail(
        self,
        n: int,
        *,
        kinds: Iterable[str] | None = None,
        instance_id: str | None = None,
    ) -> list[Event]:
        """The last ``n`` events (of these kinds, of this instance), oldest first."""
        where: list[str] = []
        params: list[Any] = []
        if kinds is not None:
            kinds = list(kinds)
            where.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            params.extend(kinds)
        if instance_id is not None:
            where.append("instance_id = ?")
            params.append(instance_id)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.query(sql + " ORDER BY id DESC LIMIT ?", [*params, n])
        return [_from_row(r) for r in reversed(rows)]

    def prune(self, older_than_ts: float) -> int:
        """Delete events older than ``older_than_ts``; return how many."""
        return self.db.execute("DELETE FROM events WHERE ts < ?", (older_than_ts,)).rowcount
