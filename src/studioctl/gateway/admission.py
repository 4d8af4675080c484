"""Admission: from a request's bytes to a ``RequestContext`` that may be sent upstream.

In this order, cheap checks first, nothing costly before the tenant's concurrency and RPM
admitted the request (the refusals are raised as ``GatewayError``)::

    body size (read in chunks, never more than max_body_bytes + 1)  → 413 body_too_large
    key → tenant                                                     → 401 / 403
    JSON parse (once; nesting ≤ 254 levels, see body.py)             → 400 invalid_json
    Limiter.enter: tenant concurrency, RPM, then the gateway's
      concurrency (a slot and 1 RPM token)                           → 429 + Retry-After
      (the gateway's: with queue_when_busy, parked until a slot frees: :meth:`park`)
    ---- :meth:`AdmissionControl.read_body` and ``enter`` above, ``check`` below ----
    model name (≤ 256 characters)                                    → 400 invalid_request
    model allowed for the tenant                                     → 403 model_not_allowed
    route (RouteTable.resolve)                                       → 404 / 503
      (a loading model, or one ``want`` says is coming: waits in its
      queue, ModelQueues.wait_for_model, holding its slot)           → 503 queue_full…
    stream, n (1…128), max output tokens (cap, or clamp when
      gateway.clamp_output)                                          → 400 / output_too_long
    prompt items (≤ 2,048 messages or prompts)                       → 400 invalid_request
    prompt tokens (PromptCounter; the engine's tokenizer if needed)  → 400 context_too_long
    Admission.reserve: TPM                                           → 429 + Retry-After

Requests without a key are served as the anonymous tenant only when
:func:`anonymous_allowed` says so (the one place that decides it).
"""

from __future__ import annotations

from typing import Any

from studioctl.errors import GatewayBusy, GatewayError
from studioctl.gateway.asgi import Receive
from studioctl.gateway.auth import Authenticator
from studioctl.gateway.bodies import BodyCapture
from studioctl.gateway.body import check_n, model_error, parse_body, peek_model, quote
from studioctl.gateway.context import CHAT, COMPLETIONS, EMBEDDINGS, RequestContext
from studioctl.gateway.limits import Limiter
from studioctl.gateway.queue import ModelQueues, Want
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.gateway.sse import json_dumps, request_usage
from studioctl.gateway.tokenize import PromptCounter, check_prompt_items
from studioctl.netaddr import is_loopback
from studioctl.settings import GatewaySettings
from studioctl.tenants import ANONYMOUS_TENANT_ID, TenantContext

__all__ = ["AdmissionControl", "ClientGone", "anonymous_allowed"]

_UPSTREAM_PATHS = {
    CHAT: b"/v1/chat/completions",
    COMPLETIONS: b"/v1/completions",
    EMBEDDINGS: b"/v1/embeddings",
}
# Output-length fields by endpoint, checked against the tenant's max_output_tokens.
_OUTPUT_FIELDS: dict[int, tuple[str, ...]] = {
    CHAT: ("max_completion_tokens", "max_tokens"),
    COMPLETIONS: ("max_tokens",),
    EMBEDDINGS: (),
}


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


def anonymous_allowed(settings: GatewaySettings) -> bool:
    """Whether requests without a key may be served (as the anonymous tenant): only with
    ``gateway.allow_anonymous`` on a gateway bound to a loopback address."""
    return settings.allow_anonymous and is_loopback(settings.host)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        "body_too_large",
        f"the request body exceeds gateway.max_body_bytes ({limit} bytes)",
    )


class AdmissionControl:
    """The checks of the module docstring, over the gateway's auth, limits and routes."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        auth: Authenticator,
        limiter: Limiter,
        routes: RouteTable,
        tokenizer: PromptCounter,
        queues: ModelQueues,
        want: Want | None = None,
    ) -> None:
        """``want``: the orchestrator's hook (see ``queue.Want``); None: only requests for
        a model already loading wait."""
        self.auth = auth
        self.queues = queues
        self.want = want
        self.limiter = limiter
        self.routes = routes
        self.tokenizer = tokenizer
        self._max_body = settings.max_body_bytes
        self._clamp = settings.clamp_output
        self.anonymous_ok = anonymous_allowed(settings)

    def enter(self, ctx: RequestContext, authorization: bytes | None, raw: bytes) -> None:
        """Key, JSON, then a slot and an RPM token (after :meth:`read_body`): sets
        ``ctx.tenant``, ``.body``, ``.model`` (if valid) and ``.admission`` (to finish on
        every path from now on)."""
        ctx.tenant = tenant = self.authenticate(authorization)
        ctx.body = body = parse_body(raw)
        ctx.model = peek_model(body)
        ctx.admission = self.limiter.enter(tenant)  # concurrency, RPM

    async def park(self, ctx: RequestContext, busy: GatewayBusy, receive: Receive) -> None:
        """:meth:`enter` was refused ``busy`` (every global slot taken): with
        ``queue_when_busy`` wait for a slot (sets ``ctx.admission``), else raise ``busy``."""
        if not self.queues.when_busy:
            raise busy
        ctx.admission = await self.queues.park(ctx, busy, receive)

    async def read_body(self, receive: Receive, length: bytes | None) -> bytes:
        limit = self._max_body
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise GatewayError(400, "invalid_request", "invalid Content-Length") from None
            if declared > limit:
                raise _too_large(limit)
        message = await receive()
        chunk: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if message["type"] == "http.disconnect":
                raise ClientGone
            if len(chunk) > limit:
                raise _too_large(limit)
            return chunk
        parts = [chunk]
        size = len(chunk)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def authenticate(self, authorization: bytes | None) -> TenantContext:
        tenant = self.auth.authenticate(authorization)
        if tenant.tenant_id == ANONYMOUS_TENANT_ID and not self.anonymous_ok:
            raise GatewayError(
                401,
                "invalid_api_key",
                "missing API key: anonymous access is allowed only with "
                "gateway.allow_anonymous on a loopback gateway.host",
            )
        return tenant

    async def check(
        self, ctx: RequestContext, raw: bytes, receive: Receive
    ) -> tuple[Upstream, bytes, bytes]:
        """The checks after :meth:`enter`; sets ``ctx.stream``, ``.prompt``, ``.exact``.
        Returns the instance to send it to (the caller counts it there and sets
        ``ctx.upstream``), the upstream path and the payload."""
        tenant = ctx.tenant
        body = ctx.body
        model = ctx.model
        assert tenant is not None and body is not None and ctx.admission is not None
        if model is None:
            raise model_error(body)
        limits = tenant.limits
        if limits.allowed_models is not None and model not in limits.allowed_models:
            raise GatewayError(
                403,
                "model_not_allowed",
                f"tenant {tenant.name!r} may not use model {model!r}",
                param="model",
            )
        try:
            upstream = self.routes.resolve(model)
        except GatewayError as exc:  # not ready: wait if it is coming (off the fast path)
            upstream = await self.queues.wait_for_model(ctx, model, exc, receive, self.want)
        else:  # scheduler.policy fifo: no request overtakes an older one for another model
            if self.queues.in_order and self.queues.waiting:
                upstream = await self.queues.wait_turn(ctx, model, upstream, receive, self.want)
        ctx.known = True
        dirty = False
        if upstream.engine_names and model not in upstream.engine_names:
            body["model"] = upstream.engine_names[0]  # an alias the engine does not know
            dirty = True
        endpoint = ctx.endpoint
        stream = body.get("stream", False)
        if stream is not True and stream is not False and stream is not None:
            raise GatewayError(
                400, "invalid_request", "'stream' must be true or false", param="stream"
            )
        stream = ctx.stream = stream is True and endpoint != EMBEDDINGS
        max_output, capped = self._cap_output(endpoint, body, limits.max_output_tokens)
        dirty = dirty or capped
        check_prompt_items(body)
        if stream:
            ctx.client_usage = request_usage(body)
            dirty = dirty or not ctx.client_usage
        # The engine's tokenizer runs only now: after concurrency and RPM, under the slot.
        prompt, exact = await self.tokenizer.measure(upstream, body, limits.max_context_tokens)
        if prompt > limits.max_context_tokens:
            raise GatewayError(
                400,
                "context_too_long",
                f"the prompt has {'' if exact else 'at least '}{prompt} tokens; tenant "
                f"{tenant.name!r} allows at most {limits.max_context_tokens}",
                param="messages" if endpoint == CHAT else "prompt",
            )
        ctx.admission.reserve(prompt_tokens=prompt, max_output_tokens=max_output)  # TPM
        ctx.prompt = prompt
        ctx.exact = exact
        payload = json_dumps(body) if dirty else raw
        if limits.log_bodies or self.queues.rules.logs_bodies(upstream.recipe_id):
            ctx.bodies = BodyCapture(payload)  # the request log stores them (debugging)
        return upstream, _UPSTREAM_PATHS[endpoint], payload

    def _cap_output(self, endpoint: int, body: dict[str, Any], cap: int) -> tuple[int, bool]:
        """Check the output-length fields against ``cap``; returns (tokens to reserve, dirty).

        A request naming none gets ``max_tokens = cap`` (the engine would otherwise use all
        the context left); with ``clamp_output`` a larger value is lowered to the cap. ``n``
        (1…MAX_N) multiplies the reservation: every choice may produce max_tokens.
        """
        fields = _OUTPUT_FIELDS[endpoint]
        if not fields:
            return 0, False
        n = check_n(body)
        dirty = False
        asked = -1
        for key in fields:
            value = body.get(key)
            if value is None:
                continue
            if type(value) is not int or value < 1:
                raise GatewayError(
                    400,
                    "invalid_request",
                    f"{key!r} must be a positive integer, got {quote(value)}",
                    param=key,
                )
            if value > cap:
                if not self._clamp:
                    raise GatewayError(
                        400,
                        "output_too_long",
                        f"{key}={value} exceeds this tenant's max_output_tokens of {cap}",
                        param=key,
                    )
                body[key] = value = cap
                dirty = True
            asked = max(asked, value)
        if asked < 0:
            body["max_tokens"] = asked = cap
            dirty = True
        return asked * n, dirty
