"""Requests drive the engines: the orchestrator between the gateway's waiting rooms, the
scheduler and the supervisor (issue 11).

A request for a recipe that is not running asks :meth:`OnDemand.want` (the gateway's
``want`` hook, on the event loop): for a recipe loaded on demand (its ``on_demand``, else
``gateway.load_on_demand``) it answers True, so the request waits in its model's room, and
wakes the orchestrator's task. That task, on every change (a ``want``, an instance change
through the supervisor's hooks, the time a ``Wait`` asked for, and a short tick while
anything waits, since a request that ends changes nothing the hooks announce), builds the
scheduler's state (``demand``), calls ``studioctl.scheduler.plan`` and carries out the
actions through the supervisor's public API:

- ``Load``: ``Supervisor.launch(recipe, wait=False)``; until it returns the recipe counts as
  starting (the scheduler's contract: exactly one launch per model). A launch that fails,
  or an instance that ends failed or stopped before it was ever ready, ends that model's
  waiters at once (503 ``model_load_failed``) and the model is not loaded again on demand
  for ``retry_failed_s`` (its requests answer ``model_not_running`` meanwhile);
- ``Evict``: ``Supervisor.evict(instance, drain_timeout=...)``: in-flight requests finish;
  until the drain begins the instance counts as draining;
- ``Dispatch``: nothing: the route table wakes the rooms the moment a model is ready;
- ``Wait``: a ``queued`` event (once per model and reason), and a wake-up at ``until``.

Every decision is an event with its reason (``load_requested``, ``placed``, ``queued``,
``evicted_for``, ``swapped``, ``load_failed``) and a counter in ``/metrics``.

The gateway is above this layer: it is reached only through ``QueueView``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from studioctl import promtext
from studioctl.errors import GatewayError, StudioError
from studioctl.lifecycle import demand, memory, preload
from studioctl.scheduler import (
    Action,
    Dispatch,
    Evict,
    Load,
    Policy,
    Queued,
    Resident,
    SchedulerState,
    Wait,
    fifo_plan,
    plan,
)

if TYPE_CHECKING:
    from studioctl.gpu import HostGpus
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.operations import EvictReport
    from studioctl.lifecycle.runtime import Instance
    from studioctl.recipes import Recipe
    from studioctl.settings import Settings

log = logging.getLogger("studioctl.ondemand")

#: The event kinds (and the labels of the /metrics counter), in the order of a swap.
EVENT_KINDS = ("load_requested", "queued", "evicted_for", "placed", "swapped", "load_failed")
#: While requests wait, plan at least this often: a request that ends (an instance no
#: longer busy) is announced by nothing else.
TICK_S = 1.0
#: Recipes are read again this often (added or edited ones become loadable), as the
#: gateway's housekeeping does for its route table.
RESCAN_S = 60.0
RETRY_FAILED_S = 30.0
#: How long a want with no request left waiting still asks for its model (a refused
#: client retries after the Retry-After of 503 queue_full).
WANTED_S = 2 * TICK_S
LOAD_FAILED_RETRY_AFTER_S = 5.0


class QueueView(Protocol):
    """What the orchestrator needs of the gateway's waiting rooms (``ModelQueues``)."""

    def listing(self, model: str | None = None) -> Mapping[str, Any]: ...

    def fail(self, model: str, error: GatewayError) -> int: ...


class Engines(Protocol):
    """What the orchestrator needs of the supervisor."""

    def list(self, *, include_stopped: bool = False) -> list[Instance]: ...

    async def launch(
        self, recipe_id: str, *, gpus: builtins.list[int] | None, wait: bool, lock_wait: bool
    ) -> Instance: ...

    async def evict(self, target: str, *, drain_timeout: float, lock_wait: bool) -> EvictReport: ...


class OnDemand:
    def __init__(
        self,
        *,
        settings: Settings,
        engines: Engines,
        queues: QueueView,
        bus: EventBus,
        recipes: Callable[[], Sequence[Recipe]],
        subscribe: Callable[[Callable[[Sequence[Instance]], None]], None],
        inflight: Callable[[str], int],
        last_activity: Callable[[str], float | None],
        host_gpus: Callable[[], HostGpus | None] = lambda: None,
        learned_gb: Callable[[Recipe], float | None] = lambda r: None,
        clock: Callable[[], float] = time.time,
        retry_failed_s: float = RETRY_FAILED_S,
    ) -> None:
        """``recipes``: reads the recipe folders (called in a thread); ``subscribe``: how
        to hear of every instance change (the daemon's hooks); ``inflight`` and
        ``last_activity``: the gateway's answers per instance (wall clock); ``host_gpus``:
        the GPU reader's last reading (None: no GPUs, ``host.capacity_gb`` applies);
        ``learned_gb``: a recipe's peak memory in its last run."""
        self.settings = settings
        self.engines = engines
        self.queues = queues
        self.bus = bus
        self.read_recipes = recipes
        self.inflight = inflight
        self.last_activity = last_activity
        self.host_gpus = host_gpus
        self.learned_gb = learned_gb
        self.clock = clock
        self.retry_failed_s = retry_failed_s
        self.catalog = demand.Catalog.empty()
        self.policy = Policy()
        # scheduler.policy "fifo": the strict FIFO baseline (benchmarks), else the scheduler.
        self.planner = fifo_plan if settings.scheduler.policy == "fifo" else plan
        self.counts = dict.fromkeys(EVENT_KINDS, 0)
        self.launching: set[str] = set()  # recipe ids: launch() not returned yet
        self.evicting: set[str] = set()  # instance ids: evict() not returned yet
        self.loading: dict[str, str] = {}  # instance id → recipe id, launched, not ready yet
        self.failed: dict[str, float] = {}  # recipe id → when its on-demand load failed
        self.swaps: dict[str, list[str]] = {}  # recipe id → instances evicted for it
        # recipe id → seconds its last on-demand load took (the scheduler starts turns early
        # by it, so a model starving behind others is still served about max_wait_s late)
        self.load_s: dict[str, float] = {}
        self.said: dict[str, str] = {}  # model → the last queued reason published
        self.wanted: dict[str, float] = {}  # recipe id → its last want (time)
        self.wake_at: float | None = None
        self.scanned_at: float | None = None
        self.scanned_for: tuple[dict[int, float], bool] = ({}, False)
        self._kick = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.ops: set[asyncio.Task[None]] = set()
        subscribe(self.instances_changed)

    # -- what the gateway and the supervisor call ---------------------------------------

    def want(self, model: str, ctx: object = None) -> bool:
        """The gateway's ``want`` hook: True when a request for ``model`` (a served name or
        alias) should wait while this loads it; wakes the planner."""
        rid = self.catalog.on_demand(model)
        if rid is None:
            return False
        if self.cooling(rid):
            return False
        self.wanted[rid] = self.clock()
        self._kick.set()
        return True

    def cooling(self, rid: str) -> bool:
        """Whether ``rid``'s on-demand load failed within ``retry_failed_s``."""
        failed = self.failed.get(rid)
        return failed is not None and self.clock() - failed < self.retry_failed_s

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        self._kick.set()

    def metrics_lines(self) -> str:
        """``studioctl_ondemand_events_total{kind}``: the decisions taken, by kind."""
        out: list[str] = []
        promtext.family(
            out,
            "studioctl_ondemand_events_total",
            "counter",
            "On-demand decisions (load_requested, queued, evicted_for, placed, swapped...).",
            [({"kind": k}, float(n)) for k, n in self.counts.items()],
        )
        return "\n".join(out) + "\n"

    # -- the task -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the recipes, then plan in the background until :meth:`close`."""
        await self.rescan()
        self.task = asyncio.create_task(self._run(), name="ondemand")

    async def close(self) -> None:
        tasks = [t for t in (self.task, *self.ops) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def capacity(self) -> tuple[dict[int, float], bool]:
        """GiB per GPU (``host.capacity_gb`` on pseudo GPU 0 without GPUs), and whether
        the host has GPUs."""
        hg = self.host_gpus()
        has_gpus = hg is not None and hg.available and bool(hg.gpus)
        return memory.capacity_gb(hg, self.settings), has_gpus

    async def rescan(self) -> None:
        """Read the recipes and their memory needs again (needs depend on the GPUs)."""
        recipes = list(await asyncio.to_thread(self.read_recipes))
        capacity, has_gpus = self.capacity()
        self.catalog = await asyncio.to_thread(
            demand.build_catalog,
            recipes,
            load_on_demand=self.settings.gateway.load_on_demand,
            capacity=capacity,
            has_gpus=has_gpus,
            learned_gb=self.learned_gb,
        )
        self.policy = demand.policy(self.settings, recipes)
        self.scanned_at = self.clock()
        self.scanned_for = (capacity, has_gpus)

    def stale(self) -> bool:
        """The recipes are read again every RESCAN_S, and as soon as the GPUs read differ
        (the GPU reader's first reading comes after start-up)."""
        if self.scanned_at is None or self.clock() - self.scanned_at >= RESCAN_S:
            return True
        return self.capacity() != self.scanned_for

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # arrives together with a kick, and close() would then wait up to RESCAN_S.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_s()):
                    await self._kick.wait()
            self._kick.clear()
            try:
                if self.stale():
                    await self.rescan()
                self.step()
            except Exception:  # one bad plan must not end on-demand loading
                log.exception("on-demand planning failed")

    def _sleep_s(self) -> float:
        now = self.clock()
        sleep = TICK_S if self.said or self.launching or self.loading else RESCAN_S
        if self.wake_at is not None:
            sleep = min(sleep, self.wake_at - now)
        return max(0.01, sleep)

    # -- one plan -------------------------------------------------------------------------

    @property
    def has_gpus(self) -> bool:
        return self.scanned_for[1]

    def state(self, now: float) -> SchedulerState:
        capacity, _ = self.capacity()
        instances = self.engines.list()
        found = demand.residents(
            instances,
            self.catalog,
            capacity,
            inflight=self.inflight,
            last_activity=self.last_activity,
            leaving=self.evicting,
        )
        live = {r.recipe_id for r in found}
        for rid in self.launching - live:  # launch() has not listed its instance yet
            entry = self.catalog.loadables.get(rid)
            if entry is None:
                continue
            found.append(Resident(f"{rid} (launching)", rid, "starting", entry.gpus, entry.vram_gb))
        # Requests whose load just failed are being ended: they load nothing again.
        listed = demand.waiting(self.queues.listing(), self.catalog.names, now)
        waiting = [q for q in listed if not self.cooling(q.model)]
        # A model asked for with nothing waiting (queue_depth 0, or a full room: those
        # clients retry) and nothing running is wanted all the same, for a short while.
        asked = {q.model for q in waiting} | live | self.launching
        for rid, at in list(self.wanted.items()):
            # A want is met once its model is on its way in: evicted soon after, it stays out.
            if now - at > WANTED_S or rid in live or rid in self.launching:
                del self.wanted[rid]
            elif rid not in asked and not self.cooling(rid):
                waiting.append(Queued(f"want-{rid}", rid, "", at))
        catalog = {
            rid: replace(entry, load_s=self.load_s[rid]) if rid in self.load_s else entry
            for rid, entry in self.catalog.loadables.items()
        }
        return SchedulerState(tuple(waiting), tuple(found), catalog, capacity, self.policy)

    def step(self) -> list[Action]:
        """Plan once and carry the actions out; returns them (for tests and logs)."""
        now = self.clock()
        self._watch_loads(now)
        state = self.state(now)
        actions = self.planner(state, now)
        self.wake_at = None
        waiting_models = {q.model for q in state.waiting}
        for model in list(self.said):
            if model not in waiting_models:
                del self.said[model]
        for action in actions:
            self._carry_out(action)
        return actions

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, Load):
            self._load(action)
        elif isinstance(action, Evict):
            self._evict(action)
        elif isinstance(action, Wait):
            too_big = self.never_fits(action.model)
            if too_big is not None:  # its requests would wait for nothing until they time out
                self._failed(action.model, too_big)
                return
            if action.until is not None:
                self.wake_at = min(self.wake_at or action.until, action.until)
            key = said_key(action.model, action.reason)
            if self.said.get(action.model) != key:
                self.said[action.model] = key
                self.event(
                    "queued",
                    f"{action.model} waits: {action.reason}",
                    recipe_id=action.model,
                    reason=action.reason,
                    until=action.until,
                )
        elif isinstance(action, Dispatch):
            self.said.pop(action.model, None)  # the route table wakes its requests

    def never_fits(self, rid: str) -> str | None:
        """Why an on-demand recipe can never load on this host (it needs more than a whole
        GPU has), or None."""
        entry = self.catalog.loadables.get(rid)
        if entry is None or not entry.on_demand:
            return None
        capacity, _ = self.capacity()
        for g in entry.gpus or tuple(capacity):
            have = capacity.get(g, 0.0)
            if entry.vram_gb > have + 1e-6:
                return f"it needs {entry.vram_gb:g} GiB on GPU {g}, which has {have:g} GiB"
        return None

    def _load(self, load: Load) -> None:
        rid = load.recipe_id
        if rid in self.launching:
            return
        need = self.catalog.needs.get(rid)
        self.event(
            "load_requested",
            f"{rid}: load requested ({load.reason})",
            recipe_id=rid,
            reason=load.reason,
            gpus=list(load.gpus),
            need=need.to_dict() if need is not None else None,
        )
        self.launching.add(rid)
        self._spawn(self._launch(load))

    def _evict(self, ev: Evict) -> None:
        if ev.instance_id in self.evicting:
            return
        self.evicting.add(ev.instance_id)
        self.swaps.setdefault(ev.for_recipe, []).append(ev.instance_id)
        self.event(
            "evicted_for",
            f"{ev.instance_id}: evicted for {ev.for_recipe} ({ev.reason})",
            instance_id=ev.instance_id,
            recipe_id=ev.for_recipe,
            reason=ev.reason,
            drain=ev.drain,
        )
        self._spawn(self._stop(ev))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.ops.add(task)
        task.add_done_callback(self.ops.discard)

    async def _launch(self, load: Load) -> None:
        rid = load.recipe_id
        try:
            # On a GPU host the scheduler fitted it on these GPUs (for a recipe naming none:
            # the first ones), and the launch's own conflict checks must agree.
            gpus = list(load.gpus) if self.has_gpus else None
            inst = await self.engines.launch(rid, gpus=gpus, wait=False, lock_wait=True)
        except StudioError as exc:
            if exc.code != "already_running":  # launched by hand meanwhile: it is coming
                self._failed(rid, exc.message)
            return
        except Exception as exc:  # the waiters must hear of it whatever it was
            log.exception("on-demand launch of %s failed", rid)
            self._failed(rid, str(exc) or type(exc).__name__)
            return
        finally:
            self.launching.discard(rid)
            self._kick.set()
        self.loading[inst.id] = rid
        self.event(
            "placed",
            f"{inst.id}: placed on port {inst.port}"
            + (f", GPU {','.join(map(str, inst.gpus))}" if inst.gpus else ""),
            instance_id=inst.id,
            recipe_id=rid,
            reason=load.reason,
            port=inst.port,
            gpus=list(inst.gpus),
        )
        evicted = self.swaps.pop(rid, [])
        if evicted:
            self.event(
                "swapped",
                f"{', '.join(evicted)} → {inst.id}",
                instance_id=inst.id,
                recipe_id=rid,
                reason=load.reason,
                evicted=evicted,
            )

    async def _stop(self, ev: Evict) -> None:
        try:
            await self.engines.evict(
                ev.instance_id, drain_timeout=self.policy.drain_timeout_s, lock_wait=True
            )
        except StudioError as exc:
            log.warning("on-demand evict of %s failed: %s", ev.instance_id, exc.message)
        except Exception:
            log.exception("on-demand evict of %s failed", ev.instance_id)
        finally:
            self.evicting.discard(ev.instance_id)
            self._kick.set()

    def _watch_loads(self, now: float) -> None:
        """Instances launched on demand: ready → done; failed or stopped before ever
        being ready → their waiters end now (nothing else would tell them)."""
        if not self.loading:
            return
        by_id = {i.id: i for i in self.engines.list(include_stopped=True)}
        for iid, rid in list(self.loading.items()):
            inst = by_id.get(iid)
            if inst is not None and inst.ever_ready:
                del self.loading[iid]
                self.failed.pop(rid, None)
                if inst.ready_at is not None and inst.started_at is not None:
                    self.load_s[rid] = max(0.0, inst.ready_at - inst.started_at)
            elif inst is None or str(inst.state) in ("failed", "stopped"):
                del self.loading[iid]
                why = inst.reason if inst is not None and inst.reason else "it stopped"
                self._failed(rid, f"{iid} did not become ready: {why}", now=now)

    def _failed(self, rid: str, why: str, *, now: float | None = None) -> None:
        self.failed[rid] = self.clock() if now is None else now
        self.swaps.pop(rid, None)
        error = GatewayError(
            503,
            "model_load_failed",
            f"loading recipe {rid!r} failed: {why}"[:500],
            retry_after=LOAD_FAILED_RETRY_AFTER_S,
            hint=f"studioctl logs {rid}",
        )
        recipe = self.catalog.recipes.get(rid)
        ended = sum(self.queues.fail(n, error) for n in (recipe.model_names if recipe else [rid]))
        self.event(
            "load_failed",
            f"{rid}: load failed ({why}); {ended} requests ended",
            recipe_id=rid,
            reason=why[:500],
            ended=ended,
        )

    def event(self, kind: str, message: str, **data: Any) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        instance_id = data.pop("instance_id", None)
        recipe_id = data.pop("recipe_id", None)
        with contextlib.suppress(StudioError):  # a full disk must not stop the planner
            self.bus.publish(kind, message, instance_id=instance_id, recipe_id=recipe_id, data=data)

    async def preload(
        self, model: str, *, timeout: float | None = None, wait: bool = True
    ) -> dict[str, Any]:
        """``studioctl preload``: load ``model`` (served name, alias or recipe id) as a
        request would, and wait until it is ready (``studioctl.lifecycle.preload``)."""
        return await preload.preload(self, model, timeout=timeout, wait=wait)


def said_key(model: str, reason: str) -> str:
    """A Wait's reason without what changes from one plan to the next (seconds, the id of
    the instance being launched), so that each reason is published once."""
    own = re.sub(rf"{re.escape(model)}(-\d+| \(launching\))", "#", reason)
    return re.sub(r"[\d.]+", "#", own)
