"""The end of every proxied request: one usage row, one metrics record, everything given back.

Every finish path goes through :meth:`Accounting.finish` (or :meth:`Accounting.refuse` and
:meth:`Accounting.fail`, which answer first and then finish), once per request
(``RequestContext.accounted``): the concurrency slot and the TPM reservation go back to the
limiter (``Admission.finish`` with the tokens really used), the request is counted in the
metrics (model label: the name if the route table knows it, else ``OTHER_MODEL``), and the
usage row, built by :func:`usage_record` alone, goes to the usage queue once the tenant is
known (a request refused before that is counted in the metrics only).

A stream the client left with only an estimate of its prompt (the cheap path of
``PromptCounter.measure``) gets its row after an exact count by the engine's tokenizer, in
the background (at most ``MAX_BACKGROUND_COUNTS`` at once): its slot is released at once
regardless.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

from studioctl.errors import GatewayError
from studioctl.gateway.asgi import Send, send_error
from studioctl.gateway.body import clip
from studioctl.gateway.context import RequestContext
from studioctl.gateway.metrics import OTHER_MODEL, GatewayMetrics
from studioctl.gateway.routes import RESPONSES, ROUTES
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.gateway.sse import ResponsesRelay, json_dumps, responses_error_event
from studioctl.gateway.tokenize import PROMPT_FIELDS, PromptCounter
from studioctl.gateway.usage import UsageQueue
from studioctl.store.usage import UsageRecord

if TYPE_CHECKING:
    from studioctl.gateway.queue import ModelQueues
    from studioctl.gateway.sse import SSERelay

__all__ = [
    "DONE_EVENT",
    "MAX_BACKGROUND_COUNTS",
    "Accounting",
    "internal_error",
    "log_unexpected",
    "usage_record",
]

_log = logging.getLogger("studioctl.gateway")

DONE_EVENT = b"data: [DONE]\n\n"
# Exact prompt counts for the rows of disconnected streams running at once; past it the
# estimate stands (those calls run after the slot is released: they must stay bounded).
MAX_BACKGROUND_COUNTS = 256


def usage_record(
    ctx: RequestContext,
    *,
    status: int,
    error_code: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_s: float | None,
    duration_s: float,
    disconnected: bool,
) -> UsageRecord:
    """The usage row of a request whose tenant is known (the only place one is built)."""
    tenant = ctx.tenant
    assert tenant is not None
    upstream = ctx.upstream
    queue_s = ctx.queue_s
    bodies = ctx.bodies
    request_body, response_body = bodies.texts(ctx.stream) if bodies else (None, None)
    return UsageRecord(
        ts=ctx.ts,
        tenant_id=tenant.tenant_id,
        key_prefix=tenant.key_prefix,
        model=ctx.model,
        instance_id=upstream.instance_id if upstream is not None else None,
        status=status,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        ttft_ms=ttft_s * 1000.0 if ttft_s is not None else None,
        duration_ms=duration_s * 1000.0,
        streamed=ctx.stream,
        disconnected=disconnected,
        error_code=error_code,
        queue_ms=queue_s * 1000.0 if queue_s else 0.0,
        request_id=ctx.request_id,
        request_body=request_body,
        response_body=response_body,
    )


def internal_error() -> GatewayError:
    return GatewayError(500, "internal_error", "the gateway failed; see its log")


def log_unexpected(exc: BaseException, doing: str) -> None:
    """Log a failure nobody foresaw: bounded text (its message may quote a client), and the
    frames (no values) to find it by."""
    _log.error(
        "gateway: unexpected error %s: %s\n%s",
        doing,
        clip(repr(exc), 500),
        "".join(traceback.format_tb(exc.__traceback__)),
    )


class Accounting:
    """Finishes requests (see the module docstring)."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        metrics: GatewayMetrics,
        usage: UsageQueue,
        tokenizer: PromptCounter,
        queues: ModelQueues | None = None,
    ) -> None:
        """``queues``: told when a slot is given back (requests parked for one)."""
        self.routes = routes
        self.queues = queues
        self.metrics = metrics
        self.usage = usage
        self.tokenizer = tokenizer
        self._background: set[asyncio.Task[None]] = set()
        # Exact counts after a disconnect are not started while draining or closing.
        self._deferring = True

    def finish(
        self,
        ctx: RequestContext,
        status: int,
        error_code: str | None,
        prompt: int,
        completion: int,
        ttft: float | None,
        *,
        disconnected: bool,
    ) -> None:
        """The one usage row and metrics record of a request; gives back what it took.
        Only the first call per request counts."""
        if ctx.accounted:
            return
        duration = self._close(ctx, status, prompt, completion, ttft)
        if ctx.tenant is not None:  # else refused before a tenant was known: metrics only
            self.usage.submit(
                usage_record(
                    ctx,
                    status=status,
                    error_code=error_code,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    ttft_s=ttft,
                    duration_s=duration,
                    disconnected=disconnected,
                )
            )

    def finish_disconnected(
        self, ctx: RequestContext, status: int, completion: int, ttft: float | None
    ) -> None:
        """A stream the client left: release now; the row may wait for an exact count."""
        upstream = ctx.upstream
        body = ctx.body
        later = (
            not ctx.exact
            and self._deferring
            and upstream is not None
            and body is not None
            and ctx.tenant is not None
            and len(self._background) < MAX_BACKGROUND_COUNTS
            and self.tokenizer.single_call(body)
        )
        if not later or ctx.accounted:
            self.finish(
                ctx, status, "client_disconnected", ctx.prompt, completion, ttft, disconnected=True
            )
            return
        assert upstream is not None and body is not None
        duration = self._close(ctx, status, ctx.prompt, completion, ttft)
        # Only what the count reads is kept while it waits (not, say, a large metadata).
        prompt_only = {k: body[k] for k in PROMPT_FIELDS if k in body}
        ctx.body = None
        task = asyncio.get_running_loop().create_task(
            self._exact_usage(ctx, upstream, prompt_only, status, completion, ttft, duration)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _close(
        self, ctx: RequestContext, status: int, prompt: int, completion: int, ttft: float | None
    ) -> float:
        """Mark ``ctx`` accounted, give back its slot and TPM, count it; its duration."""
        ctx.accounted = True
        duration = time.perf_counter() - ctx.t0
        admission = ctx.admission
        if admission is not None:
            admission.finish(actual_tokens=prompt + completion)
            queues = self.queues
            if queues is not None and queues.parked.waiters:
                queues.slot_freed()
        tenant = ctx.tenant
        model = ctx.model
        # Label a model by name only if the route table knows it: invented names would
        # otherwise each open a series.
        known = model is not None and (ctx.known or self.routes.knows(model))
        metrics = self.metrics
        metrics.route(ROUTES[ctx.endpoint].name, status)
        metrics.request(
            model if known and model is not None else OTHER_MODEL,
            tenant.name if tenant is not None else None,
            status,
            duration,
            ttft,
            prompt,
            completion,
            ctx.stream,
        )
        return duration

    async def _exact_usage(
        self,
        ctx: RequestContext,
        upstream: Upstream,
        body: dict[str, Any],
        status: int,
        completion: int,
        ttft: float | None,
        duration: float,
    ) -> None:
        prompt = ctx.prompt
        try:
            prompt = await self.tokenizer.count(upstream, body)
        except Exception as exc:  # the estimate stands
            _log.warning("gateway: exact prompt count failed: %s", clip(repr(exc), 200))
        finally:
            self.usage.submit(
                usage_record(
                    ctx,
                    status=status,
                    error_code="client_disconnected",
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    ttft_s=ttft,
                    duration_s=duration,
                    disconnected=True,
                )
            )

    async def refuse(self, send: Send, ctx: RequestContext, exc: GatewayError) -> None:
        """Answer a request refused before anything was sent upstream (no tokens used)."""
        self.metrics.rejection(exc.code or "error", ctx.tenant.name if ctx.tenant else None)
        ctx.stream = False  # answered with an error, not a stream
        try:
            ctx.finished = ctx.started = True
            await send_error(send, ctx.tagged(exc), ctx.extra)
        finally:
            self.finish(ctx, exc.http_status, exc.code or "error", 0, 0, None, disconnected=False)

    async def fail(
        self,
        send: Send,
        ctx: RequestContext,
        err: GatewayError,
        relay: SSERelay | ResponsesRelay | None = None,
        ttft: float | None = None,
        *,
        tail: bytes = b"",
    ) -> None:
        """End an admitted request with ``err``: an error answer if its head is not sent,
        else (a stream) an error event and ``[DONE]``, the way vLLM ends a failed stream
        (a ``/v1/responses`` stream: the Responses API's typed ``error`` event)."""
        status = err.http_status
        shown = ctx.tagged(err)
        try:
            if not ctx.started:
                ctx.finished = ctx.started = True
                await send_error(send, shown, ctx.extra)
            elif not ctx.finished:
                ctx.finished = True
                status = 200  # what the client was told
                end = b""  # a non-streamed body cannot be amended: it is just ended
                if ctx.stream and ROUTES[ctx.endpoint].usage == RESPONSES:
                    seq = relay.events if isinstance(relay, ResponsesRelay) else 0
                    end = tail + responses_error_event(shown.to_dict(), seq)
                elif ctx.stream:
                    end = tail + b"data: " + json_dumps({"error": shown.to_dict()}) + b"\n\n"
                    end += DONE_EVENT
                await send({"type": "http.response.body", "body": end, "more_body": False})
        finally:
            prompt, completion = ctx.prompt, 0
            if relay is not None:
                prompt, completion = relay.prompt_tokens or prompt, relay.completion_tokens
            self.finish(ctx, status, err.code, prompt, completion, ttft, disconnected=False)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Exact counts after disconnects may run again (a new start-up)."""
        self._deferring = True

    def stop_deferring(self) -> None:
        """From now on rows of disconnected streams are written at once (draining)."""
        self._deferring = False

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait (up to ``timeout_s``) for the exact counts running in the background."""
        self._deferring = False
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)
