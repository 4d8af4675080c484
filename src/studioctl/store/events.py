"""The event log: launch stages, state changes, crashes, restarts, admin actions.

Ids only grow (AUTOINCREMENT, even across ``prune``), so a stream that remembers the last
id it sent resumes with ``since(last_id)`` and never sees an event twice or misses one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from studioctl.store.db import Database, Row, dumps, loads, now


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


def _from_row(row: Row) -> Event:
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
        row = self.db.query_one(
            "INSERT INTO events (ts, kind, message, instance_id, recipe_id, data)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (now(ts), kind, message, instance_id, recipe_id, dumps(data) if data else None),
        )
        assert row is not None
        return int(row["id"])

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
            # No kinds: nothing matches (PostgreSQL refuses an empty IN list).
            where.append(f"kind IN ({', '.join('?' for _ in kinds)})" if kinds else "0 = 1")
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
