"""Admin routes of the request log: ``GET /requests`` and ``GET /requests/{request_id}``.

Served on the control socket (``studioctl requests``) and, behind the admin token, on the
gateway as ``/admin/requests``. Query parameters, each checked by ``api.params`` (a bad one
is a 400 naming it): ``tenant`` (name or id), ``model``, ``status`` (``429`` or ``4xx``),
``since`` (``15m``, ``1h``, ``7d``), ``limit`` (1…10000, default 100), ``after`` (a row id:
the rows written after it, oldest first; what ``studioctl requests -f`` polls with).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from studioctl.api import params as P
from studioctl.control.http import json_response
from studioctl.errors import NotFoundError
from studioctl.store.usage import MAX_ROWS, RequestFilter
from studioctl.tenants import ANONYMOUS_TENANT_ID

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request
    from starlette.responses import Response

    from studioctl.store.usage import RequestLog
    from studioctl.tenants import TenantService

__all__ = ["request_filter", "request_routes"]

DEFAULT_LIMIT = 100


def request_filter(qp: Mapping[str, str], tenant_id: str | None) -> RequestFilter:
    """The listing's filter from its query parameters (``tenant`` already resolved)."""
    status = P.q_text(qp, "status", 8)
    since = P.q_text(qp, "since", 16)
    return RequestFilter(
        tenant_id=tenant_id,
        model=P.q_text(qp, "model"),
        status=P.parse_status(status) if status is not None else None,
        since=time.time() - P.parse_since(since) if since is not None else None,
        after_id=P.q_opt_int(qp, "after", 0, P.MAX_SQL_INT),
        limit=P.q_int(qp, "limit", 1, MAX_ROWS, DEFAULT_LIMIT),
    )


def request_routes(tenants: TenantService, log: RequestLog) -> list[Route]:
    def names() -> dict[str, str]:
        return {t.id: t.name for t in tenants.list()}

    def named(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id = names()
        for row in rows:
            tid = row["tenant_id"]
            row["tenant"] = by_id.get(tid, tid) if tid is not None else None
        return rows

    async def list_requests(request: Request) -> Response:
        qp = request.query_params
        ref = P.q_text(qp, "tenant")
        tenant_id = None
        if ref is not None:
            tenant_id = ref if ref == ANONYMOUS_TENANT_ID else tenants.get(ref).id
        f = request_filter(qp, tenant_id)
        if f.after_id is not None:  # following: the rows after the last one seen
            rows = await asyncio.to_thread(log.list, f)
            last = rows[-1]["id"] if rows else f.after_id
        else:
            # The newest id before listing, so that a follower that goes on from ``last_id``
            # misses no row written meanwhile and sees none twice.
            before = await asyncio.to_thread(log.last_id)
            rows = await asyncio.to_thread(log.list, f)
            last = max(before, rows[0]["id"]) if rows else before
        return json_response({"object": "list", "data": named(rows), "last_id": last})

    async def one_request(request: Request) -> Response:
        rid = request.path_params["request_id"]
        if len(rid) > P.MAX_TEXT:
            raise P.bad("request_id", f"must be at most {P.MAX_TEXT} characters")
        rows = await asyncio.to_thread(log.get, rid)
        if not rows:
            raise NotFoundError(
                f"no request {P.shown(rid)} in the request log (pruned after "
                "usage.retention_days, or never accounted)",
                details={"param": "request_id"},
            )
        return json_response({"request_id": rid, "data": named(rows)})

    return [
        Route("/requests", list_requests),
        Route("/requests/{request_id}", one_request),
    ]
