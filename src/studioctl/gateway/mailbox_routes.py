"""The gateway's mailbox routes, for the tenant that made the requests (its API key).

``GET /v1/mailbox`` (``?limit=``, default 100): ``{"object": "list", "count", "data"}``, the
tenant's records without their responses, newest first. ``GET /v1/mailbox/{request_id}``
(``?auto_delete=true``: read and deleted atomically): the record with its response.
``DELETE /v1/mailbox/{request_id}``: 204, or 404. ``POST /v1/mailbox/{request_id}/webhook``:
deliver again now; an optional body ``{"url", "bearer_token", "headers"}`` overrides the
receiver (``url`` needs the tenant's ``webhook_url_override``, as ``X-Webhook-URL`` does),
answered ``{"status": "delivered", "request_id", "url"}`` or 502 ``webhook_failed``.
Another tenant's record is a 404, the same as one that does not exist. The admin reads
every tenant's records on the control API (``/mailbox``, ``control/mailbox.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from studioctl.errors import GatewayError, StudioError
from studioctl.gateway.asgi import Receive, Scope, Send, method_not_allowed, send_json
from studioctl.gateway.context import MAX_REQUEST_ID, Headers, request_id
from studioctl.gateway.mailbox import MailboxKeeper, header_text
from studioctl.gateway.sse import json_dumps, json_loads
from studioctl.settings.webhook import check_headers
from studioctl.tenants import TenantContext

if TYPE_CHECKING:
    from studioctl.webhooks.service import Mailbox

__all__ = ["MAILBOX_PATH", "MailboxRoutes"]

MAILBOX_PATH = "/v1/mailbox"
_MAX_BODY = 16 * 1024
_MAX_QUERY = 512


def _flag(qs: dict[str, list[str]], name: str) -> bool:
    value = (qs.get(name) or ["false"])[-1].strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise GatewayError(400, "invalid_parameter", f"{name} must be true or false", param=name)
    return value in ("true", "1")


def _limit(qs: dict[str, list[str]]) -> int:
    text = (qs.get("limit") or ["100"])[-1].strip()
    if not text.isdecimal() or not 1 <= int(text) <= 1000:
        raise GatewayError(400, "invalid_parameter", "limit must be 1-1000", param="limit")
    return int(text)


async def _body(receive: Receive) -> dict[str, Any]:
    """The POST body as a JSON object (empty: ``{}``), at most 16 KiB."""
    raw = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, "invalid_request", "the client went away")
        raw += message.get("body", b"")
        more = message.get("more_body", False)
        if len(raw) > _MAX_BODY:
            raise GatewayError(413, "request_too_large", f"the body is over {_MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json_loads(raw)
    except ValueError:
        raise GatewayError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise GatewayError(400, "invalid_json", "the body must be a JSON object")
    return data


class MailboxRoutes:
    """``/v1/mailbox`` and below (see the module docstring)."""

    def __init__(
        self,
        mailbox: Mailbox,
        keeper: MailboxKeeper,
        tenant: Callable[[Scope], TenantContext],
    ) -> None:
        """``tenant``: the request's tenant from its key (``cards.ModelCards.tenant``)."""
        self.mailbox = mailbox
        self.keeper = keeper
        self.tenant = tenant

    async def serve(
        self,
        path: str,
        method: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra: Headers | None,
    ) -> None:
        if path != MAILBOX_PATH and not path.startswith(MAILBOX_PATH + "/"):
            raise GatewayError(404, "not_found", f"no route {method} {path[:200]}")
        tenant = self.tenant(scope)
        query = scope.get("query_string", b"")[:_MAX_QUERY].decode("latin-1")
        qs = parse_qs(query)
        try:
            if path == MAILBOX_PATH:
                if method not in ("GET", "HEAD"):
                    raise method_not_allowed(method, path, "GET")
                out = await self.mailbox.listing(tenant.tenant_id, _limit(qs))
                return await send_json(send, 200, json_dumps(out), extra)
            rid, _, rest = path[len(MAILBOX_PATH) + 1 :].partition("/")
            # Not an id the gateway could have given: no such record (nothing is looked up).
            if len(rid) > MAX_REQUEST_ID or request_id(rid.encode()) != rid.encode():
                raise GatewayError(404, "not_found", "no such mailbox record")
            if rest == "webhook":
                if method != "POST":
                    raise method_not_allowed(method, path, "POST")
                out = await self._redeliver(rid, tenant, await _body(receive))
                return await send_json(send, 200, json_dumps(out), extra)
            if rest:
                raise GatewayError(404, "not_found", f"no route {method} {path[:200]}")
            if method == "DELETE":
                await self.mailbox.delete(rid, tenant.tenant_id)
                await send({"type": "http.response.start", "status": 204, "headers": extra or []})
                return await send({"type": "http.response.body", "body": b""})
            if method not in ("GET", "HEAD"):
                raise method_not_allowed(method, path, "GET, DELETE")
            record = await self.mailbox.read(
                rid, tenant.tenant_id, auto_delete=_flag(qs, "auto_delete")
            )
            await send_json(send, 200, json_dumps(record), extra)
        except GatewayError:
            raise
        except StudioError as exc:  # the service's NotFoundError: the gateway's envelope
            raise GatewayError(exc.http_status, exc.code or "error", exc.message) from None

    async def _redeliver(
        self, rid: str, tenant: TenantContext, body: dict[str, Any]
    ) -> dict[str, Any]:
        if not tenant.limits.webhooks:
            raise GatewayError(
                403, "webhooks_not_allowed", f"tenant {tenant.name!r} may not ask for webhooks"
            )
        url = body.get("url")
        if url is not None:
            if not isinstance(url, str):
                raise GatewayError(400, "invalid_webhook_url", "url must be a string", param="url")
            if not tenant.limits.webhook_url_override:
                raise GatewayError(
                    403,
                    "webhook_url_override_forbidden",
                    f"tenant {tenant.name!r} may not name its own webhook URL",
                    param="url",
                )
            url = self.keeper.check_url(url)
        headers: dict[str, str] = {}
        if body.get("headers") is not None:
            try:
                headers = dict(check_headers(body["headers"]))
            except ValueError as exc:
                raise GatewayError(400, "invalid_headers", str(exc), param="headers") from None
        bearer = body.get("bearer_token")
        if bearer is not None:
            if not isinstance(bearer, str):
                raise GatewayError(400, "invalid_request", "bearer_token must be a string")
            text = header_text(bearer.encode("utf-8"), "bearer_token")
            headers["Authorization"] = f"Bearer {text}"
        return await self.mailbox.redeliver(rid, tenant.tenant_id, url=url, headers=headers)
