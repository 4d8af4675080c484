"""ModelQueues on its own: depth, timeout, wake on ready (through the route table), failure,
cancellation and disconnect, the parking lot, listings. Every path leaves the room."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from studioctl.errors import GatewayBusy, GatewayError
from studioctl.gateway.context import CHAT, RequestContext
from studioctl.gateway.limits import Limiter
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.queue import BUSY, LOADING, ModelQueues, QueueRules, RoomRule
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.recipes import Recipe
from studioctl.tenants import TenantContext, TenantLimits

LIMITS = TenantLimits(
    max_concurrent=100, rpm=10_000, tpm=10_000_000, max_context_tokens=4096, max_output_tokens=64
)
TENANT = TenantContext(
    tenant_id="t_a", name="acme", enabled=True, limits=LIMITS, key_prefix="sk-st-x"
)
KNOWN = {"tiny": "r-1", "other": "r-2"}


def up(state: str, model: str = "tiny") -> Upstream:
    return Upstream("i-1", "r-1", "127.0.0.1", 1, state, (model,))


class Client:
    """An ASGI receive that blocks until ``leave()``: then it says http.disconnect."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.gone.set()


def parts(
    *, depth: int = 4, timeout_s: float = 5.0, when_busy: bool = False, slots: int = 100
) -> tuple[RouteTable, Limiter, GatewayMetrics, ModelQueues]:
    routes = RouteTable()
    routes.update([up("loading")], KNOWN)
    limiter = Limiter(global_max_concurrent=slots)
    metrics = GatewayMetrics()
    queues = ModelQueues(
        routes=routes,
        limiter=limiter,
        metrics=metrics,
        depth=depth,
        timeout_s=timeout_s,
        when_busy=when_busy,
    )
    return routes, limiter, metrics, queues


def refusal(routes: RouteTable, model: str = "tiny") -> GatewayError:
    with pytest.raises(GatewayError) as info:
        routes.resolve(model)
    return info.value


async def waiting(
    queues: ModelQueues, routes: RouteTable, model: str = "tiny", want: Any = None
) -> tuple[RequestContext, Client, asyncio.Task[Upstream]]:
    """A request task waiting for ``model`` (its context, its client, the task)."""
    client = Client()
    ctxs: list[RequestContext] = []

    async def request() -> Upstream:
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, CHAT, 0.0, 0.0, None)
        ctx.tenant = TENANT
        ctx.model = model
        ctxs.append(ctx)
        return await queues.wait_for_model(ctx, model, refusal(routes, model), client.receive, want)

    task = asyncio.get_running_loop().create_task(request())
    await asyncio.sleep(0)
    return ctxs[0], client, task


def test_waiters_are_released_the_moment_the_model_is_ready() -> None:
    async def main() -> None:
        routes, _, metrics, queues = parts(depth=64)
        tasks = [(await waiting(queues, routes))[2] for _ in range(50)]
        await asyncio.sleep(0.01)
        assert queues.counts() == {"tiny": 50}
        assert not any(t.done() for t in tasks)
        routes.update([up("ready")], KNOWN)  # what instances_changed does
        got = await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
        assert {u.state for u in got} == {"ready"}
        assert queues.counts() == {} and queues.rooms == {}
        assert 'studioctl_gateway_queue_seconds_count{model="tiny"} 50' in metrics.render()

    asyncio.run(main())


def test_an_unrelated_change_keeps_them_waiting() -> None:
    async def main() -> None:
        routes, _, _, queues = parts()
        ctx, _, task = await waiting(queues, routes)
        routes.update([up("starting"), up("ready", "other")], KNOWN)
        await asyncio.sleep(0.01)
        assert not task.done() and queues.counts() == {"tiny": 1}
        routes.update([up("ready")], KNOWN)
        assert (await task).state == "ready"
        assert ctx.queue_s > 0

    asyncio.run(main())


def test_a_model_that_stops_loading_ends_the_wait_with_the_route_tables_answer() -> None:
    async def main() -> None:
        routes, _, _, queues = parts()
        _, _, task = await waiting(queues, routes)
        routes.update([], KNOWN)  # the engine failed: known, not running
        with pytest.raises(GatewayError) as info:
            await task
        assert info.value.code == "model_not_running"
        assert queues.rooms == {}

    asyncio.run(main())


def test_full_queue_is_503_queue_full_with_retry_after() -> None:
    async def main() -> None:
        routes, _, _, queues = parts(depth=2)
        held = [(await waiting(queues, routes))[2] for _ in range(2)]
        _, _, third = await waiting(queues, routes)
        with pytest.raises(GatewayError) as info:
            await third
        assert (info.value.http_status, info.value.code) == (503, "queue_full")
        assert info.value.retry_after is not None and info.value.retry_after > 0
        assert queues.counts() == {"tiny": 2}
        for t in held:
            t.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert queues.rooms == {}

    asyncio.run(main())


def test_depth_zero_waits_for_nothing_queue_full_at_once() -> None:
    async def main() -> None:
        routes, _, _, queues = parts(depth=0)
        routes.update([], KNOWN)  # known, not running: only the want makes it wait
        wanted: list[str] = []
        _, _, task = await waiting(queues, routes, want=lambda m, ctx: not wanted.append(m))
        with pytest.raises(GatewayError) as info:
            await task
        assert (info.value.http_status, info.value.code) == (503, "queue_full")
        assert wanted == ["tiny"]  # the orchestrator heard of it all the same
        assert queues.rooms == {} and queues.counts() == {}

    asyncio.run(main())


def test_timeout_is_503_model_loading_and_leaves_the_room() -> None:
    async def main() -> None:
        routes, _, _, queues = parts(timeout_s=0.05)
        ctx, _, task = await waiting(queues, routes)
        with pytest.raises(GatewayError) as info:
            await task
        assert (info.value.http_status, info.value.code) == (503, "model_loading")
        assert info.value.retry_after == 5.0
        assert queues.rooms == {} and ctx.queue_s >= 0.04

    asyncio.run(main())


def test_a_client_that_leaves_is_out_of_the_room_at_once() -> None:
    async def main() -> None:
        routes, _, _, queues = parts()
        ctx, client, task = await waiting(queues, routes)
        _, _, other = await waiting(queues, routes)
        client.leave()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ctx.gone
        assert queues.counts() == {"tiny": 1}  # the other one still waits
        routes.update([up("ready")], KNOWN)
        assert (await other).state == "ready"

    asyncio.run(main())


def test_fail_and_close_end_every_waiter_with_their_error() -> None:
    async def main() -> None:
        routes, _, _, queues = parts()
        _, _, a = await waiting(queues, routes)
        assert queues.fail("tiny", GatewayError(503, "load_failed", "no memory")) == 1
        with pytest.raises(GatewayError, match="no memory"):
            await a
        _, _, b = await waiting(queues, routes)
        queues.close(GatewayError(503, "shutting_down", "bye"))
        with pytest.raises(GatewayError, match="bye"):
            await b
        _, _, c = await waiting(queues, routes)  # closed: refused without waiting
        with pytest.raises(GatewayError, match="bye"):
            await c
        queues.reopen()
        _, _, d = await waiting(queues, routes)
        routes.update([up("ready")], KNOWN)
        assert (await d).state == "ready"
        assert queues.rooms == {}

    asyncio.run(main())


def test_want_makes_a_stopped_model_wait_and_none_keeps_todays_answer() -> None:
    async def main() -> None:
        routes, _, _, queues = parts()
        routes.update([], KNOWN)
        _, _, plain = await waiting(queues, routes)
        with pytest.raises(GatewayError) as info:
            await plain
        assert info.value.code == "model_not_running"
        asked: list[tuple[str, str | None]] = []

        def want(model: str, ctx: RequestContext) -> bool:
            asked.append((model, ctx.tenant.name if ctx.tenant else None))
            return True

        _, _, task = await waiting(queues, routes, want=want)
        routes.update([up("starting")], KNOWN)  # the orchestrator launched it
        await asyncio.sleep(0.01)
        assert not task.done()
        routes.update([up("ready")], KNOWN)
        assert (await task).state == "ready"
        assert asked[0] == ("tiny", "acme")

    asyncio.run(main())


def test_listing_names_ids_tenants_models_and_times_never_prompts() -> None:
    async def main() -> None:
        routes, _, _, queues = parts()
        ctx, _, task = await waiting(queues, routes)
        ctx.body = {"messages": [{"role": "user", "content": "SECRET"}]}
        await asyncio.sleep(0.02)
        listing = queues.listing()
        assert listing["object"] == "list" and listing["counts"] == {"tiny": 1}
        (entry,) = listing["data"]
        assert set(entry) == {"request_id", "tenant", "model", "waited_ms", "queue"}
        # The request's own id (gateway.context), not one of the room's.
        assert entry["request_id"] == ctx.request_id
        assert (entry["tenant"], entry["model"], entry["queue"]) == ("acme", "tiny", LOADING)
        assert entry["waited_ms"] >= 15
        assert "SECRET" not in repr(listing)
        assert queues.listing("other") == {"object": "list", "counts": {"other": 0}, "data": []}
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_parking_lot_waits_for_a_global_slot_and_tenant_limits_refuse_at_once() -> None:
    async def main() -> None:
        _, limiter, _, queues = parts(when_busy=True, slots=1)
        first = limiter.enter(TENANT)
        with pytest.raises(GatewayBusy) as info:
            limiter.enter(TENANT)
        busy = info.value
        client = Client()
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, CHAT, 0.0, 0.0, None)
        ctx.tenant = TENANT
        ctx.model = "tiny"
        parked = asyncio.get_running_loop().create_task(queues.park(ctx, busy, client.receive))
        await asyncio.sleep(0.01)
        assert queues.counts() == {"tiny": 1}
        assert queues.listing()["data"][0]["queue"] == BUSY
        first.finish(actual_tokens=0)
        queues.slot_freed()  # what accounting does after each finish
        admission = await asyncio.wait_for(parked, 1.0)
        assert limiter.inflight() == 1 and queues.counts() == {}
        admission.finish(actual_tokens=0)
        # A tenant at its own limit is refused before the gateway's limit is looked at.
        one = TenantContext(
            tenant_id="t_b",
            name="b",
            enabled=True,
            limits=TenantLimits(
                max_concurrent=1,
                rpm=100,
                tpm=100_000,
                max_context_tokens=100,
                max_output_tokens=10,
            ),
            key_prefix="sk-st-y",
        )
        held = limiter.enter(one)
        with pytest.raises(GatewayError) as info2:
            limiter.enter(one)
        assert not isinstance(info2.value, GatewayBusy)
        held.finish(actual_tokens=0)

    asyncio.run(main())


def test_parked_request_times_out_with_the_original_429() -> None:
    async def main() -> None:
        _, limiter, _, queues = parts(when_busy=True, slots=1, timeout_s=0.05)
        held = limiter.enter(TENANT)
        with pytest.raises(GatewayBusy) as info:
            limiter.enter(TENANT)
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, CHAT, 0.0, 0.0, None)
        ctx.tenant = TENANT
        with pytest.raises(GatewayBusy):
            await queues.park(ctx, info.value, Client().receive)
        assert queues.counts() == {} and limiter.inflight() == 1
        held.finish(actual_tokens=0)

    asyncio.run(main())


def test_queue_seconds_labels_are_bounded_like_the_other_model_labels() -> None:
    metrics = GatewayMetrics(max_models=2)
    for name in ("a", "b", "c", "x" * 500):
        metrics.queue_wait(name, 0.5)
    metrics.queue_wait(None, 0.5)
    text = metrics.render()
    assert 'studioctl_gateway_queue_seconds_count{model="a"} 1' in text
    assert 'studioctl_gateway_queue_seconds_count{model="b"} 1' in text
    assert 'studioctl_gateway_queue_seconds_count{model="__other__"} 3' in text
    assert "# TYPE studioctl_gateway_queue_seconds histogram" in text


def test_a_want_hook_that_raises_leaves_nothing_behind() -> None:
    async def main() -> None:
        routes, _, _, queues = parts()
        routes.update([], KNOWN)

        def want(model: str, ctx: RequestContext) -> bool:
            raise RuntimeError("orchestrator bug")

        _, _, task = await waiting(queues, routes, want=want)
        with pytest.raises(RuntimeError):
            await task
        assert queues.rooms == {} and queues.counts() == {}

    asyncio.run(main())


def test_a_model_swapping_in_waits_for_the_loading_instance_not_the_draining_one() -> None:
    routes = RouteTable()
    draining = Upstream("i-old", "r-1", "127.0.0.1", 1, "draining", ("tiny",))
    starting = Upstream("i-new", "r-1", "127.0.0.1", 2, "starting", ("tiny",))
    routes.update([draining], KNOWN)
    assert not routes.loading("tiny")  # draining ends in stopped: nothing to wait for
    routes.update([draining, starting], KNOWN)
    assert routes.loading("tiny")
    routes.update([draining, up("ready")], KNOWN)
    assert not routes.loading("tiny")  # ready: no wait at all


# -- in order (scheduler.policy fifo) ------------------------------------------------------

TINY_LOADING = Upstream("i-1", "r-1", "127.0.0.1", 1, "loading", ("tiny",))
TINY_READY = Upstream("i-1", "r-1", "127.0.0.1", 1, "ready", ("tiny",))
OTHER_LOADING = Upstream("i-2", "r-2", "127.0.0.1", 2, "loading", ("other",))
OTHER_READY = Upstream("i-2", "r-2", "127.0.0.1", 2, "ready", ("other",))


def in_order_parts(in_order: bool = True, timeout_s: float = 5.0) -> tuple[RouteTable, ModelQueues]:
    routes = RouteTable()
    queues = ModelQueues(
        routes=routes,
        limiter=Limiter(global_max_concurrent=100),
        metrics=GatewayMetrics(),
        timeout_s=timeout_s,
        in_order=in_order,
    )
    return routes, queues


async def turn(
    queues: ModelQueues, routes: RouteTable, model: str
) -> tuple[RequestContext, Client, asyncio.Task[Upstream]]:
    """A request for a ready ``model`` that found requests waiting (the gateway's fast path
    in order: ``queues.in_order and queues.waiting``)."""
    client = Client()
    ctxs: list[RequestContext] = []

    async def request() -> Upstream:
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, CHAT, 0.0, 0.0, None)
        ctx.tenant, ctx.model = TENANT, model
        ctxs.append(ctx)
        upstream = routes.resolve(model)
        assert queues.in_order and queues.waiting
        return await queues.wait_turn(ctx, model, upstream, client.receive, None)

    task = asyncio.get_running_loop().create_task(request())
    await asyncio.sleep(0)
    return ctxs[0], client, task


def test_in_order_a_ready_models_request_waits_behind_an_older_one_for_another() -> None:
    async def main() -> None:
        routes, queues = in_order_parts()
        routes.update([TINY_LOADING, OTHER_READY], KNOWN)
        assert not queues.waiting
        _, _, older = await waiting(queues, routes, "tiny")
        await asyncio.sleep(0.01)
        ctx, _, younger = await turn(queues, routes, "other")  # ready, but tiny waits
        await asyncio.sleep(0.02)
        assert not younger.done() and queues.counts() == {"tiny": 1, "other": 1}
        models = [row["model"] for row in queues.listing()["data"]]
        assert models == ["tiny", "other"]  # oldest first: the scheduler's head is tiny
        order: list[str] = []
        older.add_done_callback(lambda _: order.append("tiny"))
        younger.add_done_callback(lambda _: order.append("other"))
        routes.update([TINY_READY, OTHER_READY], KNOWN)  # the older one is sent...
        got = await asyncio.wait_for(asyncio.gather(older, younger), 1.0)
        assert [u.instance_id for u in got] == ["i-1", "i-2"] and order == ["tiny", "other"]
        assert ctx.queue_s > 0.01 and queues.rooms == {} and not queues.waiting

    asyncio.run(main())


@pytest.mark.parametrize("leaves", ["timeout", "disconnect"])
def test_in_order_an_older_waiter_leaving_lets_the_ones_behind_it_go(leaves: str) -> None:
    async def main() -> None:
        routes, queues = in_order_parts(timeout_s=0.2 if leaves == "timeout" else 5.0)
        routes.update([TINY_LOADING, OTHER_READY], KNOWN)
        _, client, older = await waiting(queues, routes, "tiny")
        await asyncio.sleep(0.01)
        _, _, younger = await turn(queues, routes, "other")
        await asyncio.sleep(0.05)
        assert not younger.done()
        if leaves == "disconnect":
            client.leave()
        with pytest.raises((GatewayError, asyncio.CancelledError)):
            await older
        # Nothing changed in the route table: the leaver itself woke the other rooms.
        assert (await asyncio.wait_for(younger, 1.0)).instance_id == "i-2"
        assert queues.rooms == {}

    asyncio.run(main())


@pytest.mark.parametrize("in_order", [True, False])
def test_a_model_ready_first_goes_first_only_out_of_order(in_order: bool) -> None:
    async def main() -> None:
        routes, queues = in_order_parts(in_order)
        routes.update([TINY_LOADING, OTHER_LOADING], KNOWN)
        _, _, older = await waiting(queues, routes, "tiny")
        await asyncio.sleep(0.01)
        _, _, younger = await waiting(queues, routes, "other")
        _, _, same = await waiting(queues, routes, "other")  # no gate between the same model
        routes.update([TINY_LOADING, OTHER_READY], KNOWN)
        await asyncio.sleep(0.02)
        assert younger.done() == same.done() == (not in_order)
        routes.update([TINY_READY, OTHER_READY], KNOWN)
        await asyncio.wait_for(asyncio.gather(older, younger, same), 1.0)
        assert queues.rooms == {}

    asyncio.run(main())


def test_in_order_a_request_with_nothing_older_for_another_model_goes_at_once() -> None:
    async def main() -> None:
        routes, queues = in_order_parts()
        routes.update([TINY_READY, OTHER_LOADING], KNOWN)
        _, _, older = await waiting(queues, routes, "other")
        routes.update([TINY_READY, OTHER_READY], KNOWN)  # wakes it; it has not run yet
        task = asyncio.current_task()
        assert task is not None
        ctx = RequestContext(task, CHAT, 0.0, 0.0, None)
        ctx.tenant = TENANT
        # Only requests for the same model wait: this one goes without entering a room.
        assert queues.waiting and queues.counts() == {"other": 1}
        got = await queues.wait_turn(ctx, "other", OTHER_READY, Client().receive, None)
        assert got is OTHER_READY and ctx.queue_s == 0.0 and queues.counts() == {"other": 1}
        assert (await older).instance_id == "i-2"
        assert queues.rooms == {}

    asyncio.run(main())


# -- a recipe's own queue_depth and queue_timeout_s ----------------------------------------


def recipe(rid: str, **kw: Any) -> Recipe:
    return Recipe.model_validate(
        {"id": rid, "backend": "vllm", "model": "org/none", "served_model_name": rid, **kw}
    )


def rules_parts(rules: QueueRules) -> tuple[RouteTable, ModelQueues]:
    routes = RouteTable()
    known = {"tiny": "tiny", "tiny-alias": "tiny", "other": "other"}
    starting = [
        Upstream("i-1", "tiny", "127.0.0.1", 1, "starting", ("tiny", "tiny-alias")),
        Upstream("i-2", "other", "127.0.0.1", 2, "starting", ("other",)),
    ]
    routes.update(starting, known)
    limiter = Limiter(global_max_concurrent=100)
    queues = ModelQueues(
        routes=routes, limiter=limiter, metrics=GatewayMetrics(), depth=4, timeout_s=5.0,
        rules=rules,
    )  # fmt: skip
    return routes, queues


def test_a_recipes_queue_depth_bounds_its_rooms_and_others_keep_the_gateways() -> None:
    async def main() -> None:
        rules = QueueRules([recipe("tiny", aliases=["tiny-alias"], queue_depth=1)])
        assert rules.get("tiny-alias") == RoomRule("tiny", 1, None) and rules.get("x") is None
        routes, queues = rules_parts(rules)
        _, _, first = await waiting(queues, routes, "tiny")
        _, _, second = await waiting(queues, routes, "tiny")
        with pytest.raises(GatewayError) as info:
            await second
        assert (info.value.http_status, info.value.code) == (503, "queue_full")
        assert "1 requests already wait for model 'tiny'" in info.value.message
        assert info.value.retry_after is not None and info.value.retry_after > 0
        # The alias is the same recipe: its room has the recipe's depth too.
        _, _, alias = await waiting(queues, routes, "tiny-alias")
        _, _, alias2 = await waiting(queues, routes, "tiny-alias")
        with pytest.raises(GatewayError, match="1 requests already wait for model 'tiny-alias'"):
            await alias2
        # Another model keeps gateway.queue_depth (4).
        others = [(await waiting(queues, routes, "other"))[2] for _ in range(4)]
        _, _, fifth = await waiting(queues, routes, "other")
        with pytest.raises(GatewayError, match="4 requests already wait"):
            await fifth
        assert queues.counts() == {"tiny": 1, "tiny-alias": 1, "other": 4}
        routes.update(
            [
                Upstream("i-1", "tiny", "127.0.0.1", 1, "ready", ("tiny", "tiny-alias")),
                Upstream("i-2", "other", "127.0.0.1", 2, "ready", ("other",)),
            ],
            {},
        )
        await asyncio.wait_for(asyncio.gather(first, alias, *others), 1.0)
        assert queues.rooms == {}

    asyncio.run(main())


def test_a_recipes_queue_timeout_is_its_waiters_and_recipes_changed_refreshes_it() -> None:
    async def main() -> None:
        rules = QueueRules([recipe("tiny", queue_timeout_s=0.1)])
        routes, queues = rules_parts(rules)
        ctx, _, short = await waiting(queues, routes, "tiny")
        _, _, long = await waiting(queues, routes, "other")
        with pytest.raises(GatewayError) as info:
            await short
        assert (info.value.http_status, info.value.code) == (503, "model_loading")
        assert "within 0.1 s" in info.value.message and info.value.retry_after == 5.0
        assert 0.08 <= ctx.queue_s < 2.0
        assert not long.done()  # gateway.queue_timeout_s (5 s) for the other model
        # The recipes on disk change: a new room takes the new values (none: the gateway's).
        rules.recipes_changed([recipe("other", queue_timeout_s=0.1), recipe("tiny")])
        assert rules.get("tiny") == RoomRule("tiny") and rules.get("other") == RoomRule(
            "other", None, 0.1
        )
        _, _, tiny = await waiting(queues, routes, "tiny")
        await asyncio.sleep(0.2)
        assert not tiny.done() and not long.done()  # "other"'s room was opened before
        for t in (tiny, long):
            t.cancel()
        await asyncio.gather(tiny, long, return_exceptions=True)
        _, _, other = await waiting(queues, routes, "other")  # a new room: 0.1 s now
        with pytest.raises(GatewayError, match=r"within 0\.1 s"):
            await other
        assert queues.rooms == {}

    asyncio.run(main())


def test_in_order_a_served_name_and_its_alias_do_not_hold_each_other_back() -> None:
    async def main() -> None:
        rules = QueueRules([recipe("tiny", aliases=["tiny-alias"])])
        routes, queues = rules_parts(rules)
        queues = ModelQueues(
            routes=routes, limiter=Limiter(global_max_concurrent=9), metrics=GatewayMetrics(),
            in_order=True, rules=rules,
        )  # fmt: skip
        _, _, by_name = await waiting(queues, routes, "tiny")
        _, _, by_alias = await waiting(queues, routes, "tiny-alias")
        _, _, other = await waiting(queues, routes, "other")
        ready = Upstream("i-1", "tiny", "127.0.0.1", 1, "ready", ("tiny", "tiny-alias"))
        routes.update([ready, Upstream("i-2", "other", "127.0.0.1", 2, "starting", ("other",))], {})
        got = await asyncio.wait_for(asyncio.gather(by_name, by_alias), 1.0)
        assert {u.instance_id for u in got} == {"i-1"}
        assert not other.done()
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)

    asyncio.run(main())
