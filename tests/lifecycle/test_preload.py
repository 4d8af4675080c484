"""``OnDemand.preload`` (``studioctl preload``) with the orchestrator's planner task running
on the real scheduler, the real event bus and real recipes, and the recording fake
supervisor of ``test_ondemand``: one launch however many preloads and requests ask at once,
the answer once ready, and each way it can end otherwise (unknown, not on demand, never
fits, failed with its reason, timed out)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lifecycle.test_ondemand import SMALL_HOST, World, recipe, world
from studioctl.errors import (
    ConflictError,
    EngineFailed,
    NotFoundError,
    OperationTimeout,
    UsageError,
)
from studioctl.states import State

pytestmark = pytest.mark.timeout(30)

ON = {"STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true"}


def run(w: World, body: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        w.od.clock = time.time  # the planner task sleeps on the real clock
        await w.od.start()
        try:
            await body(w)
        finally:
            await w.od.close()

    asyncio.run(main())


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def make_ready(w: World, iid: str) -> None:
    """The engine answers its readiness probe: ready, and the hooks say so."""
    await until(lambda: iid in w.engines.instances)
    w.engines.ready(iid, time.time())
    for listener in w.listeners:
        listener(w.engines.list())


def test_preloads_and_requests_at_once_make_one_launch_and_answer_when_ready() -> None:
    async def body(w: World) -> None:
        t0 = time.monotonic()
        preloads = [asyncio.create_task(w.od.preload(name)) for name in ("a", "alias-a", "a")]
        w.queues.add("a", 5)  # requests waiting in the gateway's room meanwhile
        assert w.od.want("a")
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in preloads)  # still starting: nobody answered
        await make_ready(w, "a-1")
        answers: list[dict[str, Any]] = await asyncio.gather(*preloads)
        assert w.engines.launches == ["a"]
        for got, name in zip(answers, ("a", "alias-a", "a"), strict=True):
            assert got["model"] == name and got["recipe"] == "a"
            assert (got["state"], got["instance"]) == ("ready", "a-1")
            assert 0.3 <= got["seconds"] <= time.monotonic() - t0 + 0.001  # rounded to ms
            assert "already" not in got
        assert [e.kind for e in w.events].count("load_requested") == 1

    run(world([recipe("a", aliases=["alias-a"])], ON), body)


def test_a_ready_model_is_already_ready_and_nothing_is_launched() -> None:
    async def body(w: World) -> None:
        first = asyncio.create_task(w.od.preload("a"))
        await make_ready(w, "a-1")
        await first
        again = await w.od.preload("a")
        assert again["already"] == "ready" and again["instance"] == "a-1"
        assert w.engines.launches == ["a"]

    run(world([recipe("a")], ON), body)


def test_unknown_not_on_demand_and_never_fits_are_refused_with_the_reason() -> None:
    async def body(w: World) -> None:
        with pytest.raises(NotFoundError, match="nobody"):
            await w.od.preload("nobody")
        with pytest.raises(UsageError, match="not loaded on demand") as info:
            await w.od.preload("manual")
        assert info.value.hint == "studioctl launch manual"
        with pytest.raises(ConflictError, match="needs 12 GiB on GPU 0, which has 10 GiB"):
            await w.od.preload("huge")
        assert w.engines.launches == []

    recipes = [recipe("manual", on_demand=False), recipe("huge", vram_gb=12)]
    run(world(recipes, {**ON, **SMALL_HOST}), body)


def test_a_recipe_added_since_the_last_scan_is_found() -> None:
    recipes = [recipe("a")]

    async def body(w: World) -> None:
        recipes.append(recipe("late"))  # written to a recipe folder after the last scan
        w.engines.recipes["late"] = recipes[-1]
        task = asyncio.create_task(w.od.preload("late"))
        await make_ready(w, "late-1")
        assert (await task)["state"] == "ready"

    run(world(recipes, ON), body)


def test_a_failed_load_ends_the_preload_with_its_reason() -> None:
    async def body(w: World) -> None:
        with pytest.raises(EngineFailed, match="port 8100 is taken") as info:
            await w.od.preload("a")
        assert info.value.hint == "studioctl logs a"
        assert w.engines.launches == ["a"]
        # Asked for by hand again: the recent failure does not hold it back.
        with pytest.raises(EngineFailed, match="port 8100 is taken"):
            await w.od.preload("a")
        assert w.engines.launches == ["a", "a"]

    run(world([recipe("a")], ON, fail=ConflictError("port 8100 is taken")), body)


def test_an_instance_that_fails_while_loading_ends_the_preload() -> None:
    async def body(w: World) -> None:
        task = asyncio.create_task(w.od.preload("a"))
        await until(lambda: "a-1" in w.engines.instances)
        inst = w.engines.instances["a-1"]
        inst.state, inst.reason = State.FAILED, "exited with code 1 before ready"
        for listener in w.listeners:
            listener(w.engines.list())
        with pytest.raises(EngineFailed, match="exited with code 1 before ready"):
            await asyncio.wait_for(task, 5)

    run(world([recipe("a")], ON), body)


def test_the_timeout_ends_the_wait_and_says_the_state() -> None:
    async def body(w: World) -> None:
        t0 = time.monotonic()
        with pytest.raises(OperationTimeout, match=r"not ready within 0.5s \(it is starting\)"):
            await w.od.preload("a", timeout=0.5)
        assert 0.5 <= time.monotonic() - t0 < 3
        assert w.engines.launches == ["a"]  # the load goes on

    run(world([recipe("a")], ON), body)


def test_no_wait_answers_at_once_and_keeps_asking_until_it_loads() -> None:
    async def body(w: World) -> None:
        got = await w.od.preload("a", wait=False)
        assert got["recipe"] == "a" and got["state"] in ("requested", "starting")
        # The want is renewed in the background well past its lifetime (WANTED_S): a
        # load that must wait its turn is still made.
        await make_ready(w, "a-1")
        await until(lambda: not w.od.ops)
        assert w.engines.launches == ["a"]

    run(world([recipe("a")], ON), body)
