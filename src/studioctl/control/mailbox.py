"""Admin routes of the mailbox: every tenant's records, with their delivery logs.

``GET /mailbox`` (``?tenant=`` name or id, ``?limit=`` 1-1000): ``{"object": "list",
"count", "data"}``; ``GET /mailbox/{request_id}``: the record with its response, its
delivery (state, tries) and every attempt (``studioctl mailbox show``); ``DELETE
/mailbox/{request_id}``: ``{"deleted": request_id}``; ``POST /mailbox/{request_id}/webhook``
(body ``{"url", "bearer_token", "headers"}``, all optional): one delivery now. Served on
the control socket and, behind the admin token, on the gateway as ``/admin/mailbox``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from studioctl.api import params as P
from studioctl.control.http import json_body, json_response
from studioctl.settings.webhook import MAX_HEADER_VALUE, check_headers

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from studioctl.tenants import TenantService
    from studioctl.webhooks.service import Mailbox

__all__ = ["mailbox_routes"]


def _request_id(request: Request) -> str:
    rid: str = request.path_params["request_id"]
    if not rid or len(rid) > P.MAX_TEXT:
        raise P.bad("request_id", f"must be 1-{P.MAX_TEXT} characters")
    return rid


def _overrides(body: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """``url`` and the headers (``bearer_token`` as Authorization) of a re-delivery."""
    url = body.get("url")
    if url is not None and not isinstance(url, str):
        raise P.bad("url", "must be a string")
    headers: dict[str, str] = {}
    if body.get("headers") is not None:
        try:
            headers = dict(check_headers(body["headers"]))
        except ValueError as exc:
            raise P.bad("headers", str(exc)) from None
    bearer = body.get("bearer_token")
    if bearer is not None:
        if not isinstance(bearer, str) or len(bearer) > MAX_HEADER_VALUE or "\n" in bearer:
            raise P.bad("bearer_token", f"must be one line of at most {MAX_HEADER_VALUE}")
        headers["Authorization"] = f"Bearer {bearer}"
    return url, headers


def mailbox_routes(mailbox: Mailbox, tenants: TenantService) -> list[Route]:
    async def listing(request: Request) -> Response:
        qp = request.query_params
        ref = P.q_text(qp, "tenant")
        tenant_id = tenants.get(ref).id if ref is not None else None
        limit = P.q_int(qp, "limit", 1, 1000, 100)
        return json_response(await mailbox.listing(tenant_id, limit))

    async def one(request: Request) -> Response:
        rid = _request_id(request)
        if request.method == "DELETE":
            await mailbox.delete(rid, None)
            return json_response({"deleted": rid})
        return json_response(await mailbox.details(rid, None))

    async def redeliver(request: Request) -> Response:
        rid = _request_id(request)
        url, headers = _overrides(await json_body(request))
        return json_response(await mailbox.redeliver(rid, None, url=url, headers=headers))

    return [
        Route("/mailbox", listing),
        Route("/mailbox/{request_id}", one, methods=["GET", "DELETE"]),
        Route("/mailbox/{request_id}/webhook", redeliver, methods=["POST"]),
    ]
