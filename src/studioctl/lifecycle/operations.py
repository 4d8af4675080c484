"""What is done to instances on request: launch, evict (drain, stop, verify), switch.

Each operation holds the locks of what it touches (``ResourceLocks``: a recipe, an
instance, GPUs) so that two operations never race on them, and returns a typed report.

    evict: ready ──► draining ──(in-flight 0 or drain timeout)──► stopping ──► stopped
    switch: launch-then-evict (no GPU or port shared: no gap in service), else
            evict-then-launch
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.errors import ConflictError, EngineFailed, UsageError
from studioctl.lifecycle import placement
from studioctl.lifecycle.engine_http import EngineHttpError
from studioctl.lifecycle.runtime import Instance, new_api_key
from studioctl.lifecycle.spawn import spawn
from studioctl.lifecycle.terminate import Termination
from studioctl.states import ACTIVE, State

if TYPE_CHECKING:
    from studioctl.lifecycle.engine_http import EngineHttp
    from studioctl.lifecycle.hooks import SupervisorHooks
    from studioctl.lifecycle.locks import ResourceLocks
    from studioctl.lifecycle.monitor import Monitor
    from studioctl.lifecycle.registry import InstanceRegistry
    from studioctl.recipes import Recipe
    from studioctl.settings import EngineSettings

log = logging.getLogger("studioctl.supervisor")

DRAIN_POLL_S = 0.25
INFLIGHT_TIMEOUT_S = 3.0  # reading the engine's own /metrics for its in-flight count


@dataclass(frozen=True)
class EvictReport:
    instance: str
    recipe: str
    state_before: str
    state: str | None = None  # None: nothing done (``already``)
    already: str | None = None  # the instance was already stopped or failed
    termination: Termination = field(default_factory=Termination)
    drained: bool | None = None  # None: no drain (forced, or not ready)
    drain_s: float | None = None
    seconds: float = 0.0
    vram: Mapping[str, Any] | None = None  # ``hooks.vram_released``'s figures

    def to_dict(self) -> dict[str, Any]:
        """The report as the control API sends it."""
        out: dict[str, Any] = {
            "instance": self.instance,
            "recipe": self.recipe,
            "state_before": self.state_before,
        }
        if self.already is not None:
            out["already"] = self.already
        if self.drain_s is not None:
            out["drain_s"] = self.drain_s
        out.update(self.termination.to_dict())
        out["drained"] = self.drained
        out.update(self.vram or {})
        out["seconds"] = self.seconds
        if self.state is not None:
            out["state"] = self.state
        return out


@dataclass(frozen=True)
class SwitchReport:
    from_id: str
    to_recipe: str
    order: str  # "evict-then-launch" | "launch-then-evict"
    shared_gpus: tuple[int, ...]
    evict: EvictReport
    evict_s: float
    launch_s: float
    gap_s: float  # how long no engine served (0: launch-then-evict)
    instance: Instance  # the new one
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The figures without the instance and the evict report (the event's data)."""
        return {
            "from": self.from_id,
            "to_recipe": self.to_recipe,
            "order": self.order,
            "shared_gpus": list(self.shared_gpus),
            "evict_s": self.evict_s,
            "launch_s": self.launch_s,
            "gap_s": self.gap_s,
            "seconds": self.seconds,
        }

    def to_dict(self) -> dict[str, Any]:
        """The report as the control API sends it."""
        return {
            **self.summary(),
            "evict": self.evict.to_dict(),
            "instance": self.instance.to_dict(),
        }


@dataclass(frozen=True)
class _SwitchPlan:
    recipe: Recipe  # placed
    gpus: builtins.list[int]
    visible: int  # the host's GPU count
    shared_gpus: tuple[int, ...]  # with the instance it replaces
    evict_first: bool
    resources: frozenset[str]  # the locks the switch holds


class Operations:
    def __init__(
        self,
        reg: InstanceRegistry,
        monitor: Monitor,
        *,
        engines: EngineSettings,
        http: EngineHttp,
        hooks: SupervisorHooks,
        locks: ResourceLocks,
        gpu_count: Callable[[], int],
    ) -> None:
        """``engines``: the port range and default bind address; ``gpu_count``: how many
        GPUs the host has (a recipe without ``gpus`` uses all of them)."""
        self.reg = reg
        self.monitor = monitor
        self.engines = engines
        self.http = http
        self.hooks = hooks
        self.locks = locks
        self.gpu_count = gpu_count

    # ------------------------------------------------------------------ launch

    async def launch(
        self,
        loaded: Recipe,
        *,
        port: int | None,
        gpus: builtins.list[int] | None,
        force: bool,
        wait: bool,
        timeout: float | None,
        lock_wait: bool,
    ) -> Instance:
        recipe = placement.placed(loaded, self.engines.host)
        gpu_set = list(gpus) if gpus is not None else list(recipe.gpus)
        visible = await self.visible_gpus()
        held = placement.gpu_set(gpu_set, visible)
        resources = {f"recipe:{recipe.id}", *(f"gpu:{g}" for g in held)}
        async with self.locks.hold(resources, f"launch {recipe.id}", wait=lock_wait):
            inst = self.start_instance(
                recipe, port=port, gpus=gpu_set, force=force, timeout=timeout, visible=visible
            )
        if wait:
            await wait_ready(inst)
        return inst

    async def visible_gpus(self) -> int:
        """The host's GPU count (NVML, off the event loop); 0 when it cannot be read."""
        try:
            return max(0, int(await asyncio.to_thread(self.gpu_count)))
        except Exception:  # placement must not fail a launch over a telemetry fault
            log.exception("counting GPUs failed; placing as on a host without GPUs")
            return 0

    def start_instance(
        self,
        recipe: Recipe,
        *,
        port: int | None,
        gpus: builtins.list[int],
        force: bool,
        timeout: float | None,
        visible: int,
    ) -> Instance:
        """A new instance of a placed recipe: checked, stored, spawned, watched."""
        from studioctl.engines import get_engine

        chosen = placement.pick_port(
            recipe.host,
            asked=port,
            recipe_port=recipe.port,
            port_range=(self.engines.port_min, self.engines.port_max),
            used={i.port for i in self.reg.instances.values() if i.state in ACTIVE},
            holder=self.reg.os.port_holder,
        )
        self._check_conflicts(recipe, chosen, gpus, force, visible)
        iid = self.reg.repo.next_id(recipe.id)
        inst = Instance(
            id=iid,
            recipe=recipe,
            engine=get_engine(recipe.backend),
            host=recipe.host,
            port=chosen,
            gpus=gpus,
            log_path=paths.instance_log_dir() / f"{iid}.log",
            api_key=new_api_key(),
        )
        self.reg.add(inst)
        spawn(self.reg, inst, first=True)
        inst.ready = asyncio.get_running_loop().create_future()
        self.monitor.start(inst, timeout=timeout)
        return inst

    def _check_conflicts(
        self, recipe: Recipe, port: int, gpus: builtins.list[int], force: bool, visible: int
    ) -> None:
        for other in self.reg.holding():
            if other.recipe.id == recipe.id:
                raise ConflictError(
                    f"recipe {recipe.id} is already running as {other.id} ({other.state})",
                    code="already_running",
                    hint=f"studioctl evict {other.id}   or   studioctl switch {other.id} OTHER",
                )
        if not force:
            placement.refuse_shared_gpus(
                recipe.id, placement.conflicts(self.reg.residents(), gpus, visible)
            )
        holder = self.reg.os.port_holder(recipe.host, port)
        if holder is not None:
            raise ConflictError(
                f"port {port} on {recipe.host} is taken by {holder}",
                code="port_taken",
                hint="pick another with --port, or set `port:` in the recipe",
            )

    # ------------------------------------------------------------------ evict

    async def evict(
        self, target: str, *, drain_timeout: float, grace: float, force: bool, lock_wait: bool
    ) -> EvictReport:
        inst = self.reg.get(target)
        async with self.locks.hold(
            {f"recipe:{inst.recipe.id}", f"instance:{inst.id}"}, f"evict {inst.id}", wait=lock_wait
        ):
            return await self.evict_instance(
                inst, drain_timeout=drain_timeout, grace=grace, force=force
            )

    async def evict_instance(
        self, inst: Instance, *, drain_timeout: float, grace: float, force: bool
    ) -> EvictReport:
        """Stop ``inst`` (the caller holds its locks): drain unless ``force``, stop its
        monitor, terminate its tree, wait for its GPU memory."""
        t0 = time.monotonic()
        before = str(inst.state)
        if inst.state in (State.STOPPED, State.FAILED) and not (
            inst.state == State.FAILED and self.reg.tree_alive(inst)  # leftovers: kill them
        ):
            return EvictReport(inst.id, inst.recipe.id, before, already=str(inst.state))
        inst.desired = "stopped"
        self.reg.persist(inst)
        drained: bool | None = None
        drain_s: float | None = None
        if inst.state == State.READY and not force:
            self.reg.set_state(inst, State.DRAINING, "evict requested")
            drained = await self._drain(inst, drain_timeout)
            drain_s = round(time.monotonic() - t0, 3)
        if inst.task and not inst.task.done() and inst.task is not asyncio.current_task():
            inst.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inst.task
        if inst.state in ACTIVE and inst.state != State.STOPPING:
            self.reg.set_state(inst, State.STOPPING, "evict")
        held_vram = inst.vram_bytes  # the last reading, before the processes go
        result = await self.monitor.terminate(inst, grace=grace)
        vram = await self._vram_released(inst, held_vram)
        self._settle(inst, result)
        report = EvictReport(
            inst.id,
            inst.recipe.id,
            before,
            state=str(inst.state),
            termination=result,
            drained=drained,
            drain_s=drain_s,
            seconds=round(time.monotonic() - t0, 3),
            vram=vram,
        )
        data = {k: v for k, v in report.to_dict().items() if k != "processes"}
        how = ", ".join(result.signals) or "already gone"
        self.reg.bus.publish(
            "evict",
            f"{inst.id}: evicted in {report.seconds:.1f}s ({how})",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data=data,
        )
        return report

    async def _vram_released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        try:
            return await self.hooks.vram_released(inst, held)
        except Exception:  # a telemetry fault must not fail the evict
            log.exception("%s: waiting for its GPU memory to be released failed", inst.id)
            return None

    def _settle(self, inst: Instance, result: Termination) -> None:
        """The state after the tree was terminated: STOPPED, or FAILED with survivors."""
        if result.leftover:
            if inst.state == State.STOPPING:
                survivors = ", ".join(str(p.pid) for p in result.leftover)
                self.reg.set_state(inst, State.FAILED, f"processes survived SIGKILL: {survivors}")
        elif inst.state is not State.STOPPED:
            self.reg.set_state(inst, State.STOPPED, "evicted")
        inst.stopped_at = self.reg.os.now()
        self.reg.fail_waiters(inst, EngineFailed(f"{inst.id} was evicted before it was ready"))
        self.reg.persist(inst)

    async def _drain(self, inst: Instance, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            engine_inflight = await self.engine_inflight(inst)
            total = (engine_inflight or 0) + self.hooks.inflight(inst.id)
            if total == 0:
                return True
            if time.monotonic() >= deadline or self.reg.exited(inst):
                return False
            await asyncio.sleep(DRAIN_POLL_S)

    async def engine_inflight(self, inst: Instance) -> int | None:
        """Running + waiting requests from the engine's own /metrics (None if unreadable)."""
        from studioctl.engines.metrics import summarize

        try:
            answer = await self.http.get(
                inst.base_url + "/metrics", api_key=inst.api_key, timeout_s=INFLIGHT_TIMEOUT_S
            )
        except EngineHttpError:
            return None
        if answer.status != 200:
            return None
        snap = summarize(inst.recipe.backend, answer.text())
        return int((snap.requests_running or 0) + (snap.requests_waiting or 0))

    # ------------------------------------------------------------------ switch

    async def switch(
        self,
        src: Instance,
        loaded: Recipe,
        *,
        port: int | None,
        gpus: builtins.list[int] | None,
        drain_timeout: float,
        grace: float,
        timeout: float | None,
        lock_wait: bool,
    ) -> SwitchReport:
        plan = await self._plan_switch(src, loaded, port=port, gpus=gpus)
        recipe = plan.recipe
        t0 = time.monotonic()

        async def launch() -> Instance:
            inst = self.start_instance(
                recipe,
                port=port,
                gpus=plan.gpus,
                force=False,
                timeout=timeout,
                visible=plan.visible,
            )
            return await wait_ready(inst)

        async def evict() -> EvictReport:
            return await self.evict_instance(
                src, drain_timeout=drain_timeout, grace=grace, force=False
            )

        async with self.locks.hold(
            plan.resources, f"switch {src.id} -> {recipe.id}", wait=lock_wait
        ):
            if plan.evict_first:
                t = time.monotonic()
                ev = await evict()
                evict_s = round(time.monotonic() - t, 3)
                gap_start = t + (ev.drain_s or 0.0)
                t = time.monotonic()
                inst = await launch()
                launch_s = round(time.monotonic() - t, 3)
                gap_s = round(time.monotonic() - gap_start, 3)
            else:
                # No GPU shared with the old one (checked by the plan), nor with anyone else.
                t = time.monotonic()
                inst = await launch()
                launch_s = round(time.monotonic() - t, 3)
                t = time.monotonic()
                ev = await evict()
                evict_s = round(time.monotonic() - t, 3)
                gap_s = 0.0
        report = SwitchReport(
            from_id=src.id,
            to_recipe=recipe.id,
            order="evict-then-launch" if plan.evict_first else "launch-then-evict",
            shared_gpus=plan.shared_gpus,
            evict=ev,
            evict_s=evict_s,
            launch_s=launch_s,
            gap_s=gap_s,
            instance=inst,
            seconds=round(time.monotonic() - t0, 3),
        )
        self.reg.bus.publish(
            "switch",
            f"switched {src.id} -> {inst.id} in {report.seconds:.1f}s ({report.order})",
            instance_id=inst.id,
            recipe_id=recipe.id,
            data=report.summary(),
        )
        return report

    async def _plan_switch(
        self, src: Instance, loaded: Recipe, *, port: int | None, gpus: builtins.list[int] | None
    ) -> _SwitchPlan:
        """Where the new engine goes and in which order: refused when anyone but ``src``
        holds one of its GPUs; evict first when it shares a GPU or its fixed port with
        ``src`` (both would not fit)."""
        recipe = placement.placed(loaded, self.engines.host)
        if recipe.id == src.recipe.id:
            raise UsageError(f"{src.id} already runs recipe {recipe.id}; nothing to switch")
        new_gpus = list(gpus) if gpus is not None else list(recipe.gpus)
        visible = await self.visible_gpus()
        with_src = placement.conflicts(
            [placement.Resident(src.id, src.recipe.id, tuple(src.gpus))], new_gpus, visible
        )
        overlap = tuple(with_src[0].gpus) if with_src else ()
        placement.refuse_shared_gpus(
            recipe.id, placement.conflicts(self.reg.residents(exclude=src.id), new_gpus, visible)
        )
        new_port = port if port is not None else recipe.port
        resources = frozenset(
            {
                f"recipe:{src.recipe.id}",
                f"recipe:{recipe.id}",
                f"instance:{src.id}",
                *(f"gpu:{g}" for g in placement.gpu_set(src.gpus, visible)),
                *(f"gpu:{g}" for g in placement.gpu_set(new_gpus, visible)),
            }
        )
        return _SwitchPlan(
            recipe=recipe,
            gpus=new_gpus,
            visible=visible,
            shared_gpus=overlap,
            evict_first=bool(overlap) or (new_port is not None and new_port == src.port),
            resources=resources,
        )


async def wait_ready(inst: Instance) -> Instance:
    """Until ``inst`` is ready (its launch's error if it never gets there)."""
    assert inst.ready is not None
    await asyncio.shield(inst.ready)
    return inst
