"""Admission: from a request's bytes to a ``RequestContext`` that may be sent upstream.

In this order, cheap checks first, nothing costly before the tenant's concurrency and RPM
admitted the request (the refusals are raised as ``GatewayError``)::

    body size (read in chunks, never more than max_body_bytes + 1)  → 413 body_too_large
    key → tenant                                                     → 401 / 403
    JSON parse (once; nesting ≤ 254 levels, see body.py)             → 400 invalid_json
    LimitsBackend.acquire: tenant concurrency, RPM, then the gateway's
      concurrency (a slot and 1 RPM token)                           → 429 + Retry-After
      (the gateway's: with queue_when_busy, parked until a slot frees: :meth:`park`)
      and TPM in the same step when :meth:`AdmissionControl.size` can
      tell the request's size from its body alone (the usual case:
      one Redis round trip; the checks below that decide the size
      then pass, and TPM is not reserved again)                      → 429 limit_tpm
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
    Grant.reserve_tokens: TPM                                        → 429 + Retry-After
    (limits.backend redis and Redis unreachable: either step         → 503 limits_unavailable)

Requests without a key are served as the anonymous tenant only when
:func:`anonymous_allowed` says so (the one place that decides it).

Per route (``routes.py``): the output fields checked are the route's (none for most); the
prompt is counted by the engine's tokenizer only on the routes whose prompts ``/tokenize``
takes (chat, completions, embeddings) and only those are held to ``max_context_tokens``
(the others are the engine's to bound); the rest reserve TPM with a cheap estimate of
their prompt fields (characters / 4) plus their output cap, reconciled with the engine's
usage at the end. ``/tokenize`` and ``/detokenize`` without a ``model`` go to the only
model running (vLLM's own default), else 400. A multipart upload is admitted the same way
once :class:`~studioctl.gateway.multipart.FormUpload` found its ``model`` field.
"""

from __future__ import annotations

import math
from typing import Any

from studioctl.errors import GatewayBusy, GatewayError
from studioctl.gateway.asgi import Receive
from studioctl.gateway.auth import Authenticator
from studioctl.gateway.bodies import BodyCapture
from studioctl.gateway.body import check_n, model_error, parse_body, peek_model, quote
from studioctl.gateway.context import RequestContext
from studioctl.gateway.limiting import LimitsBackend
from studioctl.gateway.limits import Limiter
from studioctl.gateway.multipart import ClientGone, too_large
from studioctl.gateway.queue import ModelQueues, Want
from studioctl.gateway.routes import OPENAI, ROUTES, Route
from studioctl.gateway.routing import READY, RouteTable, Upstream
from studioctl.gateway.sse import json_dumps, request_usage
from studioctl.gateway.tokenize import PromptCounter, check_prompt_items, estimate, upper_bound
from studioctl.netaddr import is_loopback
from studioctl.settings import GatewaySettings
from studioctl.tenants import ANONYMOUS_TENANT_ID, TenantContext, TenantLimits

__all__ = ["AdmissionControl", "ClientGone", "anonymous_allowed"]

#: What the body alone tells of a request: (prompt tokens, max output tokens, body changed).
Sized = tuple[int, int, bool]


def _tokens(sized: Sized | None) -> int | None:
    """The TPM tokens reserved with the slot (None: reserved later, after routing)."""
    return None if sized is None else sized[0] + sized[1]


# Characters per token of the TPM estimate on routes the engine's tokenizer does not count.
_CHARS_PER_TOKEN = 4


def anonymous_allowed(settings: GatewaySettings) -> bool:
    """Whether requests without a key may be served (as the anonymous tenant): only with
    ``gateway.allow_anonymous`` on a gateway bound to a loopback address."""
    return settings.allow_anonymous and is_loopback(settings.host)


def _text_chars(value: Any, depth: int = 0) -> int:
    """Characters of text in a prompt field (strings, lists of them, message contents)."""
    if isinstance(value, str):
        return len(value)
    if depth > 4:
        return 0
    if isinstance(value, list):
        return sum(_text_chars(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return sum(_text_chars(value.get(k), depth + 1) for k in ("content", "text"))
    return 0


def estimate_prompt(route: Route, body: dict[str, Any]) -> int:
    """The TPM estimate of a prompt the engine's tokenizer does not count."""
    chars = sum(_text_chars(body.get(k)) for k in route.prompt_fields)
    return math.ceil(chars / _CHARS_PER_TOKEN)


class AdmissionControl:
    """The checks of the module docstring, over the gateway's auth, limits and routes."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        auth: Authenticator,
        limiter: LimitsBackend,
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
        # The memory backend called directly: its awaited methods never suspend, and each
        # await of a coroutine costs about what the check itself does (the hot path).
        self._enter_now = limiter.acquire_now if isinstance(limiter, Limiter) else None
        self.routes = routes
        self.tokenizer = tokenizer
        self._max_body = settings.max_body_bytes
        self._clamp = settings.clamp_output
        self.anonymous_ok = anonymous_allowed(settings)

    async def enter(
        self,
        ctx: RequestContext,
        authorization: bytes | None,
        raw: bytes,
        api_key: bytes | None = None,
    ) -> None:
        """Key, JSON, then a slot and an RPM token (after :meth:`read_body`), and the TPM
        reservation with them when the body alone tells the request's size (:meth:`size`):
        sets ``ctx.tenant``, ``.body``, ``.model`` (if valid), ``.sized`` and ``.admission``
        (to finish on every path from now on). ``api_key``: the key header's value."""
        ctx.tenant = tenant = self.authenticate(authorization, api_key)
        ctx.body = body = parse_body(raw)
        ctx.model = model = peek_model(body)
        route = ROUTES[ctx.endpoint]
        if model is None and "model" not in body and route.default_model:
            ctx.model = self.only_model()
        ctx.sized = self.size(route, tenant.limits, body) if ctx.model else None
        tokens = _tokens(ctx.sized)
        now = self._enter_now  # concurrency, RPM (and TPM)
        ctx.admission = now(tenant, tokens) if now else await self.limiter.acquire(tenant, tokens)

    def size(self, route: Route, limits: TenantLimits, body: dict[str, Any]) -> Sized | None:
        """``(prompt, max output, body changed)`` when the body alone tells them: the output
        fields pass, and the prompt is either a route's estimate or under
        ``max_context_tokens`` by the cheap upper bound (what ``PromptCounter.measure``
        would return without asking the engine). None otherwise (a refusal is raised by
        :meth:`check` in its turn, and the engine's count comes after routing)."""
        try:
            max_output, dirty = self._cap_output(route, body, limits.max_output_tokens)
            if not route.count_prompt:
                return estimate_prompt(route, body), max_output, dirty
            check_prompt_items(body)
        except GatewayError:
            return None
        bound = upper_bound(body)
        if bound is None or bound > limits.max_context_tokens:
            return None
        return estimate(body), max_output, dirty

    def only_model(self) -> str | None:
        """The name of the only ready instance's model (None: none, or several)."""
        ready = [u for u in self.routes.upstreams() if u.state == READY]
        if len(ready) != 1:
            return None
        up = ready[0]
        return (up.engine_names or up.model_names or (None,))[0]

    async def park(self, ctx: RequestContext, busy: GatewayBusy, receive: Receive) -> None:
        """:meth:`enter` was refused ``busy`` (every global slot taken): with
        ``queue_when_busy`` wait for a slot (sets ``ctx.admission``), else raise ``busy``."""
        if not self.queues.when_busy:
            raise busy
        ctx.admission = await self.queues.park(ctx, busy, receive, _tokens(ctx.sized))

    def declared_length(self, length: bytes | None) -> int | None:
        """The Content-Length header's value (None: absent), or 400, or 413 above the limit."""
        if length is None:
            return None
        try:
            declared = int(length)
        except ValueError:
            raise GatewayError(400, "invalid_request", "invalid Content-Length") from None
        if declared > self._max_body:
            raise too_large(self._max_body)
        return declared

    async def read_body(self, receive: Receive, length: bytes | None) -> bytes:
        limit = self._max_body
        if length is not None:
            self.declared_length(length)
        message = await receive()
        chunk: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if message["type"] == "http.disconnect":
                raise ClientGone
            if len(chunk) > limit:
                raise too_large(limit)
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
                raise too_large(limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def authenticate(
        self, authorization: bytes | None, api_key: bytes | None = None
    ) -> TenantContext:
        tenant = self.auth.authenticate(authorization, api_key)
        if tenant.tenant_id == ANONYMOUS_TENANT_ID and not self.anonymous_ok:
            raise GatewayError(
                401,
                "invalid_api_key",
                "missing API key: anonymous access is allowed only with "
                "gateway.allow_anonymous on a loopback gateway.host",
            )
        return tenant

    def _allow(self, tenant: TenantContext, model: str) -> None:
        limits = tenant.limits
        if limits.allowed_models is not None and model not in limits.allowed_models:
            raise GatewayError(
                403,
                "model_not_allowed",
                f"tenant {tenant.name!r} may not use model {model!r}",
                param="model",
            )

    async def route_to(self, ctx: RequestContext, receive: Receive) -> Upstream:
        """Model allowed, then the instance serving it (waiting for it when it is coming);
        what :meth:`check` does first, inlined there (the hot path)."""
        tenant = ctx.tenant
        model = ctx.model
        assert tenant is not None and model is not None
        self._allow(tenant, model)
        try:
            upstream = self.routes.resolve(model)
        except GatewayError as exc:
            upstream = await self.queues.wait_for_model(ctx, model, exc, receive, self.want)
        else:
            if self.queues.in_order and self.queues.waiting:
                upstream = await self.queues.wait_turn(ctx, model, upstream, receive, self.want)
        ctx.known = True
        return upstream

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
        if limits.allowed_models is not None:
            self._allow(tenant, model)
        try:
            upstream = self.routes.resolve(model)
        except GatewayError as exc:  # not ready: wait if it is coming (off the fast path)
            upstream = await self.queues.wait_for_model(ctx, model, exc, receive, self.want)
        else:  # scheduler.policy fifo: no request overtakes an older one for another model
            if self.queues.in_order and self.queues.waiting:
                upstream = await self.queues.wait_turn(ctx, model, upstream, receive, self.want)
        ctx.known = True
        dirty = False
        if upstream.engine_names and model not in upstream.engine_names and "model" in body:
            body["model"] = upstream.engine_names[0]  # an alias the engine does not know
            dirty = True
        route = ROUTES[ctx.endpoint]
        stream = body.get("stream", False)
        if stream is not True and stream is not False and stream is not None:
            raise GatewayError(
                400, "invalid_request", "'stream' must be true or false", param="stream"
            )
        stream = ctx.stream = stream is True and route.streams
        sized = ctx.sized  # known at admission: TPM reserved with the slot
        if sized is None:
            max_output, capped = self._cap_output(route, body, limits.max_output_tokens)
        else:
            max_output, capped = sized[1], sized[2]
        dirty = dirty or capped
        if not route.count_prompt:  # no /tokenize for it: an estimate, the engine bounds it
            if stream and route.usage == OPENAI:
                ctx.client_usage = request_usage(body)
                dirty = dirty or not ctx.client_usage
            if sized is None:
                prompt = estimate_prompt(route, body)
                await ctx.admission.reserve_tokens(
                    prompt_tokens=prompt, max_output_tokens=max_output
                )
            else:
                prompt = sized[0]
            ctx.prompt = prompt
            ctx.exact = True  # nothing to count again after a disconnect
            return upstream, route.upstream_path, json_dumps(body) if dirty else raw
        if stream:
            ctx.client_usage = request_usage(body)
            dirty = dirty or not ctx.client_usage
        if sized is None:
            check_prompt_items(body)
            # The engine's tokenizer runs only now: after concurrency and RPM, under the slot.
            prompt, exact = await self.tokenizer.measure(upstream, body, limits.max_context_tokens)
            if prompt > limits.max_context_tokens:
                raise GatewayError(
                    400,
                    "context_too_long",
                    f"the prompt has {'' if exact else 'at least '}{prompt} tokens; tenant "
                    f"{tenant.name!r} allows at most {limits.max_context_tokens}",
                    param="messages" if route.name == "chat" else "prompt",
                )
            await ctx.admission.reserve_tokens(prompt_tokens=prompt, max_output_tokens=max_output)
        else:
            prompt, exact = sized[0], False  # the estimate: the upper bound fits
        ctx.prompt = prompt
        ctx.exact = exact
        payload = json_dumps(body) if dirty else raw
        if limits.log_bodies or upstream.recipe_id in self.queues.rules.log_bodies:
            ctx.bodies = BodyCapture(payload)  # the request log stores them (debugging)
        return upstream, route.upstream_path, payload

    def _cap_output(self, route: Route, body: dict[str, Any], cap: int) -> tuple[int, bool]:
        """Check the output-length fields against ``cap``; returns (tokens to reserve, dirty).

        A request naming none gets the route's last field (``max_tokens``;
        ``max_output_tokens`` for responses) set to ``cap`` (the engine would otherwise use
        all the context left); with ``clamp_output`` a larger value is lowered to the cap.
        ``n`` (1…MAX_N) multiplies the reservation: every choice may produce max_tokens.
        """
        fields = route.output_fields
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
            body[fields[-1]] = asked = cap
            dirty = True
        return asked * n, dirty
