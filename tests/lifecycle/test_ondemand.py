"""The on-demand orchestrator (``studioctl.lifecycle.ondemand``) with a recording fake
supervisor and fake waiting rooms: which launches and evictions it asks for, the events and
counters of each decision, the waiters it ends when a load fails. The real scheduler, the
real event bus and real recipes; no daemon, no engine (the daemon test is
``tests/gateway_daemon/test_ondemand_daemon.py``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from studioctl.errors import ConflictError, GatewayError
from studioctl.gpu import GpuSnapshot, HostGpus
from studioctl.lifecycle.events import Event, EventBus
from studioctl.lifecycle.ondemand import EVENT_KINDS, OnDemand
from studioctl.recipes import Recipe
from studioctl.settings import Settings, load_settings
from studioctl.states import State


def recipe(rid: str, **kw: Any) -> Recipe:
    return Recipe.model_validate(
        {"id": rid, "backend": "vllm", "model": "org/none", "served_model_name": rid, **kw}
    )


@dataclass
class FakeInstance:
    """The fields of ``lifecycle.runtime.Instance`` the orchestrator reads."""

    id: str
    recipe: Recipe
    state: State = State.STARTING
    port: int = 8100
    gpus: list[int] = field(default_factory=list)
    ready_at: float | None = None
    started_at: float | None = None
    ever_ready: bool = False
    reason: str = ""
    vram_bytes: int | None = None


class FakeEngines:
    """A supervisor that records what it is asked and lists what it "started"."""

    def __init__(
        self, recipes: dict[str, Recipe], clock: Callable[[], float], fail: Exception | None
    ) -> None:
        self.recipes = recipes
        self.clock = clock
        self.fail = fail
        self.instances: dict[str, FakeInstance] = {}
        self.launches: list[str] = []
        self.gpus: list[list[int] | None] = []
        self.evictions: list[tuple[str, float]] = []
        self.ids = itertools.count(1)

    def list(self, *, include_stopped: bool = False) -> list[Any]:
        return [i for i in self.instances.values() if include_stopped or i.state != State.STOPPED]

    async def launch(
        self, recipe_id: str, *, gpus: list[int] | None, wait: bool, lock_wait: bool
    ) -> Any:
        assert wait is False  # the gateway's rooms wait, not the planner
        self.launches.append(recipe_id)
        self.gpus.append(gpus)
        await asyncio.sleep(0)  # as the real one: a lock, a thread hop
        if self.fail is not None:
            raise self.fail
        rid = f"{recipe_id}-{next(self.ids)}"
        inst = FakeInstance(rid, self.recipes[recipe_id], started_at=self.clock())
        self.instances[inst.id] = inst
        return inst

    async def evict(self, target: str, *, drain_timeout: float, lock_wait: bool) -> Any:
        self.evictions.append((target, drain_timeout))
        self.instances[target].state = State.STOPPED
        return None

    def ready(self, iid: str, at: float) -> None:
        inst = self.instances[iid]
        inst.state, inst.ready_at, inst.ever_ready = State.READY, at, True


class FakeQueues:
    """Waiting rooms: rows as ``ModelQueues.listing()`` gives them; ``fail`` recorded."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.failed: list[tuple[str, GatewayError]] = []

    def add(self, model: str, n: int = 1, waited_ms: float = 0.0, queue: str = "loading") -> None:
        for _ in range(n):
            self.rows.append(
                {
                    "request_id": f"q-{len(self.rows)}",
                    "tenant": "t",
                    "model": model,
                    "waited_ms": waited_ms,
                    "queue": queue,
                }
            )

    def listing(self, model: str | None = None) -> dict[str, Any]:
        return {"object": "list", "counts": {}, "data": list(self.rows)}

    def fail(self, model: str, error: GatewayError) -> int:
        gone = [r for r in self.rows if r["model"] == model]
        self.rows = [r for r in self.rows if r["model"] != model]
        self.failed.append((model, error))
        return len(gone)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class World:
    od: OnDemand
    engines: FakeEngines
    queues: FakeQueues
    events: list[Event]
    clock: Clock
    listeners: list[Callable[[Sequence[Any]], None]]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def world(
    recipes: Sequence[Recipe],
    env: dict[str, str] | None = None,
    *,
    fail: Exception | None = None,
    inflight: dict[str, int] | None = None,
    host_gpus: Callable[[], HostGpus | None] = lambda: None,
) -> World:
    settings: Settings = load_settings(env=env or {})
    clock = Clock()
    engines = FakeEngines({r.id: r for r in recipes}, clock, fail)
    queues = FakeQueues()
    events: list[Event] = []

    class Store:
        def append(self, kind: str, message: str, **kw: Any) -> int:
            ids = (kw.get("instance_id"), kw.get("recipe_id"))
            ts = kw.get("ts") or 0.0
            events.append(Event(len(events) + 1, ts, kind, message, *ids, kw.get("data") or {}))
            return len(events)

    listeners: list[Callable[[Sequence[Any]], None]] = []
    busy = inflight if inflight is not None else {}
    od = OnDemand(
        settings=settings,
        engines=engines,
        queues=queues,
        bus=EventBus(Store(), clock=clock),
        recipes=lambda: list(recipes),
        subscribe=listeners.append,
        inflight=lambda iid: busy.get(iid, 0),
        last_activity=lambda iid: None,
        clock=clock,
        retry_failed_s=30.0,
        host_gpus=host_gpus,
    )
    return World(od, engines, queues, events, clock, listeners)


async def settle(od: OnDemand) -> None:
    """Let the launch and evict tasks the last step started run to their end."""
    while od.ops:
        await asyncio.gather(*list(od.ops), return_exceptions=True)


# -- want ----------------------------------------------------------------------------------


def test_want_answers_for_on_demand_names_and_aliases_only() -> None:
    async def main() -> None:
        w = world(
            [
                recipe("a", aliases=["alias-a"]),
                recipe("manual", on_demand=False),
                recipe("forced", on_demand=True),
            ],
            {"STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true"},
        )
        await w.od.rescan()
        assert w.od.want("a") and w.od.want("alias-a") and w.od.want("forced")
        assert not w.od.want("manual")  # on_demand: false keeps model_not_running
        assert not w.od.want("nobody")  # 404 model_not_found stays
        assert w.listeners == [w.od.instances_changed]  # it hears of every instance change

    asyncio.run(main())


def test_load_on_demand_off_leaves_only_recipes_that_ask_for_it() -> None:
    async def main() -> None:
        w = world(
            [recipe("a"), recipe("forced", on_demand=True)],
            {"STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "false"},
        )
        await w.od.rescan()
        assert not w.od.want("a")
        assert w.od.want("forced")

    asyncio.run(main())


# -- load ----------------------------------------------------------------------------------


def test_fifty_waiters_for_a_cold_model_make_exactly_one_launch() -> None:
    async def main() -> None:
        w = world([recipe("a", aliases=["alias-a"])])
        await w.od.rescan()
        w.queues.add("a", 30)
        w.queues.add("alias-a", 20)  # an alias waits in its own room: the same recipe
        actions = w.od.step()
        assert [type(a).__name__ for a in actions] == ["Load"]
        # Planned again before the launch returned, and after: never a second launch.
        w.od.step()
        await settle(w.od)
        w.od.step()
        w.od.step()
        assert w.engines.launches == ["a"]
        # One queued event while it loads (the reason is said once, whatever its id).
        assert w.kinds() == ["load_requested", "queued", "placed"]
        placed = w.events[2]
        assert placed.instance_id == "a-1" and placed.data["port"] == 8100
        assert "starting" in w.events[1].data["reason"]
        w.engines.ready("a-1", w.clock.t + 2.5)
        w.clock.t += 2.5
        assert [type(a).__name__ for a in w.od.step()] == ["Dispatch"]
        assert w.engines.launches == ["a"]
        # Its load time is learned: the scheduler's turns start early by it.
        assert w.od.load_s == {"a": 2.5}
        assert w.od.state(w.clock.t).catalog["a"].load_s == 2.5
        lines = w.od.metrics_lines()
        assert 'studioctl_ondemand_events_total{kind="load_requested"} 1.0' in lines
        assert 'studioctl_ondemand_events_total{kind="placed"} 1.0' in lines
        assert 'studioctl_ondemand_events_total{kind="evicted_for"} 0.0' in lines
        assert set(EVENT_KINDS) <= set(w.od.counts)

    asyncio.run(main())


def test_a_want_with_nobody_waiting_still_loads_a_cold_model() -> None:
    async def main() -> None:
        w = world([recipe("a")])
        await w.od.rescan()
        assert w.od.want("a")  # queue_depth 0: the request was refused queue_full
        w.od.step()
        await settle(w.od)
        assert w.engines.launches == ["a"]
        w.clock.t += 5  # the want is old: nothing more is asked for
        w.od.step()
        assert w.od.wanted == {} and w.engines.launches == ["a"]

    asyncio.run(main())


def test_a_failed_launch_ends_the_waiters_of_every_name_at_once() -> None:
    async def main() -> None:
        w = world(
            [recipe("a", aliases=["alias-a"])],
            fail=ConflictError("port 8100 is taken", code="port_taken"),
        )
        await w.od.rescan()
        w.queues.add("a", 3)
        w.queues.add("alias-a", 2)
        w.od.step()
        await settle(w.od)
        assert [m for m, _ in w.queues.failed] == ["a", "alias-a"]
        err = w.queues.failed[0][1]
        assert (err.http_status, err.code) == (503, "model_load_failed")
        assert "port 8100 is taken" in err.message and err.retry_after
        assert w.kinds() == ["load_requested", "load_failed"]
        assert w.events[-1].data["ended"] == 5
        # For retry_failed_s, requests are refused at once (no launch loop).
        assert not w.od.want("a")
        w.clock.t += 31
        assert w.od.want("a")

    asyncio.run(main())


def test_a_launch_that_finds_the_model_launched_by_hand_ends_nobody() -> None:
    async def main() -> None:
        w = world([recipe("a")], fail=ConflictError("a is already running", code="already_running"))
        await w.od.rescan()
        w.queues.add("a", 2)
        w.od.step()
        await settle(w.od)
        assert w.queues.failed == [] and "load_failed" not in w.kinds()
        assert w.od.want("a")

    asyncio.run(main())


def test_an_instance_that_fails_before_ready_ends_its_waiters() -> None:
    async def main() -> None:
        w = world([recipe("a")])
        await w.od.rescan()
        w.queues.add("a", 4)
        w.od.step()
        await settle(w.od)
        inst = w.engines.instances["a-1"]
        inst.state, inst.reason = State.FAILED, "readiness timeout after 30s"
        w.od.step()
        assert [m for m, _ in w.queues.failed] == ["a"]
        assert "readiness timeout" in w.queues.failed[0][1].message
        assert w.engines.launches == ["a"]  # not launched again for the same requests
        w.queues.add("a", 2)  # ended requests leave their room a moment later
        w.od.step()
        await settle(w.od)
        assert w.engines.launches == ["a"]

    asyncio.run(main())


# -- swap ----------------------------------------------------------------------------------

SMALL_HOST = {
    "STUDIOCTL_HOST_CAPACITY_GB": "10",
    "STUDIOCTL_SCHEDULER_MIN_RESIDENT_S": "5",
    "STUDIOCTL_SCHEDULER_MAX_WAIT_S": "20",
    "STUDIOCTL_GATEWAY_DRAIN_TIMEOUT_S": "7",
}


def test_a_model_that_does_not_fit_evicts_the_idle_one_then_loads_and_says_swapped() -> None:
    async def main() -> None:
        w = world([recipe("a", vram_gb=6), recipe("b", vram_gb=6)], SMALL_HOST)
        await w.od.rescan()
        w.queues.add("a")
        w.od.step()
        await settle(w.od)
        w.engines.ready("a-1", w.clock.t)
        w.queues.rows.clear()  # served
        w.queues.add("b")
        # a was just loaded (min_resident_s): b waits, with a time to look again.
        assert [type(a).__name__ for a in w.od.step()] == ["Wait"]
        assert w.od.wake_at == pytest.approx(w.clock.t + 5)
        assert w.engines.evictions == []
        w.clock.t += 5
        w.od.step()
        await settle(w.od)
        assert w.engines.evictions == [("a-1", 7.0)]  # drain_timeout_s of the settings
        w.od.step()  # a is gone: b loads
        await settle(w.od)
        assert w.engines.launches == ["a", "b"]
        kinds = w.kinds()
        assert kinds.index("evicted_for") < kinds.index("swapped")
        swapped = w.events[kinds.index("swapped")]
        assert swapped.data["evicted"] == ["a-1"] and swapped.recipe_id == "b"
        evicted = w.events[kinds.index("evicted_for")]
        assert evicted.instance_id == "a-1" and "least recently used idle a" in evicted.message

    asyncio.run(main())


def test_a_busy_model_drains_only_once_the_other_starves() -> None:
    async def main() -> None:
        busy = {"a-1": 2}
        w = world([recipe("a", vram_gb=6), recipe("b", vram_gb=6)], SMALL_HOST, inflight=busy)
        await w.od.rescan()
        w.queues.add("a")
        w.od.step()
        await settle(w.od)
        w.engines.ready("a-1", w.clock.t - 100)
        w.queues.rows.clear()
        w.queues.add("b")
        w.od.step()
        queued = [e for e in w.events if e.kind == "queued"]
        assert "serving its own requests first" in queued[-1].data["reason"]
        w.od.step()  # the same reason is said once
        assert [e.kind for e in w.events].count("queued") == len(queued)
        w.queues.rows[0]["waited_ms"] = 21_000.0  # past max_wait_s
        w.od.step()
        await settle(w.od)
        evicted = [e for e in w.events if e.kind == "evicted_for"]
        assert evicted[0].data["drain"] is True and "max_wait_s" in evicted[0].data["reason"]

    asyncio.run(main())


def test_a_model_larger_than_the_host_ends_its_waiters_at_once() -> None:
    async def main() -> None:
        w = world([recipe("huge", vram_gb=12)], SMALL_HOST)
        await w.od.rescan()
        w.queues.add("huge", 3)
        w.od.step()
        assert w.engines.launches == []
        assert [m for m, _ in w.queues.failed] == ["huge"]
        assert "needs 12 GiB on GPU 0, which has 10 GiB" in w.queues.failed[0][1].message
        assert w.kinds() == ["load_failed"] and not w.od.want("huge")

    asyncio.run(main())


def test_the_pinned_model_is_never_evicted() -> None:
    async def main() -> None:
        w = world([recipe("a", vram_gb=6, pinned=True), recipe("b", vram_gb=6)], SMALL_HOST)
        await w.od.rescan()
        w.queues.add("a")
        w.od.step()
        await settle(w.od)
        w.engines.ready("a-1", w.clock.t - 1000)
        w.queues.rows.clear()
        w.queues.add("b", waited_ms=60_000.0)
        w.od.step()
        await settle(w.od)
        assert w.engines.evictions == [] and w.engines.launches == ["a"]
        assert "does not fit" in w.events[-1].data["reason"]

    asyncio.run(main())


# -- GPUs --------------------------------------------------------------------------------

GIB = 1024**3


def two_gpus(gb: int = 24) -> HostGpus:
    gpus = tuple(GpuSnapshot(index=i, mem_total_bytes=gb * GIB) for i in (0, 1))
    return HostGpus(True, None, "550", "12.4", gpus, 0.0)


def test_on_a_gpu_host_the_launch_gets_the_gpus_it_was_fitted_on() -> None:
    async def main() -> None:
        reading: list[HostGpus | None] = [None]  # the GPU reader has not read yet
        w = world(
            [recipe("a", vram_gb=20), recipe("b", vram_gb=20, gpus=[1])],
            host_gpus=lambda: reading[0],
        )
        await w.od.rescan()
        assert not w.od.stale()
        reading[0] = two_gpus()
        assert w.od.stale()  # the first reading came: needs and capacity read again
        await w.od.rescan()
        assert w.od.has_gpus and w.od.catalog.loadables["a"].gpus == (0,)
        w.queues.add("a")
        w.queues.add("b")
        w.od.step()
        await settle(w.od)
        assert sorted(zip(w.engines.launches, w.engines.gpus, strict=True)) == [
            ("a", [0]),
            ("b", [1]),
        ]

    asyncio.run(main())


def test_without_gpus_the_launch_places_as_the_recipe_says() -> None:
    async def main() -> None:
        w = world([recipe("a")])
        await w.od.rescan()
        w.queues.add("a")
        w.od.step()
        await settle(w.od)
        assert w.engines.gpus == [None]

    asyncio.run(main())


# -- the task ------------------------------------------------------------------------------


def test_the_task_plans_on_want_and_on_instance_changes() -> None:
    async def main() -> None:
        w = world([recipe("a")])
        w.od.clock = time.time  # the real clock: the task sleeps on it
        await w.od.start()
        try:
            w.queues.add("a", 2)
            assert w.od.want("a")  # wakes the task
            for _ in range(200):
                if w.engines.instances:
                    break
                await asyncio.sleep(0.01)
            assert w.engines.launches == ["a"]
            w.engines.ready("a-1", time.time())
            w.listeners[0](w.engines.list())  # the hooks: an instance changed
            await asyncio.sleep(0.05)
            assert "a-1" not in w.od.loading
        finally:
            await w.od.close()
        assert w.od.task is not None and w.od.task.done()

    asyncio.run(main())


def test_close_ends_the_planner_at_once_even_when_a_kick_comes_with_the_cancel() -> None:
    """A kick (a launch just ended, a want) set in the same loop turn as close() must not
    eat the cancel: the planner task would otherwise sleep on for up to RESCAN_S."""

    async def main() -> None:
        w = world([recipe("a")], {"STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true"})
        w.od.clock = time.time
        for _ in range(50):
            await w.od.start()
            await asyncio.sleep(0)  # the task is waiting for a kick
            w.od._kick.set()
            started = time.monotonic()
            await asyncio.wait_for(w.od.close(), 5.0)
            assert time.monotonic() - started < 1.0
            assert w.od.task is not None and w.od.task.done()

    asyncio.run(main())


def test_a_model_evicted_just_after_its_want_was_met_is_not_loaded_again() -> None:
    """A want keeps asking for WANTED_S only while its model is not on its way: once loaded,
    an evict (``unload``, a bench) a second later must not bring it back."""

    async def main() -> None:
        w = world([recipe("a")])
        await w.od.rescan()
        assert w.od.want("a")
        w.od.step()
        await settle(w.od)
        w.engines.ready("a-1", w.clock.t + 0.5)
        w.clock.t += 0.5
        w.od.step()  # sees it ready: the want is met
        await w.engines.evict("a-1", drain_timeout=0, lock_wait=False)
        w.clock.t += 0.5  # well within WANTED_S of the want
        assert [type(a).__name__ for a in w.od.step()] == []
        await settle(w.od)
        assert w.engines.launches == ["a"]

    asyncio.run(main())
