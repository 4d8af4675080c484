"""The mailbox's tables (migration m011): kept results, the webhook outbox, delivery attempts.

A record is keyed by its request id and belongs to one tenant: every read and delete takes
the tenant (``None`` only for the admin), so another tenant's key finds nothing. The outbox
holds one delivery per record with the exact payload every try sends (its signature covers
those bytes), its state (``pending``, ``delivered``, ``failed``), the tries made and when the
next is due: it is the worker's only state, so a delivery survives a daemon restart. Each try
is logged in ``webhook_attempts`` (status code or a bounded error, never a header or body).
Plain SQL the PostgreSQL store runs as well; times come from the caller.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from studioctl.errors import ConflictError
from studioctl.store.db import Database, dumps, loads

__all__ = ["Attempt", "MailboxRecord", "MailboxRepo", "OutboxEntry"]

_SUMMARY = "request_id, tenant_id, model, created, status, expires_at"


@dataclass(frozen=True)
class MailboxRecord:
    request_id: str
    tenant_id: str
    model: str | None
    created: float
    status: str  # completed | failed | incomplete
    response: Any  # the JSON answer (None in listings)
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": "mailbox.record",
            "request_id": self.request_id,
            "model": self.model,
            "created": int(self.created),
            "status": self.status,
            "expires_at": int(self.expires_at),
        }
        if self.response is not None:
            out["response"] = self.response
        return out


@dataclass(frozen=True)
class OutboxEntry:
    request_id: str
    url: str
    payload: str
    headers: dict[str, str] = field(default_factory=dict)
    state: str = "pending"
    attempts: int = 0
    max_attempts: int = 1
    next_at: float = 0.0


@dataclass(frozen=True)
class Attempt:
    request_id: str
    attempt: int
    at: float
    url: str
    status_code: int | None
    error: str | None
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": self.at,
            "url": self.url,
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 1),
        }


def _record(row: Any, with_response: bool) -> MailboxRecord:
    return MailboxRecord(
        request_id=row["request_id"],
        tenant_id=row["tenant_id"],
        model=row["model"],
        created=row["created"],
        status=row["status"],
        response=loads(row["response"]) if with_response else None,
        expires_at=row["expires_at"],
    )


def _entry(row: Any) -> OutboxEntry:
    return OutboxEntry(
        request_id=row["request_id"],
        url=row["url"],
        payload=row["payload"],
        headers=loads(row["headers"]) or {},
        state=row["state"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        next_at=row["next_at"],
    )


def _owned(tenant_id: str | None) -> tuple[str, tuple[Any, ...]]:
    """The tenant clause: the admin (None) sees every record."""
    return ("", ()) if tenant_id is None else (" AND tenant_id = ?", (tenant_id,))


class MailboxRepo:
    """The mailbox over the store's ``Database`` (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- records ----------------------------------------------------------------------------

    def put(self, record: MailboxRecord, outbox: OutboxEntry | None, at: float) -> None:
        """Keep ``record`` (replacing one of the same id and tenant) and queue its delivery,
        at once. ``ConflictError`` when the id is another tenant's record (a client may send
        any X-Request-Id: it never replaces, nor reaches, what another tenant keeps)."""
        with self.db.transaction():
            owner = self.db.query_one(
                "SELECT tenant_id FROM mailbox WHERE request_id = ?", (record.request_id,)
            )
            if owner is not None and owner["tenant_id"] != record.tenant_id:
                raise ConflictError(
                    f"request id {record.request_id!r} is another tenant's kept result: "
                    "this one is not kept",
                    code="request_id_taken",
                )
            self._delete(record.request_id)
            self.db.execute(
                "INSERT INTO mailbox (request_id, tenant_id, model, created, status, response,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.request_id,
                    record.tenant_id,
                    record.model,
                    record.created,
                    record.status,
                    dumps(record.response),
                    record.expires_at,
                ),
            )
            if outbox is not None:
                self.enqueue(outbox, at)

    def list(self, tenant_id: str | None, limit: int) -> builtins.list[MailboxRecord]:
        """The records (without their responses), newest first."""
        clause, params = _owned(tenant_id)
        rows = self.db.query(
            f"SELECT {_SUMMARY} FROM mailbox WHERE 1 = 1{clause} ORDER BY created DESC LIMIT ?",
            (*params, limit),
        )
        return [_record(r, False) for r in rows]

    def get(self, request_id: str, tenant_id: str | None) -> MailboxRecord | None:
        clause, params = _owned(tenant_id)
        row = self.db.query_one(
            f"SELECT * FROM mailbox WHERE request_id = ?{clause}", (request_id, *params)
        )
        return _record(row, True) if row is not None else None

    def take(self, request_id: str, tenant_id: str | None) -> MailboxRecord | None:
        """Read and delete in one transaction: two readers never both get the record."""
        with self.db.transaction():
            record = self.get(request_id, tenant_id)
            if record is not None:
                self._delete(request_id)
        return record

    def delete(self, request_id: str, tenant_id: str | None) -> bool:
        with self.db.transaction():
            if self.get(request_id, tenant_id) is None:
                return False
            self._delete(request_id)
        return True

    def _delete(self, request_id: str) -> None:
        for table in ("mailbox", "webhook_outbox", "webhook_attempts"):
            self.db.execute(f"DELETE FROM {table} WHERE request_id = ?", (request_id,))

    def prune(self, at: float) -> int:
        """Delete the records past their retention, with their deliveries; how many."""
        with self.db.transaction():
            rows = self.db.query("SELECT request_id FROM mailbox WHERE expires_at <= ?", (at,))
            for r in rows:
                self._delete(r["request_id"])
        return len(rows)

    # -- the outbox -------------------------------------------------------------------------

    def enqueue(self, entry: OutboxEntry, at: float) -> None:
        """Queue (or queue again, from its first try) the delivery of a record."""
        with self.db.transaction():
            self.db.execute("DELETE FROM webhook_outbox WHERE request_id = ?", (entry.request_id,))
            self.db.execute(
                "INSERT INTO webhook_outbox (request_id, url, headers, payload, state, attempts,"
                " max_attempts, next_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.request_id,
                    entry.url,
                    dumps(entry.headers),
                    entry.payload,
                    entry.state,
                    entry.attempts,
                    entry.max_attempts,
                    entry.next_at,
                    at,
                ),
            )

    def outbox(self, request_id: str) -> OutboxEntry | None:
        row = self.db.query_one("SELECT * FROM webhook_outbox WHERE request_id = ?", (request_id,))
        return _entry(row) if row is not None else None

    def due(self, at: float, limit: int) -> builtins.list[OutboxEntry]:
        """Pending deliveries whose next try is due, oldest due first."""
        rows = self.db.query(
            "SELECT * FROM webhook_outbox WHERE state = 'pending' AND next_at <= ?"
            " ORDER BY next_at LIMIT ?",
            (at, limit),
        )
        return [_entry(r) for r in rows]

    def next_due(self) -> float | None:
        """When the earliest pending delivery is due (None: nothing pending)."""
        row = self.db.query_one(
            "SELECT MIN(next_at) AS t FROM webhook_outbox WHERE state = 'pending'"
        )
        return row["t"] if row is not None and row["t"] is not None else None

    def attempted(self, attempt: Attempt, state: str, tries: int, next_at: float) -> None:
        """Log one try (``attempt.attempt``: its number in the record's whole log) and move
        its delivery on: its state, ``tries`` made since it was queued, next due time."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO webhook_attempts (request_id, attempt, at, url, status_code, error,"
                " duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.request_id,
                    attempt.attempt,
                    attempt.at,
                    attempt.url,
                    attempt.status_code,
                    attempt.error,
                    attempt.duration_ms,
                ),
            )
            self.db.execute(
                "UPDATE webhook_outbox SET state = ?, attempts = ?, next_at = ?, updated_at = ?"
                " WHERE request_id = ?",
                (state, tries, next_at, attempt.at, attempt.request_id),
            )

    def attempts(self, request_id: str) -> builtins.list[Attempt]:
        rows = self.db.query(
            "SELECT * FROM webhook_attempts WHERE request_id = ? ORDER BY attempt",
            (request_id,),
        )
        return [
            Attempt(
                request_id=r["request_id"],
                attempt=r["attempt"],
                at=r["at"],
                url=r["url"],
                status_code=r["status_code"],
                error=r["error"],
                duration_ms=r["duration_ms"],
            )
            for r in rows
        ]

    def last_attempt(self, request_id: str) -> int:
        row = self.db.query_one(
            "SELECT MAX(attempt) AS n FROM webhook_attempts WHERE request_id = ?", (request_id,)
        )
        return int(row["n"]) if row is not None and row["n"] is not None else 0
