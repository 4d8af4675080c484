"""The request log: usage rows listed and followed by filter, and the stored bodies.

``RequestLog.list`` answers ``studioctl requests`` and ``GET /admin/requests``: newest
first, or (``after_id``: following) the rows written after a row id, oldest first, so a
follower polls with the last id it printed. ``get`` finds one request by its request id,
with its bodies when ``log_bodies`` stored them.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

from studioctl.store.db import Database, Row

__all__ = ["MAX_ROWS", "TRUNCATED_MARK", "RequestFilter", "RequestLog", "cap_body"]

#: The most rows one listing answers.
MAX_ROWS = 10_000
#: Appended to a body cut at ``usage.body_max_bytes``.
TRUNCATED_MARK = "…[truncated by studioctl: usage.body_max_bytes]"

_COLUMNS = (
    "id, request_id, ts, tenant_id, key_prefix, model, instance_id, status, prompt_tokens,"
    " completion_tokens, ttft_ms, duration_ms, queue_ms, streamed, disconnected, error_code"
)


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What a listing keeps; None: any. ``status``: an inclusive (low, high) range."""

    tenant_id: str | None = None
    model: str | None = None
    status: tuple[int, int] | None = None
    since: float | None = None  # time.time() of the oldest row kept
    after_id: int | None = None  # only rows written after this row id (oldest first)
    limit: int = 100


def cap_body(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_bytes`` of UTF-8 (plus the marker); (text, cut)."""
    if len(text) <= max_bytes // 4:  # at most 4 bytes per character: surely under the cap
        return text, False
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore") + TRUNCATED_MARK, True


def _row(r: Row) -> dict[str, Any]:
    out = dict(r)
    out["streamed"] = bool(out["streamed"])
    out["disconnected"] = bool(out["disconnected"])
    return out


class RequestLog:
    """Reads of the ``usage`` and ``request_bodies`` tables (migrations m003, m007, m009)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, f: RequestFilter) -> list[dict[str, Any]]:
        """The rows ``f`` keeps (see the module docstring for the order), at most
        ``f.limit`` (capped at ``MAX_ROWS``)."""
        given = (
            ("tenant_id = ?", (f.tenant_id,)),
            ("model = ?", (f.model,)),
            ("status BETWEEN ? AND ?", f.status),
            ("ts >= ?", (f.since,)),
            ("id > ?", (f.after_id,)),
        )
        kept = [(c, v) for c, v in given if v is not None and v[0] is not None]
        where = [c for c, _ in kept]
        params: list[Any] = [x for _, v in kept for x in v]
        sql = f"SELECT {_COLUMNS} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # By row id, the order rows were written in (the primary key: no sort needed).
        sql += " ORDER BY id ASC" if f.after_id is not None else " ORDER BY id DESC"
        sql += " LIMIT ?"
        params.append(max(1, min(f.limit, MAX_ROWS)))
        return [_row(r) for r in self.db.query(sql, params)]

    def last_id(self) -> int:
        """The newest row id (0: none): where a follower with nothing listed starts."""
        row = self.db.query_one("SELECT max(id) AS m FROM usage")
        return int(row["m"]) if row is not None and row["m"] is not None else 0

    def get(self, request_id: str, limit: int = 10) -> builtins.list[dict[str, Any]]:
        """The rows of ``request_id``, newest first (a client may reuse its ids), each with
        ``request_body``, ``response_body`` and ``truncated`` when its bodies were stored."""
        rows = self.db.query(
            f"SELECT {_COLUMNS} FROM usage WHERE request_id = ? ORDER BY id DESC LIMIT ?",
            (request_id, limit),
        )
        bodies = {
            b["ts"]: b
            for b in self.db.query(
                "SELECT ts, request, response, truncated FROM request_bodies WHERE request_id = ?",
                (request_id,),
            )
        }
        out = [_row(r) for r in rows]
        for row in out:  # a row and its bodies share the request's time
            body = bodies.get(row["ts"])
            if body is not None:
                row["request_body"] = body["request"]
                row["response_body"] = body["response"]
                row["truncated"] = bool(body["truncated"])
        return out
