"""The gateway's HTTP front: a raw ASGI app (no framework on the hot path).

Every proxied engine route (``routes.py``: ``POST /v1/chat/completions`` and the rest) gets
a ``RequestContext`` and goes through admission (``admission.py``: body, key, JSON,
concurrency and RPM, then the model, route, output and prompt checks and TPM), the relay
(``relay.py``) and accounting (``accounting.py``). While the gateway drains
(:meth:`GatewayApp.drain`), new ones are answered 503 ``shutting_down``.

Every refusal after the key is known spends the RPM token it took (an invented model name
costs a request like any other) and writes a usage row. From ``Limiter.enter`` on, one
``try/finally`` covers everything: whatever fails, the client gets a JSON error (500
``internal_error`` for the unforeseen), the row is written, the slot, the TPM reservation
and the route's in-flight count given back.

``GatewayApp.drain(timeout_s)`` (the daemon calls it before stopping the server): new
requests get 503 ``shutting_down``; those in flight may finish for ``timeout_s``; the rest are
ended by the gateway (a stream with an error event and ``[DONE]``, a request still waiting
for its head with a 503), each with its row and its slot back.

A request for a model that is loading (or that the orchestrator's ``want`` hook says is
coming) waits in the model's queue, and with ``queue_when_busy`` one refused by the global
``max_concurrent`` waits for a slot (``queue.py``); ``drain`` ends every waiter at once.

A multipart upload (``/v1/audio/*``) is authenticated, then read until its ``model`` field
(``multipart.py``), admitted like the others and streamed to the engine as it arrives
(``uploads.py``); while it waits for a slot or a loading model its client's
disconnect is not watched (the body must stay unread until it is sent on).

Other routes: ``/v1/mailbox*`` (``mailbox_routes.py``); ``GET /v1/models``; ``GET
/v1/models/{id}`` (one card, 404 ``model_not_found`` for a name not listed); ``GET /v1/queues`` and
``/v1/queues/{model}`` (who waits, never a prompt; the admin token on TCP); ``/livez``,
``/healthz``, ``/version``; ``GET /metrics`` (needs the admin token on TCP unless
``gateway.metrics_public``; the route table's lines, then ``extra_metrics``); ``/admin/*``
(admin token on TCP, forwarded to ``admin_app`` without the ``/admin`` prefix). Requests
arriving over a Unix socket (ASGI ``server`` without a port) need no admin token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from studioctl.errors import GatewayBusy, GatewayError
from studioctl.gateway.accounting import Accounting, internal_error, log_unexpected
from studioctl.gateway.admission import AdmissionControl, ClientGone
from studioctl.gateway.asgi import (
    CT_TEXT,
    AdminGate,
    ASGIApp,
    Cors,
    Receive,
    Scope,
    Send,
    content_length,
    lifespan,
    method_not_allowed,
    send_error,
    send_json,
    with_header,
)
from studioctl.gateway.body import clip
from studioctl.gateway.cards import ModelCards
from studioctl.gateway.context import Headers, RequestContext, request_id, tagged
from studioctl.gateway.core import GatewayCore
from studioctl.gateway.mailbox import MAILBOX_HEADERS, MailboxKeeper, webhook_headers
from studioctl.gateway.mailbox_routes import MAILBOX_PATH, MailboxRoutes
from studioctl.gateway.queue import ModelQueues, Want
from studioctl.gateway.relay import Relay, shutting_down
from studioctl.gateway.routes import MODEL_PATH, MULTIPART, POST_ROUTES, Route
from studioctl.gateway.sse import json_dumps
from studioctl.gateway.uploads import FormProxy, upload_headers
from studioctl.settings import GatewaySettings
from studioctl.webhooks.service import Mailbox

__all__ = ["GatewayApp"]

_log = logging.getLogger("studioctl.gateway")

_GET_ROUTES = ("/v1/models", "/v1/queues", "/livez", "/healthz", "/version", "/metrics")
_QUEUES = "/v1/queues"
_QUEUE_OF = "/v1/queues/"
# Retry-After of an unhealthy /healthz (the store or an instance: seconds, not minutes).
_HEALTH_RETRY_AFTER = (b"retry-after", b"5")
# How long drain() waits for the requests it ended to send their last bytes.
_DRAIN_END_S = 5.0


class GatewayApp:
    """The OpenAI-compatible gateway as an ASGI app (run it under uvicorn).

    ``extra_metrics``: more Prometheus lines for ``GET /metrics`` (the daemon's telemetry),
    after the gateway's own and the route table's; a failure there leaves them out.
    """

    def __init__(
        self,
        core: GatewayCore,
        *,
        settings: GatewaySettings,
        admin_app: ASGIApp | None,
        admin_token: str | None,
        health: Callable[[], Awaitable[dict[str, Any]]],
        version: dict[str, Any],
        extra_metrics: Callable[[], str] | None = None,
        queues: ModelQueues | None = None,
        want: Want | None = None,
        mailbox: Mailbox | None = None,
    ) -> None:
        """``mailbox``: kept results and webhooks (issue 15); None: no mailbox mode."""
        self.core = core
        self.settings = settings
        self.admin_app = admin_app
        self._admin = AdminGate(admin_token)
        self._health = health
        self._version_body = json_dumps(version)
        self._extra_metrics = extra_metrics
        self._cors = Cors(settings.cors_origins, settings.api_key_header)
        if queues is None:  # the defaults: depth 64, 300 s, no parking
            queues = ModelQueues(routes=core.routes, limiter=core.limiter, metrics=core.metrics)
        self.queues = queues
        self.accounting = Accounting(
            routes=core.routes,
            metrics=core.metrics,
            usage=core.usage,
            tokenizer=core.tokenizer,
            queues=queues,
        )
        self.admission = AdmissionControl(
            settings=settings,
            auth=core.auth,
            limiter=core.limiter,
            routes=core.routes,
            tokenizer=core.tokenizer,
            queues=queues,
            want=want,
        )
        if core.auth.anonymous is not None and not self.admission.anonymous_ok:
            _log.warning(
                "gateway: anonymous access refused: it needs gateway.allow_anonymous and a "
                "loopback gateway.host (is %r)",
                settings.host,
            )
        self.cards = ModelCards(core.routes, self.admission.authenticate, core.auth.key_header)
        self.keeper = MailboxKeeper(mailbox) if mailbox is not None else None
        self.mailbox = None
        if mailbox is not None and self.keeper is not None:
            self.mailbox = MailboxRoutes(mailbox, self.keeper, self.cards.tenant)
        self.relay = Relay(
            pool=core.pool,
            accounting=self.accounting,
            metrics=core.metrics,
            read_timeout_s=settings.upstream_timeout_s,
            keeper=self.keeper,
        )
        self.uploads = FormProxy(
            settings=settings,
            admission=self.admission,
            accounting=self.accounting,
            relay=self.relay,
            routes=core.routes,
            release=self._release,
        )
        self._calls: set[RequestContext] = set()  # proxied requests in flight (for drain)
        self._draining = False
        self._idle: asyncio.Event | None = None  # set when the last call ends, once draining

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Ready to serve (again): no drain in progress."""
        self.accounting.start()
        self.queues.reopen()
        self._draining = False
        self._idle = None

    async def shutdown(self) -> None:
        """Finish background work (usage of disconnected streams), close the connections."""
        await self.accounting.close()
        await self.core.limiter.close()
        self.core.pool.close()
        self.core.tokenizer.close()

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
        self.accounting.stop_deferring()
        self.queues.close(shutting_down())  # nothing queued waits for a gateway that stops
        calls = self._calls
        if calls and timeout_s > 0:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        for ctx in list(calls):
            if not ctx.finished:  # else its last message is being sent: let it be
                ctx.drained = True
                ctx.task.cancel()
        if calls:
            await asyncio.wait({ctx.task for ctx in calls}, timeout=_DRAIN_END_S)

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            route = POST_ROUTES.get(path)
            if route is not None and method == "POST":
                if route.kind != MULTIPART:
                    await self._completion(route.index, scope, receive, send)
                else:
                    await self._upload(route, scope, receive, send)
            else:
                await self._other(path, method, scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send, self.startup, self.shutdown)

    # -- the proxied endpoints --------------------------------------------------------------

    async def _completion(self, endpoint: int, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        ts = time.time()
        authorization: bytes | None = None
        length: bytes | None = None
        origin: bytes | None = None
        api_key: bytes | None = None
        key_header = self.core.auth.key_header  # X-API-Key: found in this same pass
        sent_id: bytes | None = None
        mail: Headers | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"origin":
                origin = value
            elif name == key_header:
                api_key = value
            elif name == b"x-request-id":
                sent_id = value
            elif name in MAILBOX_HEADERS:
                mail = webhook_headers(name, value, mail)
        extra = self._cors.headers(origin) if origin is not None else None
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, endpoint, t0, ts, extra, sent_id)
        ctx.webhook_headers = mail
        if self._draining:
            await self.accounting.refuse(send, ctx, shutting_down())
            return
        calls = self._calls
        calls.add(ctx)
        try:
            await self._proxy(ctx, authorization, length, receive, send, api_key)
        finally:
            calls.discard(ctx)
            if not calls and self._idle is not None:
                self._idle.set()

    async def _proxy(
        self,
        ctx: RequestContext,
        authorization: bytes | None,
        length: bytes | None,
        receive: Receive,
        send: Send,
        api_key: bytes | None = None,
    ) -> None:
        accounting = self.accounting
        admission = self.admission
        # Before admission: body size, key, JSON. Nothing is held yet.
        try:
            raw = await admission.read_body(receive, length)
            try:
                await admission.enter(ctx, authorization, raw, api_key)
            except GatewayBusy as busy:  # every global slot taken: parked, or refused
                await admission.park(ctx, busy, receive)
        except GatewayError as exc:
            await accounting.refuse(send, ctx, exc)
            return
        except ClientGone:
            return
        except asyncio.CancelledError:
            if ctx.gone:  # left while parked: nothing was taken, nothing sent upstream
                ctx.task.uncancel()
                accounting.finish(ctx, 499, "client_disconnected", 0, 0, None, disconnected=True)
                return
            if not ctx.drained:
                raise
            ctx.task.uncancel()
            await accounting.refuse(send, ctx, shutting_down())
            return
        except Exception as exc:  # nothing is held yet: answer and count it
            log_unexpected(exc, "reading a request")
            await accounting.refuse(send, ctx, internal_error())
            return
        # Admitted: from here on every path, whatever is raised, writes one usage row and
        # gives the slot (and any TPM reservation, and the route's count) back.
        try:
            if self.keeper is not None:  # mailbox mode, or 400/403 for what was asked
                self.keeper.plan(ctx)
            upstream, path, payload = await admission.check(ctx, raw, receive)
            self.core.routes.begin(upstream.instance_id)
            ctx.upstream = upstream
            if ctx.stream:
                await self.relay.stream(ctx, path, payload, send, receive)
            else:
                ctx.body = None  # only a stream's disconnect reads it again
                await self.relay.once(ctx, path, payload, send, receive)
        except GatewayError as exc:  # refused by a check after admission
            await accounting.refuse(send, ctx, exc)
        except asyncio.CancelledError:
            if ctx.gone and ctx.upstream is None:  # left while queued: nothing sent upstream
                ctx.task.uncancel()
                accounting.finish(
                    ctx, 499, "client_disconnected", ctx.prompt, 0, None, disconnected=True
                )
                return
            if not ctx.drained:
                raise  # not ours (the server is stopping): the finally below accounts
            ctx.task.uncancel()
            await accounting.fail(send, ctx, shutting_down())
        except Exception as exc:
            tenant = ctx.tenant
            log_unexpected(exc, f"serving tenant {tenant.name if tenant else None!r}")
            await accounting.fail(send, ctx, internal_error())
        finally:
            self._release(ctx)

    async def _upload(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        ts = time.time()
        authorization, api_key, length, ctype, origin, sent_id = upload_headers(
            scope["headers"], self.core.auth.key_header
        )
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, route.index, t0, ts, self._cors.headers(origin), sent_id)
        if self._draining:
            await self.accounting.refuse(send, ctx, shutting_down())
            return
        self._calls.add(ctx)
        try:
            await self.uploads.serve(ctx, (authorization, api_key), length, ctype, receive, send)
        finally:
            self._calls.discard(ctx)
            if not self._calls and self._idle is not None:
                self._idle.set()

    def _release(self, ctx: RequestContext) -> None:
        """Whatever the request took, given back (the route's count, the slot, TPM)."""
        try:
            if ctx.upstream is not None:
                self.core.routes.end(ctx.upstream.instance_id)
            if not ctx.accounted:  # only a cancellation that was not ours gets here
                self.accounting.finish(
                    ctx, 200 if ctx.started else 503, "cancelled", ctx.prompt, 0, None,
                    disconnected=False,
                )  # fmt: skip
        finally:
            admission = ctx.admission
            if admission is not None:
                admission.finish(actual_tokens=ctx.prompt)  # a no-op when accounted

    # -- everything else --------------------------------------------------------------------

    async def _other(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        origin = sent_id = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"x-request-id":
                sent_id = value
        # Every answer names its request, as the proxied ones do (gateway.context).
        rid = request_id(sent_id)
        tag = (b"x-request-id", rid)
        cors = self._cors.headers(origin) if self._cors.enabled else None
        extra: Headers = [tag, *cors] if cors else [tag]
        try:
            if path.startswith("/admin/") or path == "/admin":
                await self._forward_admin(path, scope, receive, with_header(send, tag))
            elif method == "OPTIONS":
                await self._cors.preflight(send, [*cors, tag] if cors else None)
            elif self.mailbox is not None and path.startswith(MAILBOX_PATH):  # and "/..."
                await self.mailbox.serve(path, method, scope, receive, send, extra)
            elif path in POST_ROUTES:
                raise method_not_allowed(method, path, "POST")
            elif method not in ("GET", "HEAD"):
                if path in _GET_ROUTES:
                    raise method_not_allowed(method, path, "GET")
                raise GatewayError(404, "not_found", f"no route {method} {path}")
            else:
                await self._get(path, method, scope, send, extra)
        except GatewayError as exc:
            await send_error(send, tagged(exc, rid.decode("ascii")), extra)

    async def _get(
        self, path: str, method: str, scope: Scope, send: Send, extra: Headers | None
    ) -> None:
        if path == "/v1/models":
            await self.cards.models(scope, send, extra)
        elif path.startswith(MODEL_PATH):
            await self.cards.model(path[len(MODEL_PATH) :], scope, send, extra)
        elif path == _QUEUES or path.startswith(_QUEUE_OF):
            self._admin.check(scope)
            await send_json(send, 200, json_dumps(self._queues(path)), extra)
        elif path == "/livez":
            await send_json(send, 200, b'{"status":"ok"}', extra)
        elif path == "/healthz":
            try:
                report = await self._health()
            except Exception as exc:
                report = {"status": "error", "error": repr(exc)}
            # 503 when the report says so: {"ok": false} or {"status": "<not ok>"}
            ok = bool(report.get("ok", True)) and report.get("status", "ok") == "ok"
            if not ok:  # every 503 says when to come back
                extra = [*(extra or ()), _HEALTH_RETRY_AFTER]
            await send_json(send, 200 if ok else 503, json_dumps(report), extra)
        elif path == "/version":
            await send_json(send, 200, self._version_body, extra)
        elif path == "/metrics":
            if not self.settings.metrics_public:
                self._admin.check(scope)
            text = self._metrics_text().encode()
            headers = [CT_TEXT, content_length(text), *(extra or ())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": text, "more_body": False})
        else:
            raise GatewayError(404, "not_found", f"no route {method} {path}")

    def _queues(self, path: str) -> dict[str, Any]:
        """``GET /v1/queues`` (every model) or ``/v1/queues/{model}`` (names may hold '/')."""
        if path == _QUEUES:
            return self.queues.listing()
        model = path[len(_QUEUE_OF) :]
        if not self.core.routes.knows(model) and model not in self.queues.counts():
            raise GatewayError(
                404, "model_not_found", f"the model {clip(model, 256)!r} does not exist"
            )
        return self.queues.listing(model)

    def _metrics_text(self) -> str:
        """The gateway's figures, the route table's lines, then ``extra_metrics``."""
        lines = self.core.routes.metrics_lines()
        if self._extra_metrics is not None:
            try:
                lines += self._extra_metrics()
            except Exception:  # a telemetry fault must not take the gateway's /metrics down
                _log.exception("extra /metrics lines failed")
        return self.core.metrics.render(lines)

    async def _forward_admin(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        self._admin.check(scope)
        if self.admin_app is None:
            raise GatewayError(404, "not_found", "no admin API is served here")
        sub = dict(scope)
        sub["path"] = path[len("/admin") :] or "/"
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path.startswith(b"/admin"):
            sub["raw_path"] = raw_path[len(b"/admin") :] or b"/"
        await self.admin_app(sub, receive, send)
