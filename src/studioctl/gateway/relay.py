"""Sending an admitted request upstream and relaying the answer to the client.

Non-streamed answers are relayed whole, streams event by event (see ``sse.py``), through the
lean keep-alive pool of ``upstream.py``. Upstream timeout → 504 ``upstream_timeout``;
connection refused or lost → 502 ``upstream_error``; engine error statuses are passed
through with their body, except a 404 or 405 that is not an OpenAI error envelope (a route
the engine does not serve: its framework's ``{"detail": "Not Found"}``), which is answered
in the envelope with code ``route_not_served`` and the engine's status. Usage is read per
route (``routes.py``): ``usage.prompt_tokens``/``completion_tokens``, or the Responses API's
``input_tokens``/``output_tokens`` (streams: the terminal event, ``sse.py``). A multipart
upload (:meth:`Relay.upload`) is sent as it arrives; its answer is relayed as a stream if
the engine streams it (``text/event-stream``), else whole. While the answer is awaited a
watcher reads the client's side: a client that disconnects makes the gateway close the
upstream connection at once (the engine aborts the generation), and the request is accounted
as disconnected with the usage seen so far, unless the request is in mailbox mode
(``mailbox.py``): then it runs to its end, is accounted with every token, and its result is
kept. Every path ends in ``Accounting`` (the caller's
``finally`` covers cancellations that are not ours).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from studioctl.errors import GatewayError
from studioctl.gateway.accounting import Accounting, internal_error, log_unexpected
from studioctl.gateway.asgi import CT_SSE, NO_CACHE, Receive, Send, content_length
from studioctl.gateway.body import clip
from studioctl.gateway.context import RequestContext
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.multipart import ClientGone
from studioctl.gateway.routes import RESPONSES, ROUTES
from studioctl.gateway.routing import Upstream
from studioctl.gateway.sse import DONE_EVENTS, ResponsesRelay, SSERelay, answer_usage, json_loads
from studioctl.gateway.upstream import UpstreamConn, UpstreamConnectError, UpstreamPool

if TYPE_CHECKING:
    from studioctl.gateway.mailbox import MailboxKeeper

__all__ = ["SHUTDOWN_RETRY_AFTER_S", "Relay", "shutting_down"]

# Retry-After of an engine's own 429 or 503 relayed to the client, when the engine sent none
# (or one that is not a small number of seconds: an HTTP date, a hostile value).
ENGINE_RETRY_AFTER = (b"retry-after", b"1")
# Retry-After of the 503 shutting_down answers (a restart under systemd takes a few seconds).
SHUTDOWN_RETRY_AFTER_S = 5.0


def shutting_down() -> GatewayError:
    return GatewayError(
        503,
        "shutting_down",
        "the gateway is shutting down; retry shortly",
        retry_after=SHUTDOWN_RETRY_AFTER_S,
    )


async def _watch_disconnect(receive: Receive, ctx: RequestContext) -> None:
    """Wait for the client to go away; then cancel the request's task (unless it is done).
    In mailbox mode the request goes on to its end (its result is kept): only marked gone."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not ctx.finished:
                ctx.gone = True
                if ctx.keep is None:
                    ctx.task.cancel()
            return


def not_served(ctx: RequestContext, status: int, data: bytes) -> GatewayError | None:
    """The OpenAI-envelope answer for an engine's 404/405 that is not one already (a route
    it does not serve), else None (its answer is relayed as it is)."""
    if status != 404 and status != 405:
        return None
    detail = ""
    try:
        obj = json_loads(data)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        if isinstance(obj.get("error"), dict):
            return None  # already the envelope (an unknown model, say)
        detail = str(obj.get("detail") or obj.get("message") or "")
    upstream = ctx.upstream
    where = f"instance {upstream.instance_id}" if upstream is not None else "the engine"
    route = ROUTES[ctx.endpoint]
    return GatewayError(
        status,
        "route_not_served",
        f"{where} (model {ctx.model!r}) does not serve POST {route.path}: it answered "
        f"{status}{' ' + clip(detail, 100) if detail else ''}",
    )


def engine_retry_after(value: bytes | None) -> tuple[bytes, bytes]:
    """The Retry-After to relay with an engine's 429/503: its own when it is 1 to 86400
    seconds, else ``ENGINE_RETRY_AFTER``."""
    if value is not None and 0 < len(value) <= 5 and value.isdigit() and 0 < int(value) <= 86400:
        return (b"retry-after", value)
    return ENGINE_RETRY_AFTER


async def _send_whole(
    send: Send,
    ctx: RequestContext,
    status: int,
    content_type: bytes,
    data: bytes,
    retry_after: bytes | None = None,
) -> None:
    """Relay an engine's whole answer (its status, content type and body; on a 429/503 its
    Retry-After, or one of ours: every 429/503 has one)."""
    headers = [(b"content-type", content_type), content_length(data)]
    if status == 429 or status == 503:
        headers.append(engine_retry_after(retry_after))
    if ctx.extra:
        headers.extend(ctx.extra)
    ctx.finished = True
    ctx.started = True
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class Relay:
    """Both relays (a whole answer, a stream) over ``pool``, ending in ``accounting``."""

    def __init__(
        self,
        *,
        pool: UpstreamPool,
        accounting: Accounting,
        metrics: GatewayMetrics,
        read_timeout_s: float,
        keeper: MailboxKeeper | None = None,
    ) -> None:
        """``keeper``: keeps the results of requests in mailbox mode (``mailbox.py``)."""
        self.pool = pool
        self.accounting = accounting
        self.metrics = metrics
        self.read_timeout_s = read_timeout_s
        self.keeper = keeper

    def upstream_error(self, exc: BaseException, upstream: Upstream) -> GatewayError:
        """The answer for a failure talking to ``upstream`` (504, 502, else 500)."""
        where = f"instance {upstream.instance_id} at {upstream.host}:{upstream.port}"
        if isinstance(exc, TimeoutError):
            return GatewayError(
                504,
                "upstream_timeout",
                f"{where} did not answer within {self.read_timeout_s:g} s",
            )
        if isinstance(exc, UpstreamConnectError):
            return GatewayError(502, "upstream_error", f"cannot connect to {where}: {exc}")
        if isinstance(exc, OSError):  # UpstreamClosed, resets, an invalid answer
            return GatewayError(502, "upstream_error", f"{where} failed: {clip(str(exc), 200)}")
        log_unexpected(exc, f"relaying to {where}")
        return internal_error()

    async def once(
        self, ctx: RequestContext, path: bytes, payload: bytes, send: Send, receive: Receive
    ) -> None:
        """Send the request, relay the whole answer, account it."""
        upstream = ctx.upstream
        assert upstream is not None
        pool = self.pool
        timeout = self.read_timeout_s
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, ctx))
        conn: UpstreamConn | None = None
        try:
            try:
                t_up = time.perf_counter()
                conn = await pool.request(upstream, path, payload, timeout, ctx.rid)
                self.metrics.upstream_latency(time.perf_counter() - t_up)
                data = await conn.read_all(timeout)
                if ctx.bodies is not None:
                    ctx.bodies.add(data)
                pool.release(conn)
            except asyncio.CancelledError:
                if not ctx.gone:
                    raise  # drained or not ours: the caller answers and accounts
                ctx.task.uncancel()
                if conn is not None:
                    conn.close()  # the engine sees the connection drop and aborts
                self.accounting.finish(
                    ctx, 499, "client_disconnected", ctx.prompt, 0, None, disconnected=True
                )
                return
            except Exception as exc:
                if conn is not None:
                    conn.close()
                await self._fail(send, ctx, self.upstream_error(exc, upstream))
                return
            finally:
                if conn is not None and not conn.complete:
                    conn.close()  # whatever interrupted the read: never reuse it
            await self._answer(ctx, conn.status, conn.content_type, data, send, conn.retry_after)
            if ctx.keep is not None and self.keeper is not None:
                await self.keeper.finish_whole(ctx, conn.status, data)
        finally:
            watcher.cancel()

    async def _answer(
        self,
        ctx: RequestContext,
        status: int,
        content_type: bytes,
        data: bytes,
        send: Send,
        retry_after: bytes | None = None,
    ) -> None:
        """Relay a whole answer and account it."""
        error_code: str | None = None
        prompt = ctx.prompt
        completion = 0
        if status == 200:
            prompt, completion = answer_usage(data, prompt, ROUTES[ctx.endpoint].usage == RESPONSES)
        else:
            err = not_served(ctx, status, data)
            if err is not None:
                ctx.prompt = 0
                await self.accounting.fail(send, ctx, err)
                return
            error_code = f"upstream_{status}"
        await _send_whole(send, ctx, status, content_type, data, retry_after)
        self.accounting.finish(
            ctx, status, error_code, prompt, completion, None, disconnected=ctx.gone
        )

    async def _fail(self, send: Send, ctx: RequestContext, err: GatewayError, *args: Any) -> None:
        """``Accounting.fail``; a request in mailbox mode keeps its error as its record."""
        await self.accounting.fail(send, ctx, err, *args)
        if ctx.keep is not None and self.keeper is not None:
            await self.keeper.failed(ctx, err)

    async def stream(
        self, ctx: RequestContext, path: bytes, payload: bytes, send: Send, receive: Receive
    ) -> None:
        """Send the request, relay the answer event by event, account it."""
        upstream = ctx.upstream
        assert upstream is not None
        pool = self.pool
        accounting = self.accounting
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, ctx))
        relay: SSERelay | ResponsesRelay
        if ROUTES[ctx.endpoint].usage == RESPONSES:
            relay = ResponsesRelay()
        else:
            relay = SSERelay(strip_usage=not ctx.client_usage)
        conn: UpstreamConn | None = None
        try:
            try:
                t_up = time.perf_counter()
                conn = await pool.request(upstream, path, payload, self.read_timeout_s, ctx.rid)
                self.metrics.upstream_latency(time.perf_counter() - t_up)
                if conn.status != 200:
                    data = await conn.read_all(self.read_timeout_s)
                    pool.release(conn)
                    status, ctype, wait = conn.status, conn.content_type, conn.retry_after
                    conn = None
                    await self._answer(ctx, status, ctype, data, send, wait)
                    if ctx.keep is not None and self.keeper is not None:
                        await self.keeper.finish_whole(ctx, status, data)
                    return
                await self._events(ctx, conn, relay, send)
                pool.release(conn)
                conn = None
                tail = relay.flush()
                if ctx.keep is not None:
                    ctx.keep.add(tail)
            except asyncio.CancelledError:
                if conn is not None:
                    conn.close()  # the engine sees the connection drop and aborts the request
                    conn = None
                if ctx.drained:
                    ctx.task.uncancel()
                    await accounting.fail(
                        send, ctx, shutting_down(), relay, ctx.ttft, tail=relay.flush()
                    )
                    return
                if not ctx.gone:
                    raise
                ctx.task.uncancel()
                accounting.finish_disconnected(
                    ctx, 200 if ctx.started else 499, relay.chunks, ctx.ttft
                )
                return
            except Exception as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                err = self.upstream_error(exc, upstream)
                await accounting.fail(send, ctx, err, relay, ctx.ttft, tail=relay.flush())
                if ctx.keep is not None and self.keeper is not None:
                    await self.keeper.failed(ctx, err)
                return
            ctx.finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            # No usage chunk (an engine without include_usage): the chunks seen are counted.
            accounting.finish(
                ctx, 200, None, relay.prompt_tokens or ctx.prompt, relay.completion_tokens,
                ctx.ttft, disconnected=ctx.gone,
            )  # fmt: skip
            if ctx.keep is not None and self.keeper is not None:
                await self.keeper.finish_stream(ctx, relay)
        finally:
            watcher.cancel()
            if conn is not None:
                conn.close()

    async def upload(
        self,
        ctx: RequestContext,
        content_type: bytes,
        length: int | None,
        chunks: AsyncIterator[bytes],
        send: Send,
        receive: Receive,
    ) -> None:
        """Send a multipart upload as it arrives, relay the answer (a stream if the engine
        streams it), account it. A 413 from ``chunks`` is raised (nothing was answered); a
        client gone mid-upload is accounted as disconnected."""
        upstream = ctx.upstream
        assert upstream is not None
        timeout = self.read_timeout_s
        path = ROUTES[ctx.endpoint].upstream_path
        relay = SSERelay(strip_usage=False)
        watcher: asyncio.Task[None] | None = None
        conn: UpstreamConn | None = None
        try:
            try:
                conn = await self.pool.request_streamed(
                    upstream, path, content_type, length, chunks, timeout
                )
                watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, ctx))
                if conn.status == 200 and conn.content_type.startswith(b"text/event-stream"):
                    ctx.stream = True
                    await self._events(ctx, conn, relay, send)
                    self.pool.release(conn)
                    conn = None
                    ctx.finished = True
                    await send({"type": "http.response.body", "body": relay.flush()})
                    self.accounting.finish(
                        ctx, 200, None, relay.prompt_tokens or ctx.prompt,
                        relay.completion_tokens, ctx.ttft, disconnected=False,
                    )  # fmt: skip
                    return
                data = await conn.read_all(timeout)
                self.pool.release(conn)
                status, ctype, wait = conn.status, conn.content_type, conn.retry_after
                conn = None
            except (ClientGone, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError):
                    if not ctx.gone:
                        raise
                    ctx.task.uncancel()
                self.accounting.finish(
                    ctx, 200 if ctx.started else 499, "client_disconnected", ctx.prompt,
                    relay.completion_tokens, ctx.ttft, disconnected=True,
                )  # fmt: skip
                return
            except GatewayError:
                raise
            except Exception as exc:
                err = self.upstream_error(exc, upstream)
                await self.accounting.fail(send, ctx, err, relay, ctx.ttft)
                return
            await self._answer(ctx, status, ctype, data, send, wait)
        finally:
            if watcher is not None:
                watcher.cancel()
            if conn is not None:
                conn.close()

    async def _events(
        self,
        ctx: RequestContext,
        conn: UpstreamConn,
        relay: SSERelay | ResponsesRelay,
        send: Send,
    ) -> None:
        """Relay a 200 stream until the engine ends it (the last bytes stay in ``relay``)."""
        headers = [CT_SSE, NO_CACHE]
        if ctx.extra:
            headers.extend(ctx.extra)
        ctx.started = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        timeout = self.read_timeout_s
        while True:
            data = await conn.read_some(timeout)
            if not data:
                return
            out = relay.feed(data)
            if out:
                if ctx.bodies is not None:
                    ctx.bodies.add(out)
                if ctx.keep is not None:
                    ctx.keep.add(out)
                if ctx.ttft is None:
                    ctx.ttft = time.perf_counter() - ctx.t0
                await send({"type": "http.response.body", "body": out, "more_body": True})
                if out.endswith(DONE_EVENTS) or relay.ended:  # any SSE framing
                    # The client has the whole stream: its closing now is no disconnect.
                    ctx.finished = True
