"""The supervisor: launches, watches, restarts, drains, stops and adopts engine processes.

The daemon's one entry to the lifecycle, assembled from its parts:

- ``registry``: the instances, and the one way their state changes (``set_state``:
  checked against ``studioctl.states``, stored, published, announced to ``hooks``);
- ``monitor``: one task per instance (readiness, health, crash policy, idle unload);
- ``operations``: launch, evict, switch, under the operation locks, with typed reports;
- ``adoption``: taking over engines after a daemon restart, or foreign ones;
- ``placement``: ports and GPUs.

Every OS call goes through ``osproc``; every HTTP call to an engine through ``engine_http``.
What the supervisor needs from the gateway and telemetry (in-flight counts, last activity,
the instance list, GPU memory release) comes through ``hooks``, given at construction.
Every engine is started with its own API key (``Instance.api_key``), which probes send.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.errors import StudioError
from studioctl.lifecycle import adoption, logfiles
from studioctl.lifecycle.engine_http import EngineHttp
from studioctl.lifecycle.hooks import NullHooks, SupervisorHooks
from studioctl.lifecycle.locks import ResourceLocks
from studioctl.lifecycle.monitor import Monitor
from studioctl.lifecycle.operations import EvictReport, Operations, SwitchReport, wait_ready
from studioctl.lifecycle.osproc import OsProc
from studioctl.lifecycle.registry import InstanceRegistry
from studioctl.lifecycle.restart import RestartPolicy
from studioctl.lifecycle.runtime import Instance

if TYPE_CHECKING:
    from studioctl.lifecycle import placement
    from studioctl.lifecycle.events import EventBus
    from studioctl.recipes import Recipe
    from studioctl.settings import Settings
    from studioctl.store.db import Database


class Supervisor:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        bus: EventBus,
        osproc: OsProc | None = None,
        policy: RestartPolicy | None = None,
        health_interval_s: float = 2.0,
        health_failures: int = 3,
        hooks: SupervisorHooks = NullHooks(),
        engine_http: EngineHttp | None = None,
        recipe_loader: Callable[[str], Recipe] | None = None,
        gpu_count: Callable[[], int] | None = None,
    ) -> None:
        """``hooks``: the gateway's and telemetry's answers (NullHooks: neither).
        ``engine_http``: the daemon's one HTTP client toward engines (one of its own if
        None, closed with the supervisor). ``gpu_count``: the host's GPU count (NVML's)."""
        self.settings = settings
        self.db = db
        self.bus = bus
        self.hooks = hooks
        self._own_http = engine_http is None
        self.engine_http = engine_http if engine_http is not None else EngineHttp()
        self._load_recipe = recipe_loader or self._default_recipe_loader
        self.locks = ResourceLocks()
        self.registry = InstanceRegistry(
            db=db, bus=bus, osproc=osproc or OsProc(), hooks=self.hooks
        )
        self.monitor = Monitor(
            self.registry,
            http=self.engine_http,
            hooks=self.hooks,
            policy=policy or RestartPolicy(),
            logs=settings.logs,
            health_interval_s=health_interval_s,
            health_failures=health_failures,
            unload=self.evict,
        )
        self.operations = Operations(
            self.registry,
            self.monitor,
            engines=settings.engines,
            http=self.engine_http,
            hooks=self.hooks,
            locks=self.locks,
            gpu_count=gpu_count or _nvml_gpu_count,
        )

    def _default_recipe_loader(self, recipe_id: str) -> Recipe:
        from studioctl.recipes import get_recipe, recipe_dirs

        return get_recipe(recipe_id, recipe_dirs(self.settings))

    # ------------------------------------------------------------------ setup / teardown

    async def start(self) -> None:
        await self.reconcile()

    async def close(self, *, stop_engines: bool = False) -> None:
        """Daemon shutdown: leave engines running (adopted next start) unless told otherwise."""
        self.monitor.close()
        if stop_engines:
            for inst in self.registry.holding():
                with contextlib.suppress(StudioError):
                    await self.evict(inst.id, force=True, grace=10)
        insts = list(self.registry.instances.values())
        for inst in insts:
            if inst.task and not inst.task.done():
                inst.task.cancel()
        tasks = [i.task for i in insts if i.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for inst in insts:
            self.registry.persist(inst)
        if self._own_http:
            await self.engine_http.close()

    # ------------------------------------------------------------------ queries

    @property
    def instances(self) -> dict[str, Instance]:
        """Every instance the daemon knows, by id (read-only: changes go through the
        registry)."""
        return self.registry.instances

    def list(self, *, include_stopped: bool = False) -> builtins.list[Instance]:
        return self.registry.list(include_stopped=include_stopped)

    def get(self, target: str) -> Instance:
        """An instance by id, or the live instance of a recipe id."""
        return self.registry.get(target)

    def residents(self, *, exclude: str | None = None) -> builtins.list[placement.Resident]:
        """Instances that hold (or will hold again) their GPUs: active or crashed."""
        return self.registry.residents(exclude=exclude)

    def record_vram(self, instance_id: str, vram_bytes: int | None) -> None:
        """Telemetry's latest reading of an instance's GPU memory (shown by ``ps``, and
        what an evict reports it held)."""
        inst = self.registry.instances.get(instance_id)
        if inst is not None:
            inst.vram_bytes = vram_bytes

    # ------------------------------------------------------------------ operations

    async def launch(
        self,
        recipe_id: str | Recipe,
        *,
        port: int | None = None,
        gpus: builtins.list[int] | None = None,
        force: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        lock_wait: bool = False,
    ) -> Instance:
        # A Recipe: one a client sent (a file outside the recipe folders), validated by the caller.
        loaded = self._load_recipe(recipe_id) if isinstance(recipe_id, str) else recipe_id
        return await self.operations.launch(
            loaded,
            port=port,
            gpus=gpus,
            force=force,
            wait=wait,
            timeout=timeout,
            lock_wait=lock_wait,
        )

    async def wait_ready(self, inst: Instance) -> Instance:
        return await wait_ready(inst)

    async def evict(
        self,
        target: str,
        *,
        drain_timeout: float = 30.0,
        grace: float = 15.0,
        force: bool = False,
        lock_wait: bool = False,
    ) -> EvictReport:
        return await self.operations.evict(
            target, drain_timeout=drain_timeout, grace=grace, force=force, lock_wait=lock_wait
        )

    async def switch(
        self,
        frm: str,
        to: str | Recipe,
        *,
        port: int | None = None,
        gpus: builtins.list[int] | None = None,
        drain_timeout: float = 30.0,
        grace: float = 15.0,
        timeout: float | None = None,
        lock_wait: bool = False,
    ) -> SwitchReport:
        src = self.get(frm)
        loaded = self._load_recipe(to) if isinstance(to, str) else to
        return await self.operations.switch(
            src,
            loaded,
            port=port,
            gpus=gpus,
            drain_timeout=drain_timeout,
            grace=grace,
            timeout=timeout,
            lock_wait=lock_wait,
        )

    async def engine_inflight(self, inst: Instance) -> int | None:
        """Running + waiting requests from the engine's own /metrics (None if unreadable)."""
        return await self.operations.engine_inflight(inst)

    # ------------------------------------------------------------------ adoption

    async def reconcile(self) -> None:
        """Daemon start: adopt live instances from the store; mark dead ones crashed."""
        await adoption.reconcile(self.registry, self.monitor, self._finish_evict)

    async def _finish_evict(self, inst: Instance) -> EvictReport:
        return await self.operations.evict_instance(inst, drain_timeout=0.0, grace=15.0, force=True)

    async def adopt(self, pid: int, recipe_id: str, *, port: int | None = None) -> Instance:
        """Take over an engine server studioctl did not start."""
        return await adoption.adopt(
            self.registry, self.monitor, self._load_recipe, pid, recipe_id, port=port
        )

    def foreign_servers(self) -> builtins.list[dict[str, Any]]:
        """vLLM/SGLang servers running on this host that studioctl does not manage."""
        return adoption.foreign_servers(self.registry)

    # ------------------------------------------------------------------ housekeeping

    def prune_logs(self, retention_days: float) -> builtins.list[Path]:
        """Delete instance logs (and their rotations) untouched for ``retention_days``,
        except those of instances that still hold a process."""
        return logfiles.prune(
            paths.instance_log_dir(),
            keep={i.log_path.name for i in self.registry.holding()},
            cutoff=self.registry.os.now() - retention_days * 86400,
        )


def _nvml_gpu_count() -> int:
    from studioctl import gpu

    return gpu.device_count()
