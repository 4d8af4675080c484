"""Mailbox mode: a request whose result is kept when its client goes away (issue 15).

A request asks with ``X-Webhook-Mode: on_disconnect | always | never``, ``X-Webhook-URL``
(its own receiver), ``X-Webhook-Bearer`` (sent to the receiver as ``Authorization: Bearer``)
or ``X-Mailbox: keep`` (kept, no webhook); without them the settings decide
(``webhook.enabled`` with ``webhook.url``: ``on_complete`` → ``always``, else
``on_disconnect`` → ``on_disconnect``). :meth:`MailboxKeeper.plan`, once the tenant is known,
checks what was asked against the tenant's flags: a webhook asked by a tenant without
``webhooks`` → 403 ``webhooks_not_allowed``; an ``X-Webhook-URL`` without
``webhook_url_override`` → 403 ``webhook_url_override_forbidden`` (an open override is a
server-side request forgery hole); a malformed URL → 400; a URL naming a loopback or private
address outright without ``webhook.allow_private`` → 403 ``webhook_url_refused`` (a name is
resolved and checked again at every delivery). Every header value is bounded.

In mailbox mode the relay (``relay.py``) does not abort the engine request when the client
disconnects: it reads the answer to its end (sending to a gone client is a no-op), accounts
every token, and hands the answer to :meth:`MailboxKeeper.finish`, which keeps the record
(and queues its webhook) when the client left, or always in ``always`` mode. A stream is
assembled into the non-stream shape (``mailbox_assemble.py``); what is relayed is kept up to
``mailbox.max_response_bytes`` (beyond, the record's status is ``truncated``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from studioctl.errors import ConflictError, GatewayError
from studioctl.gateway.context import CHAT, COMPLETIONS, Headers, RequestContext
from studioctl.gateway.mailbox_assemble import (
    assemble_chat,
    assemble_completion,
    assemble_responses,
)
from studioctl.gateway.mailbox_kept import KeptRequest
from studioctl.gateway.routes import RESPONSES, ROUTES
from studioctl.gateway.sse import json_loads
from studioctl.settings.webhook import MAX_HEADER_VALUE
from studioctl.webhooks.service import WebhookRequest
from studioctl.webhooks.target import TargetRefused, check_url, literal_private

if TYPE_CHECKING:
    from studioctl.gateway.sse import ResponsesRelay, SSERelay
    from studioctl.webhooks.service import Mailbox

__all__ = ["MAILBOX_HEADERS", "KeptRequest", "MailboxKeeper", "header_text", "webhook_headers"]

_log = logging.getLogger("studioctl.gateway")

MAILBOX_HEADERS = frozenset(
    {b"x-webhook-url", b"x-webhook-mode", b"x-webhook-bearer", b"x-mailbox"}
)
_MODES = ("on_disconnect", "always", "never")


def header_text(value: bytes, name: str, limit: int = MAX_HEADER_VALUE) -> str:
    """A client's header value as text: bounded, printable ASCII, else 400 naming it."""
    if len(value) > limit or not all(32 <= b < 127 for b in value):
        raise GatewayError(
            400,
            "invalid_header",
            f"{name} must be at most {limit} printable ASCII characters",
            param=name,
        )
    return value.decode("ascii").strip()


class MailboxKeeper:
    """Plans a request's mailbox mode and keeps its result (see the module docstring)."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.settings = mailbox.webhook
        self.limit = mailbox.settings.max_response_bytes

    def _mode(self, asked: bytes | None, url: bytes | None) -> str:
        s = self.settings
        if asked is not None:
            mode = header_text(asked, "X-Webhook-Mode", 32).lower()
            if mode not in _MODES:
                raise GatewayError(
                    400,
                    "invalid_webhook_mode",
                    "X-Webhook-Mode must be on_disconnect, always or never",
                    param="X-Webhook-Mode",
                )
            return mode
        if url is not None or (s.enabled and s.url is not None):
            if s.on_complete:
                return "always"
            return "on_disconnect" if s.on_disconnect or url is not None else "never"
        return "never"

    def plan(self, ctx: RequestContext) -> None:
        """Set ``ctx.keep`` from the request's headers, the settings and the tenant's flags
        (or answer 400/403, see the module docstring)."""
        given = dict(ctx.webhook_headers or ())
        s = self.settings
        if not given and not (s.enabled and s.url is not None):
            return  # the usual request: nothing asked, nothing configured
        tenant = ctx.tenant
        assert tenant is not None
        url_raw = given.get(b"x-webhook-url")
        mode = self._mode(given.get(b"x-webhook-mode"), url_raw)
        asked = b"x-webhook-mode" in given or url_raw is not None
        webhook = None
        if mode != "never" and not tenant.limits.webhooks:
            if asked:
                raise GatewayError(
                    403,
                    "webhooks_not_allowed",
                    f"tenant {tenant.name!r} may not ask for webhooks",
                    hint="the admin allows them: studioctl tenant set NAME --webhooks",
                )
            mode = "never"  # the configured webhook is not this tenant's
        if mode != "never":
            webhook = self._webhook(ctx, url_raw, given.get(b"x-webhook-bearer"))
        keep = given.get(b"x-mailbox")
        if mode == "never" and (keep is None or header_text(keep, "X-Mailbox", 16) != "keep"):
            return
        ctx.keep = KeptRequest(mode if mode != "never" else "on_disconnect", webhook, self.limit)

    def _webhook(
        self, ctx: RequestContext, url_raw: bytes | None, bearer: bytes | None
    ) -> WebhookRequest | None:
        tenant = ctx.tenant
        assert tenant is not None
        if url_raw is None:
            url = self.settings.url
            if url is None:
                return None  # kept, with nowhere to deliver it: read it from the mailbox
        else:
            if not tenant.limits.webhook_url_override:
                raise GatewayError(
                    403,
                    "webhook_url_override_forbidden",
                    f"tenant {tenant.name!r} may not name its own webhook URL (X-Webhook-URL); "
                    "leave the header out to use the configured webhook.url",
                    param="X-Webhook-URL",
                    hint="the admin allows it: studioctl tenant set NAME --webhook-url-override",
                )
            url = self.check_url(header_text(url_raw, "X-Webhook-URL"))
        headers = {}
        if bearer is not None:
            headers["Authorization"] = "Bearer " + header_text(bearer, "X-Webhook-Bearer")
        return WebhookRequest(url, headers)

    def check_url(self, url: str) -> str:
        """A receiver URL a client gave: well formed, and not a private address outright
        unless ``webhook.allow_private`` (names are checked at each delivery)."""
        try:
            check_url(url)
        except TargetRefused as exc:
            raise GatewayError(400, "invalid_webhook_url", str(exc), param="url") from None
        if not self.settings.allow_private and literal_private(url):
            raise GatewayError(
                403,
                "webhook_url_refused",
                "the webhook URL names a loopback or private address, which receivers may "
                "use only with webhook.allow_private",
                param="url",
            )
        return url

    # -- the end of a kept request ---------------------------------------------------------

    async def finish_whole(self, ctx: RequestContext, status: int, data: bytes) -> None:
        """A whole answer (status, body) relayed: keep it if the client left (or always)."""
        kept = ctx.keep
        if kept is None or not (ctx.gone or kept.mode == "always"):
            return
        if len(data) > self.limit:
            return await self._keep(ctx, "truncated", None)
        try:
            response = json_loads(data)
        except ValueError:
            response = {"text": data[:4096].decode("utf-8", "replace")}
        await self._keep(ctx, "completed" if status == 200 else "failed", response)

    async def finish_stream(self, ctx: RequestContext, relay: SSERelay | ResponsesRelay) -> None:
        """A stream relayed to its end: assembled and kept if the client left (or always)."""
        kept = ctx.keep
        if kept is None or not (ctx.gone or kept.mode == "always"):
            return
        data = b"".join(kept.chunks)
        response: Any
        if ROUTES[ctx.endpoint].usage == RESPONSES:
            response = assemble_responses(data)
        elif ctx.endpoint == CHAT:
            response = assemble_chat(data, relay.usage)
        elif ctx.endpoint == COMPLETIONS:
            response = assemble_completion(data, relay.usage)
        else:
            response = None  # another route's stream: the mailbox keeps JSON shapes only
        if response is None:
            return
        await self._keep(ctx, "truncated" if kept.truncated else "completed", response)

    async def failed(self, ctx: RequestContext, err: GatewayError) -> None:
        """The request failed (an engine error, a timeout) after its client left."""
        kept = ctx.keep
        if kept is not None and (ctx.gone or kept.mode == "always"):
            await self._keep(ctx, "failed", {"error": err.to_dict()})

    async def _keep(self, ctx: RequestContext, status: str, response: Any) -> None:
        kept, tenant = ctx.keep, ctx.tenant
        if kept is None or tenant is None:
            return
        try:
            await self.mailbox.keep(
                request_id=ctx.request_id,
                tenant_id=tenant.tenant_id,
                model=ctx.model,
                created=ctx.ts,
                status=status,
                response=response,
                disconnected=ctx.gone,
                webhook=kept.webhook,
            )
        except ConflictError as exc:  # the client sent an id another tenant keeps a result under
            _log.warning("mailbox: tenant %s: %s", tenant.name, exc)
        except Exception:  # the answer is accounted already: a store fault loses the record
            _log.exception("mailbox: cannot keep request %s", ctx.request_id)


def webhook_headers(name: bytes, value: bytes, given: Headers | None) -> Headers:
    """``given`` with one more mailbox header (the app's header loop collects them)."""
    return [*given, (name, value)] if given else [(name, value)]
