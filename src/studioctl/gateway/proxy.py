"""The gateway's HTTP front: a raw ASGI app (no framework on the hot path).

Every ``POST /v1/{chat/completions,completions,embeddings}`` goes through, in this order,
before anything is sent upstream (cheap checks first; nothing costly before the tenant's
concurrency and RPM admitted the request)::

    draining (GatewayApp.drain was called)                           → 503 shutting_down
    body size (read in chunks, never more than max_body_bytes + 1)  → 413 body_too_large
    key → tenant                                                     → 401 / 403
    JSON parse (once; nesting ≤ 254 levels, see body.py)             → 400 invalid_json
    Limiter.enter: concurrency, then RPM (a slot and 1 RPM token)    → 429 + Retry-After
    model name (≤ 256 characters)                                    → 400 invalid_request
    model allowed for the tenant                                     → 403 model_not_allowed
    route (RouteTable.resolve)                                       → 404 / 503
    stream, n (1…128), max output tokens (cap, or clamp when
      gateway.clamp_output)                                          → 400 / output_too_long
    prompt items (≤ 2,048 messages or prompts)                       → 400 invalid_request
    prompt tokens (PromptCounter; the engine's tokenizer if needed)  → 400 context_too_long
    Admission.reserve: TPM                                           → 429 + Retry-After
    upstream (a lean keep-alive HTTP/1.1 pool, see upstream.py)

Every refusal after the key is known spends the RPM token it took (an invented model name
costs a request like any other) and writes a usage row. From ``Limiter.enter`` on, one
``try/finally`` covers everything: whatever fails, the client gets a JSON error (500
``internal_error`` for the unforeseen), the row is written and the slot given back.

Then the answer is relayed: non-streamed bodies whole, streams event by event (see
``sse.py``). Upstream timeout → 504 ``upstream_timeout``; connection refused or lost → 502
``upstream_error``; engine error statuses are passed through with their body. A client that
disconnects makes the gateway close the upstream response at once (the engine aborts the
generation), release the slot and record the usage seen so far.

The shared aiohttp ``ClientSession`` (``startup``/``shutdown``) serves the side calls to the
engines (``/tokenize`` for PromptCounter); the proxied requests themselves use the pool at the
end of this module, which costs a quarter of aiohttp's CPU per request (measured there).

Every request ends with exactly one ``usage.submit(row)`` once the tenant is known, one
``metrics.request(...)`` (model label: the name if the route table knows it, else
``OTHER_MODEL``), and ``Admission.finish``/``RouteTable.end`` for what it took.

``GatewayApp.drain(timeout_s)`` (the daemon calls it before stopping the server): new
requests get 503 ``shutting_down``; those in flight may finish for ``timeout_s``; the rest are
ended by the gateway (a stream with an error event and ``[DONE]``, a request still waiting
for its head with a 503), each with its row and its slot back.

Other routes: ``GET /v1/models``; ``/livez``, ``/healthz``, ``/version``; ``GET /metrics``
(needs the admin token on TCP unless ``gateway.metrics_public``); ``/admin/*`` (admin token
on TCP, forwarded to ``admin_app`` without the ``/admin`` prefix). Requests arriving over a
Unix socket (ASGI ``server`` without a port) need no admin token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from studioctl.errors import GatewayError
from studioctl.gateway.auth import Authenticator
from studioctl.gateway.body import check_n, clip, model_error, parse_body, peek_model, quote
from studioctl.gateway.limits import Admission, Limiter
from studioctl.gateway.metrics import OTHER_MODEL, GatewayMetrics
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.gateway.sse import DONE_EVENTS, SSERelay, json_dumps, json_loads, request_usage
from studioctl.gateway.tokenize import PROMPT_FIELDS, PromptCounter, check_prompt_items
from studioctl.gateway.upstream import (
    UpstreamConn,
    UpstreamConnectError,
    UpstreamPool,
)
from studioctl.gateway.usage import UsageRecord, UsageSink
from studioctl.settings import GatewaySettings
from studioctl.tenants import ANONYMOUS_TENANT_ID, TenantContext

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ASGIApp", "GatewayApp"]

_log = logging.getLogger("studioctl.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CHAT, COMPLETIONS, EMBEDDINGS = 0, 1, 2
_POST_ROUTES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
}
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

_CT_JSON = (b"content-type", b"application/json")
_CT_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_CT_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_NO_CACHE = (b"cache-control", b"no-cache")
_UPSTREAM_HEADERS = {"Content-Type": "application/json"}
_CORS_METHODS = b"GET, POST, OPTIONS"
_CORS_HEADERS = b"authorization, content-type, x-admin-token, openai-organization"
_DONE_EVENT = b"data: [DONE]\n\n"
# aiohttp closes idle upstream connections before the engine would (uvicorn-based engines
# such as vLLM drop idle keep-alive connections after 5 s): no request ever goes out on a
# connection the engine is closing.
_UPSTREAM_KEEPALIVE_S = 4.0
_CONNECT_TIMEOUT_S = 10.0
# Retry-After of the 503 shutting_down answers (a restart under systemd takes a few seconds).
SHUTDOWN_RETRY_AFTER_S = 5.0
# How long drain() waits for the requests it ended to send their last bytes.
_DRAIN_END_S = 5.0
# Exact prompt counts for the rows of disconnected streams running at once; past it the
# estimate stands (those calls run after the slot is released: they must stay bounded).
_MAX_BACKGROUND_COUNTS = 256


class _ClientGone(Exception):
    """The client disconnected while its request body was being read."""


class _Call:
    """One proxied request: what it took and how far it got.

    The accounting (one usage row, one metrics record, the slot and TPM back) reads it on
    every path; the disconnect watcher and ``GatewayApp.drain`` set ``gone``/``drained``
    and cancel ``task``.
    """

    __slots__ = (
        "accounted",
        "admission",
        "drained",
        "extra",
        "finished",
        "gone",
        "known",
        "model",
        "prompt",
        "started",
        "stream",
        "t0",
        "task",
        "tenant",
        "ts",
        "upstream",
    )

    def __init__(
        self, task: asyncio.Task[Any], t0: float, ts: float, extra: list[tuple[bytes, bytes]] | None
    ) -> None:
        self.task = task
        self.t0 = t0
        self.ts = ts
        self.extra = extra
        self.tenant: TenantContext | None = None
        self.model: str | None = None  # a valid (bounded) model name, once seen
        self.known = False  # the route table knows the model: it may be a metrics label
        self.admission: Admission | None = None
        self.upstream: Upstream | None = None  # set once the request is sent upstream
        self.prompt = 0
        self.stream = False
        self.started = False  # the response head was sent
        self.finished = False  # the final response message is being sent: leave it be
        self.gone = False  # the client went away; ``task`` was cancelled for it
        self.drained = False  # GatewayApp.drain ended it; ``task`` was cancelled for it
        self.accounted = False  # the usage row and metrics are written


class GatewayApp:
    """The OpenAI-compatible gateway as an ASGI app (run it under uvicorn)."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        routes: RouteTable,
        auth: Authenticator,
        limiter: Limiter,
        usage: UsageSink,
        metrics: GatewayMetrics,
        tokenizer: PromptCounter,
        admin_app: ASGIApp | None,
        admin_token: str | None,
        health: Callable[[], Awaitable[dict[str, Any]]],
        version: dict[str, Any],
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.auth = auth
        self.limiter = limiter
        self.usage = usage
        self.metrics = metrics
        self.tokenizer = tokenizer
        self.admin_app = admin_app
        self._admin_token = admin_token.encode() if admin_token else None
        self._health = health
        self._version_body = json_dumps(version)
        self._max_body = settings.max_body_bytes
        # Requests without a key are served (as the anonymous tenant) only if allowed and the
        # gateway listens on a loopback address, whatever the Authenticator was given.
        self._anonymous_ok = settings.allow_anonymous and _is_loopback(settings.host)
        if auth.anonymous is not None and not self._anonymous_ok:
            _log.warning(
                "gateway: anonymous access refused: it needs gateway.allow_anonymous and a "
                "loopback gateway.host (is %r)",
                settings.host,
            )
        self._clamp = settings.clamp_output
        origins = tuple(settings.cors_origins)
        self._cors_any = "*" in origins
        self._cors = frozenset(o.encode() for o in origins)
        self._session: aiohttp.ClientSession | None = None
        self._pool: UpstreamPool | None = None
        self._read_timeout = settings.upstream_timeout_s
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self._calls: set[_Call] = set()  # proxied requests in flight (for drain)
        self._draining = False
        self._idle: asyncio.Event | None = None  # set when the last call ends, once draining

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Create the shared upstream session (one keep-alive pool for all requests)."""
        if self._session is not None:
            return
        import aiohttp

        # The shared aiohttp session serves the side calls (the engines' /tokenize); the
        # proxied requests go through the lean keep-alive pool below (see its comment).
        connector = aiohttp.TCPConnector(
            limit=max(self.settings.max_concurrent, 1),
            limit_per_host=0,
            keepalive_timeout=_UPSTREAM_KEEPALIVE_S,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self._pool = UpstreamPool(
            keepalive_s=_UPSTREAM_KEEPALIVE_S, connect_timeout_s=_CONNECT_TIMEOUT_S
        )
        self.tokenizer.bind(self._session)
        self._closing = False
        self._draining = False
        self._idle = None

    async def shutdown(self) -> None:
        """Finish background work (usage of disconnected streams), close the connections."""
        self._closing = True
        if self._background:
            await asyncio.wait(set(self._background), timeout=5.0)
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self, timeout_s: float) -> None:
        """Stop taking proxied requests, then end those in flight, each with its usage row.

        From now on every new proxied request is answered 503 ``shutting_down`` with a
        Retry-After. The requests in flight may finish for up to ``timeout_s`` seconds; then
        every one left is ended: a stream with an error event (code ``shutting_down``) and
        ``data: [DONE]``, any other with a 503 ``shutting_down`` if its head is not sent yet;
        each writes its usage row and gives its slot back. The daemon calls this before it
        stops the server, whose own grace period would cancel them unaccounted.
        """
        self._draining = True
        calls = self._calls
        if calls and timeout_s > 0:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        for call in list(calls):
            if not call.finished:  # else its last message is being sent: let it be
                call.drained = True
                call.task.cancel()
        if calls:
            await asyncio.wait({call.task for call in calls}, timeout=_DRAIN_END_S)

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            endpoint = _POST_ROUTES.get(path)
            if endpoint is not None and method == "POST":
                await self._completion(endpoint, scope, receive, send)
            else:
                await self._other(path, method, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the proxied endpoints --------------------------------------------------------------

    async def _completion(self, endpoint: int, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        ts = time.time()
        authorization: bytes | None = None
        length: bytes | None = None
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"origin":
                origin = value
        extra = self._cors_headers(origin) if origin is not None and self._cors else None
        task = asyncio.current_task()
        assert task is not None
        call = _Call(task, t0, ts, extra)
        if self._draining:
            await self._refuse(send, call, _shutting_down())
            return
        calls = self._calls
        calls.add(call)
        try:
            await self._proxy(endpoint, call, authorization, length, receive, send)
        finally:
            calls.discard(call)
            if not calls and self._idle is not None:
                self._idle.set()

    async def _proxy(
        self,
        endpoint: int,
        call: _Call,
        authorization: bytes | None,
        length: bytes | None,
        receive: Receive,
        send: Send,
    ) -> None:
        # Before admission: body size, key, JSON. Nothing is held yet.
        try:
            raw = await self._read_body(receive, length)
            call.tenant = tenant = self._authenticate(authorization)
            body = parse_body(raw)
            call.model = peek_model(body)
            admission = call.admission = self.limiter.enter(tenant)  # concurrency, RPM
        except GatewayError as exc:
            await self._refuse(send, call, exc)
            return
        except _ClientGone:
            return
        except asyncio.CancelledError:
            if not call.drained:
                raise
            call.task.uncancel()
            await self._refuse(send, call, _shutting_down())
            return
        except Exception as exc:  # nothing is held yet: answer and count it
            _log_unexpected(exc, "reading a request")
            await self._refuse(send, call, _internal_error())
            return
        # Admitted: from here on every path, whatever is raised, writes one usage row and
        # gives the slot (and any TPM reservation) back.
        try:
            await self._admitted(endpoint, call, tenant, admission, body, raw, receive, send)
        except GatewayError as exc:  # refused by a check after admission
            await self._refuse(send, call, exc)
        except asyncio.CancelledError:
            if not call.drained:
                raise  # not ours (the server is stopping): the finally below accounts
            call.task.uncancel()
            await self._fail(send, call, _shutting_down())
        except Exception as exc:
            _log_unexpected(exc, f"serving tenant {tenant.name!r}")
            await self._fail(send, call, _internal_error())
        finally:
            try:
                if call.upstream is not None:
                    self.routes.end(call.upstream.instance_id)
                if not call.accounted:  # only a cancellation that was not ours gets here
                    self._account(
                        call, 200 if call.started else 503, "cancelled", call.prompt, 0, None,
                        disconnected=False,
                    )  # fmt: skip
            finally:
                admission.finish(actual_tokens=call.prompt)  # a no-op when accounted

    async def _admitted(
        self,
        endpoint: int,
        call: _Call,
        tenant: TenantContext,
        admission: Admission,
        body: dict[str, Any],
        raw: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        """The checks after admission, then the relay. Raises GatewayError to refuse."""
        model = call.model
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
        upstream = self.routes.resolve(model)
        call.known = True
        dirty = False
        if upstream.engine_names and model not in upstream.engine_names:
            body["model"] = upstream.engine_names[0]  # an alias the engine does not know
            dirty = True
        stream = body.get("stream", False)
        if stream is not True and stream is not False and stream is not None:
            raise GatewayError(
                400, "invalid_request", "'stream' must be true or false", param="stream"
            )
        stream = call.stream = stream is True and endpoint != EMBEDDINGS
        max_output, capped = self._cap_output(endpoint, body, limits.max_output_tokens)
        dirty = dirty or capped
        check_prompt_items(body)
        client_usage = True
        if stream:
            client_usage = request_usage(body)
            dirty = dirty or not client_usage
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
        admission.reserve(prompt_tokens=prompt, max_output_tokens=max_output)  # TPM
        call.prompt = prompt
        payload = json_dumps(body) if dirty else raw
        path = _UPSTREAM_PATHS[endpoint]
        self.routes.begin(upstream.instance_id)
        call.upstream = upstream
        if stream:
            await self._relay_stream(send, receive, path, payload, call, exact, client_usage, body)
        else:
            await self._relay_once(send, receive, path, payload, call)

    async def _read_body(self, receive: Receive, length: bytes | None) -> bytes:
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
                raise _ClientGone
            if len(chunk) > limit:
                raise _too_large(limit)
            return chunk
        parts = [chunk]
        size = len(chunk)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _authenticate(self, authorization: bytes | None) -> TenantContext:
        tenant = self.auth.authenticate(authorization)
        if tenant.tenant_id == ANONYMOUS_TENANT_ID and not self._anonymous_ok:
            raise GatewayError(
                401,
                "invalid_api_key",
                "missing API key: anonymous access is allowed only with "
                "gateway.allow_anonymous on a loopback gateway.host",
            )
        return tenant

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

    def _watch(self, call: _Call, receive: Receive) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(_watch_disconnect(receive, call))

    async def _relay_once(
        self, send: Send, receive: Receive, path: bytes, payload: bytes, call: _Call
    ) -> None:
        pool = self._pool
        assert pool is not None, "GatewayApp.startup() was not called"
        upstream = call.upstream
        assert upstream is not None
        timeout = self._read_timeout
        watcher = self._watch(call, receive)
        conn: UpstreamConn | None = None
        try:
            try:
                t_up = time.perf_counter()
                conn = await pool.request(upstream, path, payload, timeout)
                self.metrics.upstream_latency(time.perf_counter() - t_up)
                data = await conn.read_all(timeout)
                pool.release(conn)
            except asyncio.CancelledError:
                if not call.gone:
                    raise  # drained or not ours: _proxy answers and accounts
                call.task.uncancel()
                if conn is not None:
                    conn.close()  # the engine sees the connection drop and aborts
                self._account(
                    call, 499, "client_disconnected", call.prompt, 0, None, disconnected=True
                )
                return
            except Exception as exc:
                if conn is not None:
                    conn.close()
                await self._fail(send, call, self._upstream_error(exc, upstream))
                return
            finally:
                if conn is not None and not conn.complete:
                    conn.close()  # whatever interrupted the read: never reuse it
            status = conn.status
            error_code: str | None = None
            prompt = call.prompt
            completion = 0
            if status == 200:
                prompt, completion = _usage_of(data, prompt)
            else:
                error_code = f"upstream_{status}"
            headers = [(b"content-type", conn.content_type), _length(data)]
            if call.extra:
                headers.extend(call.extra)
            call.finished = True
            call.started = True
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})
            self._account(call, status, error_code, prompt, completion, None, disconnected=False)
        finally:
            watcher.cancel()

    async def _relay_stream(
        self,
        send: Send,
        receive: Receive,
        path: bytes,
        payload: bytes,
        call: _Call,
        exact: bool,
        client_usage: bool,
        body: dict[str, Any],
    ) -> None:
        pool = self._pool
        assert pool is not None, "GatewayApp.startup() was not called"
        upstream = call.upstream
        assert upstream is not None
        timeout = self._read_timeout
        watcher = self._watch(call, receive)
        relay = SSERelay(strip_usage=not client_usage)
        conn: UpstreamConn | None = None
        ttft: float | None = None
        try:
            try:
                t_up = time.perf_counter()
                conn = await pool.request(upstream, path, payload, timeout)
                self.metrics.upstream_latency(time.perf_counter() - t_up)
                status = conn.status
                if status != 200:
                    data = await conn.read_all(timeout)
                    ctype = conn.content_type
                    pool.release(conn)
                    conn = None
                    headers = [(b"content-type", ctype), _length(data)]
                    if call.extra:
                        headers.extend(call.extra)
                    call.finished = True
                    call.started = True
                    await send(
                        {"type": "http.response.start", "status": status, "headers": headers}
                    )
                    await send({"type": "http.response.body", "body": data, "more_body": False})
                    self._account(
                        call, status, f"upstream_{status}", call.prompt, 0, None,
                        disconnected=False,
                    )  # fmt: skip
                    return
                headers = [_CT_SSE, _NO_CACHE]
                if call.extra:
                    headers.extend(call.extra)
                call.started = True
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                while True:
                    data = await conn.read_some(timeout)
                    if not data:
                        break
                    out = relay.feed(data)
                    if out:
                        if ttft is None:
                            ttft = time.perf_counter() - call.t0
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                        if out.endswith(DONE_EVENTS):  # any SSE framing
                            # The client has the whole stream: its closing now is no disconnect.
                            call.finished = True
                pool.release(conn)
                conn = None
                tail = relay.flush()
            except asyncio.CancelledError:
                if conn is not None:
                    conn.close()  # the engine sees the connection drop and aborts the request
                    conn = None
                if call.drained:
                    call.task.uncancel()
                    await self._fail(send, call, _shutting_down(), relay, ttft, tail=relay.flush())
                    return
                if not call.gone:
                    raise
                call.task.uncancel()
                self._account_disconnected(
                    call, body, 200 if call.started else 499, exact, relay.chunks, ttft
                )
                return
            except Exception as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                err = self._upstream_error(exc, upstream)
                await self._fail(send, call, err, relay, ttft, tail=relay.flush())
                return
            call.finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            # No usage chunk (an engine without include_usage): the chunks seen are counted.
            self._account(
                call, 200, None, relay.prompt_tokens or call.prompt, relay.completion_tokens,
                ttft, disconnected=False,
            )  # fmt: skip
        finally:
            watcher.cancel()
            if conn is not None:
                conn.close()

    # -- accounting -----------------------------------------------------------------------

    def _account(
        self,
        call: _Call,
        status: int,
        error_code: str | None,
        prompt: int,
        completion: int,
        ttft: float | None,
        *,
        disconnected: bool,
        submit: bool = True,
    ) -> UsageRecord | None:
        """The one usage row and metrics record of a request; gives back what it took.

        Returns the row (None: no tenant known, metrics only; or accounted before); with
        ``submit=False`` the caller submits it later."""
        if call.accounted:
            return None
        call.accounted = True
        duration = time.perf_counter() - call.t0
        admission = call.admission
        if admission is not None:
            admission.finish(actual_tokens=prompt + completion)
        tenant = call.tenant
        model = call.model
        # Label a model by name only if the route table knows it: invented names would
        # otherwise each open a series.
        label = model if model is not None and (call.known or self.routes.knows(model)) else None
        self.metrics.request(
            label or OTHER_MODEL,
            tenant.name if tenant is not None else None,
            status,
            duration,
            ttft,
            prompt,
            completion,
            call.stream,
        )
        if tenant is None:
            return None  # refused before a tenant was known: metrics only
        upstream = call.upstream
        row = UsageRecord(
            call.ts,
            tenant.tenant_id,
            tenant.key_prefix,
            model,
            upstream.instance_id if upstream is not None else None,
            status,
            prompt,
            completion,
            ttft * 1000.0 if ttft is not None else None,
            duration * 1000.0,
            call.stream,
            disconnected,
            error_code,
        )
        if submit:
            self.usage.submit(row)
        return row

    def _account_disconnected(
        self,
        call: _Call,
        body: dict[str, Any],
        status: int,
        exact: bool,
        completion: int,
        ttft: float | None,
    ) -> None:
        """A stream the client left: release now; the usage row may wait for an exact count.

        If the prompt count was only the estimate (the cheap path of PromptCounter.measure),
        the engine's tokenizer is asked in the background so that the row records the real
        prompt tokens (when that is one call); the slot and the TPM reservation are released
        at once regardless.
        """
        upstream = call.upstream
        later = (
            not exact
            and not self._closing
            and not self._draining
            and upstream is not None
            and len(self._background) < _MAX_BACKGROUND_COUNTS
            and self.tokenizer.single_call(body)
        )
        row = self._account(
            call, status, "client_disconnected", call.prompt, completion, ttft,
            disconnected=True, submit=not later,
        )  # fmt: skip
        if later and row is not None and upstream is not None:
            # Only what the count reads is kept while it waits (not, say, a large metadata).
            prompt_only = {k: body[k] for k in PROMPT_FIELDS if k in body}
            task = asyncio.get_running_loop().create_task(
                self._exact_usage(row, upstream, prompt_only)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _exact_usage(
        self, row: UsageRecord, upstream: Upstream, body: dict[str, Any]
    ) -> None:
        try:
            row.prompt_tokens = await self.tokenizer.count(upstream, body)
        except Exception as exc:  # the estimate stands
            _log.warning("gateway: exact prompt count failed: %s", clip(repr(exc), 200))
        finally:
            self.usage.submit(row)

    def _upstream_error(self, exc: BaseException, upstream: Upstream) -> GatewayError:
        where = f"instance {upstream.instance_id} at {upstream.host}:{upstream.port}"
        if isinstance(exc, TimeoutError):
            return GatewayError(
                504,
                "upstream_timeout",
                f"{where} did not answer within {self.settings.upstream_timeout_s:g} s",
            )
        if isinstance(exc, UpstreamConnectError):
            return GatewayError(502, "upstream_error", f"cannot connect to {where}: {exc}")
        if isinstance(exc, OSError):  # UpstreamClosed, resets, an invalid answer
            return GatewayError(502, "upstream_error", f"{where} failed: {clip(str(exc), 200)}")
        _log_unexpected(exc, f"relaying to {where}")
        return _internal_error()

    async def _fail(
        self,
        send: Send,
        call: _Call,
        err: GatewayError,
        relay: SSERelay | None = None,
        ttft: float | None = None,
        *,
        tail: bytes = b"",
    ) -> None:
        """End an admitted request with ``err``: an error answer if its head is not sent,
        else (a stream) an error event and ``[DONE]``, the way vLLM ends a failed stream."""
        status = err.http_status
        try:
            if not call.started:
                call.finished = call.started = True
                await _send_error(send, err, call.extra)
            elif not call.finished:
                call.finished = True
                status = 200  # what the client was told
                end = b""  # a non-streamed body cannot be amended: it is just ended
                if call.stream:
                    end = tail + b"data: " + json_dumps({"error": err.to_dict()}) + b"\n\n"
                    end += _DONE_EVENT
                await send({"type": "http.response.body", "body": end, "more_body": False})
        finally:
            prompt, completion = call.prompt, 0
            if relay is not None:
                prompt, completion = relay.prompt_tokens or prompt, relay.completion_tokens
            self._account(call, status, err.code, prompt, completion, ttft, disconnected=False)

    async def _refuse(self, send: Send, call: _Call, exc: GatewayError) -> None:
        """Answer a request refused before anything was sent upstream (no tokens used)."""
        self.metrics.rejection(exc.code or "error", call.tenant.name if call.tenant else None)
        call.stream = False  # answered with an error, not a stream
        try:
            call.finished = call.started = True
            await _send_error(send, exc, call.extra)
        finally:
            self._account(
                call, exc.http_status, exc.code or "error", 0, 0, None, disconnected=False
            )

    # -- everything else --------------------------------------------------------------------

    async def _other(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        origin: bytes | None = None
        if self._cors:
            for name, value in scope["headers"]:
                if name == b"origin":
                    origin = value
        extra = self._cors_headers(origin) if origin is not None else None
        try:
            if path.startswith("/admin/") or path == "/admin":
                await self._admin(path, scope, receive, send)
                return
            if method == "OPTIONS":
                await self._preflight(scope, send, extra)
                return
            if path in _POST_ROUTES:
                raise _method_not_allowed(method, path, "POST")
            if method not in ("GET", "HEAD"):
                if path in ("/v1/models", "/livez", "/healthz", "/version", "/metrics"):
                    raise _method_not_allowed(method, path, "GET")
                raise GatewayError(404, "not_found", f"no route {method} {path}")
            if path == "/v1/models":
                await self._models(scope, send, extra)
            elif path == "/livez":
                await _send_json(send, 200, b'{"status":"ok"}', extra)
            elif path == "/healthz":
                try:
                    report = await self._health()
                except Exception as exc:
                    report = {"status": "error", "error": repr(exc)}
                # 503 when the report says so: {"ok": false} or {"status": "<not ok>"}
                ok = bool(report.get("ok", True)) and report.get("status", "ok") == "ok"
                await _send_json(send, 200 if ok else 503, json_dumps(report), extra)
            elif path == "/version":
                await _send_json(send, 200, self._version_body, extra)
            elif path == "/metrics":
                if not self.settings.metrics_public:
                    self._check_admin(scope)
                text = self.metrics.render(self.routes.metrics_lines()).encode()
                headers = [_CT_TEXT, _length(text)]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": text, "more_body": False})
            else:
                raise GatewayError(404, "not_found", f"no route {method} {path}")
        except GatewayError as exc:
            await _send_error(send, exc, extra)

    async def _models(
        self, scope: Scope, send: Send, extra: list[tuple[bytes, bytes]] | None
    ) -> None:
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
        tenant = self._authenticate(authorization)
        allowed = tenant.limits.allowed_models
        data = self.routes.models()
        if allowed is not None:
            data = [m for m in data if m["id"] in allowed]
        await _send_json(send, 200, json_dumps({"object": "list", "data": data}), extra)

    def _check_admin(self, scope: Scope) -> None:
        """Unix socket: allowed. TCP: the admin token, as X-Admin-Token or Bearer."""
        server = scope.get("server")
        if server is None or server[1] is None:
            return  # a Unix socket: the file system is the authentication
        if self._admin_token is None:
            raise GatewayError(
                503,
                "admin_unavailable",
                "no admin token is configured (set daemon.admin_token or "
                "STUDIOCTL_ADMIN_TOKEN); admin routes are served on the Unix socket only",
            )
        presented: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-admin-token":
                presented = value.strip()
                break
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        if presented is None or not hmac.compare_digest(presented, self._admin_token):
            raise GatewayError(
                401,
                "unauthorized",
                "missing or wrong admin token (send it as the X-Admin-Token header)",
            )

    async def _admin(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_admin(scope)
        if self.admin_app is None:
            raise GatewayError(404, "not_found", "no admin API is served here")
        sub = dict(scope)
        sub["path"] = path[len("/admin") :] or "/"
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path.startswith(b"/admin"):
            sub["raw_path"] = raw_path[len(b"/admin") :] or b"/"
        await self.admin_app(sub, receive, send)

    def _cors_headers(self, origin: bytes) -> list[tuple[bytes, bytes]] | None:
        if self._cors_any or origin in self._cors:
            return [
                (b"access-control-allow-origin", origin),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"retry-after"),
            ]
        return None

    async def _preflight(
        self, scope: Scope, send: Send, extra: list[tuple[bytes, bytes]] | None
    ) -> None:
        if extra is None:
            raise GatewayError(
                405 if not self._cors else 403,
                "method_not_allowed" if not self._cors else "cors_forbidden",
                "CORS is not enabled (gateway.cors_origins)"
                if not self._cors
                else "origin not allowed by gateway.cors_origins",
            )
        headers = [
            *extra,
            (b"access-control-allow-methods", _CORS_METHODS),
            (b"access-control-allow-headers", _CORS_HEADERS),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# -- helpers ------------------------------------------------------------------------------


async def _watch_disconnect(receive: Receive, call: _Call) -> None:
    """Wait for the client to go away; then cancel the request's task (unless it is done)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not call.finished:
                call.gone = True
                call.task.cancel()
            return


def _shutting_down() -> GatewayError:
    return GatewayError(
        503,
        "shutting_down",
        "the gateway is shutting down; retry shortly",
        retry_after=SHUTDOWN_RETRY_AFTER_S,
    )


def _internal_error() -> GatewayError:
    return GatewayError(500, "internal_error", "the gateway failed; see its log")


def _log_unexpected(exc: BaseException, doing: str) -> None:
    """Log a failure nobody foresaw: bounded text (its message may quote a client), and the
    frames (no values) to find it by."""
    _log.error(
        "gateway: unexpected error %s: %s\n%s",
        doing,
        clip(repr(exc), 500),
        "".join(traceback.format_tb(exc.__traceback__)),
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _usage_of(data: bytes, prompt: int) -> tuple[int, int]:
    """(prompt, completion) tokens from an engine's JSON answer (prompt: ours if absent)."""
    try:
        usage = json_loads(data).get("usage")
    except (ValueError, AttributeError):
        return prompt, 0
    if not isinstance(usage, dict):
        return prompt, 0
    p = usage.get("prompt_tokens")
    c = usage.get("completion_tokens")
    return (p if isinstance(p, int) else prompt), (c if isinstance(c, int) else 0)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        "body_too_large",
        f"the request body exceeds gateway.max_body_bytes ({limit} bytes)",
    )


def _method_not_allowed(method: str, path: str, allowed: str) -> GatewayError:
    return GatewayError(405, "method_not_allowed", f"{method} {path}: use {allowed}")


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None
) -> None:
    headers = [_CT_JSON, _length(body)]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(
    send: Send, exc: GatewayError, extra: list[tuple[bytes, bytes]] | None
) -> None:
    body = json_dumps({"error": exc.to_dict()})
    headers = [_CT_JSON, _length(body)]
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(max(0, math.ceil(exc.retry_after))).encode()))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
