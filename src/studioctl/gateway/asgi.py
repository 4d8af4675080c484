"""Small ASGI pieces of the gateway: types, JSON and error answers, CORS, the admin gate."""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from studioctl.errors import GatewayError
from studioctl.gateway.context import Headers
from studioctl.gateway.sse import json_dumps

__all__ = [
    "CT_JSON",
    "CT_SSE",
    "CT_TEXT",
    "NO_CACHE",
    "ASGIApp",
    "AdminGate",
    "Cors",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "content_length",
    "lifespan",
    "method_not_allowed",
    "send_error",
    "send_json",
    "with_header",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CT_JSON = (b"content-type", b"application/json")
CT_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
CT_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
NO_CACHE = (b"cache-control", b"no-cache")
_CORS_METHODS = b"GET, POST, OPTIONS"
_CORS_HEADERS = b"authorization, content-type, x-admin-token, openai-organization"


def content_length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


async def send_json(send: Send, status: int, body: bytes, extra: Headers | None) -> None:
    headers = [CT_JSON, content_length(body)]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, exc: GatewayError, extra: Headers | None) -> None:
    """The error envelope ``{"error": {...}}`` with its status (and Retry-After)."""
    body = json_dumps({"error": exc.to_dict()})
    headers = [CT_JSON, content_length(body)]
    if exc.retry_after is not None:
        # At least 1: "Retry-After: 0" invites a client to hammer.
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode()))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def with_header(send: Send, header: tuple[bytes, bytes]) -> Send:
    """``send`` adding ``header`` to the response head (an answer made elsewhere: the
    admin API's)."""

    async def tagged_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return tagged_send


async def lifespan(
    receive: Receive,
    send: Send,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    """The ASGI lifespan protocol: ``startup`` when the server starts (a failure is
    reported, and the server does not start), ``shutdown`` when it stops."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def method_not_allowed(method: str, path: str, allowed: str) -> GatewayError:
    return GatewayError(405, "method_not_allowed", f"{method} {path}: use {allowed}")


class Cors:
    """The CORS answer headers for the origins of ``gateway.cors_origins`` (``*``: any)."""

    __slots__ = ("_allow_headers", "_any", "_origins", "enabled")

    def __init__(self, origins: Iterable[str], key_header: str = "") -> None:
        """``key_header``: the API key header (gateway.api_key_header), which a browser may
        send only if the preflight allows it."""
        allowed = tuple(origins)
        self._allow_headers = _CORS_HEADERS + (
            b", " + key_header.lower().encode() if key_header else b""
        )
        self._any = "*" in allowed
        self._origins = frozenset(o.encode() for o in allowed)
        self.enabled = bool(self._origins)

    def headers(self, origin: bytes | None) -> Headers | None:
        """The headers to add to an answer for a request from ``origin`` (None: none)."""
        if origin is None or not self.enabled:
            return None
        if self._any or origin in self._origins:
            return [
                (b"access-control-allow-origin", origin),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"retry-after, x-request-id"),
            ]
        return None

    async def preflight(self, send: Send, extra: Headers | None) -> None:
        """Answer ``OPTIONS`` (``extra``: what :meth:`headers` gave for its origin)."""
        if extra is None:
            if not self.enabled:
                raise GatewayError(
                    405, "method_not_allowed", "CORS is not enabled (gateway.cors_origins)"
                )
            raise GatewayError(403, "cors_forbidden", "origin not allowed by gateway.cors_origins")
        headers = [
            *extra,
            (b"access-control-allow-methods", _CORS_METHODS),
            (b"access-control-allow-headers", self._allow_headers),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class AdminGate:
    """Who may use the admin routes (and a non-public ``/metrics``): any request over the
    Unix socket (the file system is the authentication); over TCP, the admin token, sent as
    ``X-Admin-Token`` or ``Authorization: Bearer``."""

    __slots__ = ("_token",)

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def check(self, scope: Scope) -> None:
        """Return if allowed, else raise the GatewayError to answer (401 / 503)."""
        server = scope.get("server")
        if server is None or server[1] is None:
            return  # a Unix socket: the file system is the authentication
        if self._token is None:
            raise GatewayError(  # the tenant gateway's error types, beside our codes
                503,
                "admin_unavailable",
                "no admin token is configured (set daemon.admin_token or "
                "STUDIOCTL_ADMIN_TOKEN); admin routes are served on the Unix socket only",
                error_type="admin_unavailable",
            )
        presented: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-admin-token":
                presented = value.strip()
                break
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        if presented is None or not hmac.compare_digest(presented, self._token):
            raise GatewayError(
                401,
                "unauthorized",
                "missing or wrong admin token (send it as the X-Admin-Token header)",
                error_type="unauthorized",
            )
