"""The accounting seam: every finish path writes exactly one usage row, built by
``accounting.usage_record`` alone, and gives back the slot it took.

Real parts (Limiter, RouteTable, GatewayMetrics, the store's UsageRecord); the ASGI ``send``
is a list, the request's task a real one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest

from studioctl.errors import GatewayError
from studioctl.gateway import accounting as accounting_module
from studioctl.gateway.accounting import DONE_EVENT, Accounting, usage_record
from studioctl.gateway.context import CHAT, RequestContext
from studioctl.gateway.limits import Limiter
from studioctl.gateway.metrics import OTHER_MODEL, GatewayMetrics
from studioctl.gateway.routes import POST_ROUTES
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.gateway.sse import ResponsesRelay, SSERelay
from studioctl.gateway.tokenize import PromptCounter
from studioctl.gateway.usage import MemoryUsageQueue
from studioctl.store.usage import UsageRecord
from studioctl.tenants import TenantContext, TenantLimits

TENANT = TenantContext(
    tenant_id="t_1",
    name="acme",
    enabled=True,
    limits=TenantLimits(
        max_concurrent=4, rpm=1000, tpm=1_000_000, max_context_tokens=8192, max_output_tokens=64
    ),
    key_prefix="sk-st-abcdefgh",
)
UP = Upstream("i-1", "r-1", "127.0.0.1", 9, "ready", ("tiny",))


class _Counter:
    """Stands in for PromptCounter in the deferred exact count (no engine here)."""

    def __init__(self, exact: int) -> None:
        self.exact = exact
        self.counted: list[dict[str, Any]] = []

    def single_call(self, body: dict[str, Any]) -> bool:
        return True

    async def count(self, upstream: Upstream, body: dict[str, Any]) -> int:
        self.counted.append(body)
        await asyncio.sleep(0)
        return self.exact


class Harness:
    def __init__(self, counter: _Counter) -> None:
        self.routes = RouteTable()
        self.routes.update([UP], {"tiny": "r-1"})
        self.limiter = Limiter(global_max_concurrent=8)
        self.metrics = GatewayMetrics(inflight_source=self.limiter.inflight)
        self.usage = MemoryUsageQueue()
        self.counter = counter
        self.accounting = Accounting(
            routes=self.routes,
            metrics=self.metrics,
            usage=self.usage,
            tokenizer=cast(PromptCounter, counter),
        )
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))

    def context(self, *, tenant: bool = True, admitted: bool = True) -> RequestContext:
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, CHAT, 0.0, 1234.5, None)
        if tenant:
            ctx.tenant = TENANT
            ctx.model = "tiny"
            ctx.known = True
            if admitted:
                ctx.admission = self.limiter.enter(TENANT)
        return ctx


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[UsageRecord]]:
    """Every row built by ``usage_record``, in order (the only builder)."""
    rows: list[UsageRecord] = []

    def counting(ctx: RequestContext, **kw: Any) -> UsageRecord:
        row = usage_record(ctx, **kw)
        rows.append(row)
        return row

    monkeypatch.setattr(accounting_module, "usage_record", counting)
    yield rows


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_usage_record_is_built_by_keyword_from_the_context() -> None:
    async def main() -> UsageRecord:
        h = Harness(_Counter(0))
        ctx = h.context()
        ctx.upstream = UP
        ctx.stream = True
        return usage_record(
            ctx,
            status=200,
            error_code=None,
            prompt_tokens=7,
            completion_tokens=9,
            ttft_s=0.25,
            duration_s=1.5,
            disconnected=False,
        )

    row = run(main())
    assert row.request_id is not None and len(row.request_id) == 24  # ours: ms, 48 random bits
    assert row == UsageRecord(
        request_id=row.request_id,
        ts=1234.5,
        tenant_id="t_1",
        key_prefix="sk-st-abcdefgh",
        model="tiny",
        instance_id="i-1",
        status=200,
        prompt_tokens=7,
        completion_tokens=9,
        ttft_ms=250.0,
        duration_ms=1500.0,
        streamed=True,
        disconnected=False,
        error_code=None,
    )


def test_finish_writes_one_row_and_frees_the_slot_once(built: list[UsageRecord]) -> None:
    async def main() -> Harness:
        h = Harness(_Counter(0))
        ctx = h.context()
        ctx.upstream = UP
        h.accounting.finish(ctx, 200, None, 5, 6, None, disconnected=False)
        h.accounting.finish(ctx, 500, "again", 5, 6, None, disconnected=False)  # ignored
        return h

    h = run(main())
    assert built == h.usage.rows
    (row,) = h.usage.rows
    assert (row.status, row.prompt_tokens, row.completion_tokens) == (200, 5, 6)
    assert h.limiter.inflight() == 0
    assert h.metrics.summary()["requests_total"] == 1


def test_refuse_answers_and_writes_one_row(built: list[UsageRecord]) -> None:
    async def main() -> Harness:
        h = Harness(_Counter(0))
        ctx = h.context()
        ctx.stream = True
        await h.accounting.refuse(h.send, ctx, GatewayError(429, "limit_tpm", "slow down"))
        return h

    h = run(main())
    (row,) = built
    assert h.usage.rows == [row]
    assert (row.status, row.error_code, row.streamed) == (429, "limit_tpm", False)
    assert h.sent[0]["status"] == 429 and b"limit_tpm" in h.sent[1]["body"]
    assert h.limiter.inflight() == 0


def test_a_request_without_a_tenant_is_counted_in_metrics_only(built: list[UsageRecord]) -> None:
    async def main() -> Harness:
        h = Harness(_Counter(0))
        ctx = h.context(tenant=False)
        ctx.model = "invented"
        await h.accounting.refuse(h.send, ctx, GatewayError(401, "invalid_api_key", "no"))
        return h

    h = run(main())
    assert built == [] and h.usage.rows == []
    assert h.metrics.summary()["requests_total"] == 1
    assert OTHER_MODEL in h.metrics.render()


def test_fail_before_the_head_answers_the_error(built: list[UsageRecord]) -> None:
    async def main() -> Harness:
        h = Harness(_Counter(0))
        ctx = h.context()
        ctx.upstream = UP
        await h.accounting.fail(h.send, ctx, GatewayError(502, "upstream_error", "gone"))
        return h

    h = run(main())
    (row,) = built
    assert (row.status, row.error_code, row.instance_id) == (502, "upstream_error", "i-1")
    assert h.sent[0]["status"] == 502
    assert h.limiter.inflight() == 0


def test_fail_mid_stream_ends_it_with_an_error_event(built: list[UsageRecord]) -> None:
    async def main() -> Harness:
        h = Harness(_Counter(0))
        ctx = h.context()
        ctx.upstream = UP
        ctx.stream = ctx.started = True
        relay = SSERelay(strip_usage=False)
        await h.accounting.fail(
            h.send, ctx, GatewayError(504, "upstream_timeout", "slow"), relay, 0.1, tail=b""
        )
        return h

    h = run(main())
    (row,) = built
    assert (row.status, row.error_code, row.ttft_ms) == (200, "upstream_timeout", 100.0)
    (end,) = h.sent
    assert end["more_body"] is False and end["body"].endswith(DONE_EVENT)
    assert b"upstream_timeout" in end["body"]


def test_fail_mid_responses_stream_ends_it_with_a_typed_error_event(
    built: list[UsageRecord],
) -> None:
    """A /v1/responses stream (typed events, no [DONE]) ends with the Responses API's
    ``error`` event, numbered after the events relayed."""
    relayed = (
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"a","sequence_number":1}\n\n'
    )

    async def main() -> Harness:
        h = Harness(_Counter(0))
        ctx = h.context()
        ctx.endpoint = POST_ROUTES["/v1/responses"].index
        ctx.upstream = UP
        ctx.stream = ctx.started = True
        relay = ResponsesRelay()
        relay.feed(relayed)
        await h.accounting.fail(
            h.send, ctx, GatewayError(503, "shutting_down", "bye"), relay, 0.1, tail=b""
        )
        return h

    h = run(main())
    (end,) = h.sent
    body = end["body"]
    assert body.startswith(b"event: error\ndata: ") and body.endswith(b"\n\n")
    assert DONE_EVENT not in body
    event = json.loads(body.split(b"data: ", 1)[1])
    assert (event["type"], event["code"], event["sequence_number"]) == ("error", "shutting_down", 2)
    assert event["message"].startswith("bye (request id ")
    (row,) = built
    assert (row.status, row.error_code, row.completion_tokens) == (200, "shutting_down", 1)


def test_a_disconnect_with_an_exact_prompt_writes_its_row_at_once(
    built: list[UsageRecord],
) -> None:
    async def main() -> Harness:
        h = Harness(_Counter(99))
        ctx = h.context()
        ctx.upstream = UP
        ctx.stream = ctx.exact = True
        ctx.prompt = 12
        ctx.body = {"model": "tiny", "messages": []}
        h.accounting.finish_disconnected(ctx, 200, 3, 0.5)
        await asyncio.sleep(0.01)
        return h

    h = run(main())
    (row,) = built
    assert (row.prompt_tokens, row.completion_tokens, row.disconnected) == (12, 3, True)
    assert row.error_code == "client_disconnected"
    assert h.counter.counted == []


def test_a_disconnect_with_an_estimate_waits_for_the_exact_count(
    built: list[UsageRecord],
) -> None:
    async def main() -> tuple[Harness, int, int]:
        h = Harness(_Counter(99))
        ctx = h.context()
        ctx.upstream = UP
        ctx.stream = True
        ctx.prompt = 12  # the estimate
        ctx.body = {"model": "tiny", "messages": [], "metadata": "x" * 1000}
        h.accounting.finish_disconnected(ctx, 200, 3, 0.5)
        # Released at once; the row waits for the count.
        inflight, rows_before = h.limiter.inflight(), len(h.usage.rows)
        assert ctx.body is None  # nothing but the prompt fields is kept meanwhile
        await h.accounting.close()
        return h, inflight, rows_before

    h, inflight, rows_before = run(main())
    assert (inflight, rows_before) == (0, 0)
    (row,) = built
    assert h.usage.rows == [row]
    assert (row.prompt_tokens, row.completion_tokens, row.disconnected) == (99, 3, True)
    assert h.counter.counted == [{"model": "tiny", "messages": []}]


def test_no_deferred_count_while_draining(built: list[UsageRecord]) -> None:
    async def main() -> Harness:
        h = Harness(_Counter(99))
        h.accounting.stop_deferring()
        ctx = h.context()
        ctx.upstream = UP
        ctx.stream = True
        ctx.prompt = 12
        ctx.body = {"model": "tiny", "messages": []}
        h.accounting.finish_disconnected(ctx, 200, 3, 0.5)
        return h

    h = run(main())
    (row,) = built
    assert row.prompt_tokens == 12 and h.counter.counted == []
