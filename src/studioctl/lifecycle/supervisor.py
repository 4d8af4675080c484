"""The supervisor: launches, watches, restarts, drains, stops and adopts engine processes.

One asyncio task per instance (``_monitor``) drives it through its states:

    starting/loading ──probe 200──► ready ──exit or 3 failed probes──► crashed ──policy──►
        starting (after backoff) | failed
    evict: ready ──► draining ──(in-flight 0 or drain timeout)──► stopping ──► stopped

State changes go through ``_set_state`` only, which checks the transition
(lifecycle.states), stores it and publishes an event. Every OS call goes through ``self.os``.

Which GPUs an engine uses and whom it would share them with is ``lifecycle.placement``'s
answer (``gpu_count``: how many GPUs the host has, from NVML). Every engine is started with
its own API key (``Instance.api_key``), which the probes and scrapes send.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.engines.base import redact
from studioctl.errors import (
    ConflictError,
    EngineFailed,
    NotFoundError,
    OperationTimeout,
    StudioError,
    UsageError,
)
from studioctl.lifecycle import logfiles, placement, readiness
from studioctl.lifecycle.events import EventBus
from studioctl.lifecycle.locks import ResourceLocks
from studioctl.lifecycle.osproc import OsProc
from studioctl.lifecycle.restart import RestartPolicy, decide
from studioctl.lifecycle.runtime import Instance, key_file_path, new_api_key
from studioctl.lifecycle.terminate import terminate
from studioctl.states import ACTIVE, State, check

if TYPE_CHECKING:
    from studioctl.engines.base import Stage
    from studioctl.recipes import Recipe
    from studioctl.settings import Settings
    from studioctl.store.db import Database

log = logging.getLogger("studioctl.supervisor")

PROBE_INTERVAL_S = 0.25  # readiness probe while starting
LOG_TAIL_LINES = 40


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
        gateway_inflight: Callable[[str], int] | None = None,
        recipe_loader: Callable[[str], Recipe] | None = None,
        gpu_count: Callable[[], int] | None = None,
    ) -> None:
        from studioctl.store.instances import InstanceRepo, LaunchRepo

        self.settings = settings
        self.db = db
        self.repo = InstanceRepo(db)
        self.launches = LaunchRepo(db)
        self.bus = bus
        self.os = osproc or OsProc()
        self.policy = policy or RestartPolicy()
        self.health_interval_s = health_interval_s
        self.health_failures = health_failures
        self.gateway_inflight = gateway_inflight or (lambda _iid: 0)
        # When the gateway last finished a request to an instance (idle_unload_s).
        self.last_activity: Callable[[str], float | None] = lambda _iid: None
        self._load_recipe = recipe_loader or self._default_recipe_loader
        # How many GPUs the host has (a recipe without `gpus` uses all of them); NVML's count.
        self.gpu_count: Callable[[], int] = gpu_count or _nvml_gpu_count
        self.instances: dict[str, Instance] = {}
        self.locks = ResourceLocks()
        self._session: Any = None
        self._closing = False
        self.on_change: list[Callable[[], None]] = []  # e.g. the gateway's route table refresh
        # After an evict's processes are gone: wait until NVML shows their GPU memory freed
        # (the daemon's telemetry; None, or a None answer without GPUs: no wait).
        self.vram_release: (
            Callable[[Instance, int | None], Awaitable[dict[str, Any] | None]] | None
        ) = None

    # ------------------------------------------------------------------ setup / teardown

    def _default_recipe_loader(self, recipe_id: str) -> Recipe:
        from studioctl.recipes import get_recipe, recipe_dirs

        return get_recipe(recipe_id, recipe_dirs(self.settings))

    @property
    def session(self) -> Any:
        """The shared aiohttp session for engine probes and scrapes (None until start())."""
        return self._session

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, force_close=True)
        )
        await self.reconcile()

    async def close(self, *, stop_engines: bool = False) -> None:
        """Daemon shutdown: leave engines running (adopted next start) unless told otherwise."""
        self._closing = True
        if stop_engines:
            for inst in list(self.instances.values()):
                if inst.state in ACTIVE or inst.state == State.CRASHED:
                    with contextlib.suppress(StudioError):
                        await self.evict(inst.id, force=True, grace=10)
        for inst in self.instances.values():
            if inst.task and not inst.task.done():
                inst.task.cancel()
        tasks = [i.task for i in self.instances.values() if i.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for inst in self.instances.values():
            self._persist(inst)
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ queries

    def list(self, *, include_stopped: bool = False) -> builtins.list[Instance]:
        out = [
            i for i in self.instances.values() if include_stopped or i.state not in (State.STOPPED,)
        ]
        return sorted(out, key=lambda i: i.created_at)

    def get(self, target: str) -> Instance:
        """An instance by id, or the live instance of a recipe id."""
        if target in self.instances:
            return self.instances[target]
        live = [
            i
            for i in self.instances.values()
            if i.recipe.id == target and i.state not in (State.STOPPED, State.FAILED)
        ]
        if not live:
            live = [i for i in self.instances.values() if i.recipe.id == target]
        if not live:
            known = ", ".join(sorted(self.instances)) or "none"
            raise NotFoundError(
                f"no instance or recipe named {target!r} is known to the daemon",
                hint=f"instances: {known}; see `studioctl ps --all`",
            )
        return max(live, key=lambda i: i.created_at)

    # ------------------------------------------------------------------ launch

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
        recipe = placement.placed(loaded, self.settings.engines.host)
        gpu_set = list(gpus) if gpus is not None else list(recipe.gpus)
        visible = await self._visible_gpus()
        held = placement.gpu_set(gpu_set, visible)
        resources = {f"recipe:{recipe.id}", *(f"gpu:{g}" for g in held)}
        async with self.locks.hold(resources, f"launch {recipe.id}", wait=lock_wait):
            inst = self._start_instance(
                recipe, port=port, gpus=gpu_set, force=force, timeout=timeout, visible=visible
            )
        if wait:
            await self.wait_ready(inst)
        return inst

    async def _visible_gpus(self) -> int:
        """The host's GPU count (NVML, off the event loop); 0 when it cannot be read."""
        try:
            return max(0, int(await asyncio.to_thread(self.gpu_count)))
        except Exception:  # placement must not fail a launch over a telemetry fault
            log.exception("counting GPUs failed; placing as on a host without GPUs")
            return 0

    def residents(self, *, exclude: str | None = None) -> builtins.list[placement.Resident]:
        """Instances that hold (or will hold again) their GPUs: active or crashed."""
        return [
            placement.Resident(i.id, i.recipe.id, tuple(i.gpus))
            for i in self.list()
            if (i.state in ACTIVE or i.state == State.CRASHED) and i.id != exclude
        ]

    def _check_conflicts(
        self, recipe: Recipe, port: int, gpus: builtins.list[int], force: bool, visible: int
    ) -> None:
        for other in self.instances.values():
            if other.state not in ACTIVE and other.state != State.CRASHED:
                continue
            if other.recipe.id == recipe.id:
                raise ConflictError(
                    f"recipe {recipe.id} is already running as {other.id} ({other.state})",
                    code="already_running",
                    hint=f"studioctl evict {other.id}   or   studioctl switch {other.id} OTHER",
                )
        if not force:
            _refuse_shared_gpus(recipe.id, placement.conflicts(self.residents(), gpus, visible))
        holder = self.os.port_holder(recipe.host, port)
        if holder is not None:
            raise ConflictError(
                f"port {port} on {recipe.host} is taken by {holder}",
                code="port_taken",
                hint="pick another with --port, or set `port:` in the recipe",
            )

    def _pick_port(self, recipe: Recipe, port: int | None) -> int:
        if port is not None:
            return port
        if recipe.port is not None:
            return recipe.port
        eng = self.settings.engines
        used = {i.port for i in self.instances.values() if i.state in ACTIVE}
        for p in range(eng.port_min, eng.port_max + 1):
            if p in used:
                continue
            if self.os.port_holder(recipe.host, p) is None:
                return p
        raise ConflictError(
            f"no free port in the engine range {eng.port_min}-{eng.port_max}",
            code="no_free_port",
            hint="widen engines.port_min/port_max in studioctl.yaml",
        )

    def _start_instance(
        self,
        recipe: Recipe,
        *,
        port: int | None,
        gpus: builtins.list[int],
        force: bool,
        timeout: float | None,
        visible: int,
    ) -> Instance:
        from studioctl.engines import get_engine

        chosen = self._pick_port(recipe, port)
        self._check_conflicts(recipe, chosen, gpus, force, visible)
        engine = get_engine(recipe.backend)
        iid = self.repo.next_id(recipe.id)
        log_path = paths.instance_log_dir() / f"{iid}.log"
        inst = Instance(
            id=iid,
            recipe=recipe,
            engine=engine,
            host=recipe.host,
            port=chosen,
            gpus=gpus,
            log_path=log_path,
            api_key=new_api_key(),
        )
        self.repo.insert(inst.to_record())
        self.instances[iid] = inst
        self._spawn(inst, first=True)
        inst.ready = asyncio.get_running_loop().create_future()
        inst.task = asyncio.create_task(self._monitor(inst, timeout=timeout), name=f"monitor {iid}")
        return inst

    def _spawn(self, inst: Instance, *, first: bool) -> None:
        if inst.api_key is None:  # started before keys (or adopted): it gets one now
            inst.api_key = new_api_key()
        cmd = inst.engine.command(
            inst.recipe,
            port=inst.port,
            gpus=inst.gpus,
            api_key=inst.api_key,
            key_file=str(key_file_path(inst.id)),
        )
        try:
            for path, content in cmd.files.items():
                _write_private(Path(path), content)
        except OSError as exc:
            raise EngineFailed(f"cannot write {inst.id}'s key file: {exc}") from exc
        inst.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(inst.log_path, "ab") as f:
            what = "launch" if first else f"restart {inst.restarts}"
            f.write(
                f"=== studioctl: {what} of {inst.recipe.id} at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {cmd.shell()}\n".encode()
            )
        inst.log_offset = inst.log_path.stat().st_size
        try:
            spawned = self.os.spawn(cmd.argv, env=cmd.env, log_path=inst.log_path)
        except FileNotFoundError as exc:
            raise EngineFailed(
                f"cannot start {inst.recipe.id}: {exc.filename or cmd.argv[0]} not found",
                hint="check the recipe's `python:` (an interpreter or a venv with the engine)",
            ) from exc
        except OSError as exc:
            raise EngineFailed(f"cannot start {inst.recipe.id}: {exc}") from exc
        inst.spawned = spawned
        inst.pid, inst.pgid, inst.create_time = spawned.pid, spawned.pgid, spawned.create_time
        inst.tree = {spawned.pid: spawned.create_time}
        inst.started_at = self.os.now()
        inst.ready_at = None
        inst.stages = {"started": 0.0}
        inst.exit_code = None
        if not first:
            self._set_state(inst, State.STARTING, f"restart {inst.restarts}")
        else:
            self._persist(inst)
            self.bus.publish(
                "launch",
                f"{inst.id}: started pid {inst.pid} on port {inst.port}",
                instance_id=inst.id,
                recipe_id=inst.recipe.id,
                data={"pid": inst.pid, "port": inst.port, "command": cmd.shell()},
            )
        self.bus.publish(
            "stage",
            f"{inst.id}: process started",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={
                "stage": "started",
                "label": "process started",
                "t": 0.0,
                "eta": self._eta(inst.recipe.id),
            },
        )
        self._changed()

    async def wait_ready(self, inst: Instance) -> Instance:
        assert inst.ready is not None
        await asyncio.shield(inst.ready)
        return inst

    def _eta(self, recipe_id: str) -> dict[str, float] | None:
        try:
            return self.launches.typical(recipe_id)
        except Exception:  # the ETA is a nicety; never fail a launch over it
            return None

    # ------------------------------------------------------------------ monitoring

    async def _monitor(self, inst: Instance, *, timeout: float | None = None) -> None:
        try:
            while not self._closing:
                if inst.state in (State.STARTING, State.LOADING):
                    await self._await_ready(inst, timeout=timeout)
                    timeout = None
                elif inst.state in (State.READY, State.DRAINING):
                    await self._watch(inst)
                elif inst.state == State.CRASHED:
                    await self._after_crash(inst)
                else:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not take the daemon down silently
            log.exception("monitor of %s failed", inst.id)
            self.bus.publish("error", f"{inst.id}: monitor error: {exc}", instance_id=inst.id)
            self._fail_waiters(inst, StudioError(f"{inst.id}: internal error: {exc!r}"))

    def _exited(self, inst: Instance) -> bool:
        code = self.os.reap(inst.spawned)
        if code is None:
            if inst.pid is not None and self.os.is_alive(inst.pid, inst.create_time):
                return False
            # Gone since the first look: a child of ours is a zombie by now, so its exit
            # code can be collected (else "process exited" would hide "exited with code 3").
            code = self.os.reap(inst.spawned)
        if code is not None:
            inst.exit_code = code
        return True

    async def _await_ready(self, inst: Instance, *, timeout: float | None) -> None:
        start = inst.started_at or self.os.now()
        limit = timeout if timeout is not None else inst.recipe.readiness_timeout_s
        follower = logfiles.LogFollower(inst.log_path, offset=inst.log_offset)
        tracker = readiness.StageTracker(inst.engine.stages)
        tracker.reached.update({k: v for k, v in inst.stages.items()})
        probe_paths = (inst.engine.health_path, *inst.engine.ready_paths)
        while True:
            t = self.os.now() - start
            lines = follower.read_new()
            if inst.api_key and any(inst.api_key in line for line in lines):
                self._scrub_log(inst)  # the engine printed its key (SGLang's server_args)
            for stage in tracker.feed(lines, t):
                inst.stages[stage.name] = round(t, 3)
                self._publish_stage(inst, stage)
                if inst.state == State.STARTING:
                    self._set_state(inst, State.LOADING, stage.label)
            if await readiness.probe(
                self._session, inst.base_url, probe_paths, headers=inst.auth_headers
            ):
                # The log may hold the last stage lines (SGLang's "fired up" comes late).
                for stage in tracker.feed(follower.read_new(), self.os.now() - start):
                    inst.stages[stage.name] = round(self.os.now() - start, 3)
                    self._publish_stage(inst, stage)
                self._refresh_tree(inst)
                inst.ready_at = self.os.now()
                inst.stages["ready"] = round(inst.ready_at - start, 3)
                first_ready = not inst.ever_ready
                inst.ever_ready = True
                self._set_state(inst, State.READY, f"ready in {inst.ready_at - start:.1f}s")
                self._record_launch(inst, "ready")
                if inst.ready is not None and not inst.ready.done():
                    inst.ready.set_result(None)
                if first_ready:
                    self.bus.publish(
                        "ready",
                        f"{inst.id}: ready on port {inst.port} in {inst.ready_at - start:.1f}s",
                        instance_id=inst.id,
                        recipe_id=inst.recipe.id,
                        data={"port": inst.port, "seconds": inst.ready_at - start},
                    )
                return
            if self._exited(inst):
                await self._failed_start(
                    inst,
                    f"exited with code {inst.exit_code}"
                    if inst.exit_code is not None
                    else "process exited",
                )
                return
            if t > limit:
                await self._terminate(inst, grace=5.0)
                tail = self._log_tail(inst)
                self._set_state(inst, State.FAILED, f"not ready after {limit:g}s")
                self._record_launch(inst, "timeout")
                self._fail_waiters(
                    inst,
                    OperationTimeout(
                        f"{inst.id} was not ready after {limit:g}s; stopped it",
                        hint=f"see `studioctl logs {inst.id}`; raise readiness_timeout_s "
                        "or --timeout if it is just slow",
                        details={"log_tail": tail, "instance": inst.id},
                    ),
                )
                return
            self._refresh_tree(inst)
            await asyncio.sleep(PROBE_INTERVAL_S)

    def _publish_stage(self, inst: Instance, stage: Stage) -> None:
        t = inst.stages[stage.name]
        self.bus.publish(
            "stage",
            f"{inst.id}: {stage.label}",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"stage": stage.name, "label": stage.label, "t": t},
        )

    async def _failed_start(self, inst: Instance, why: str) -> None:
        # Collect anything of the tree the dead parent left behind.
        await self._terminate(inst, grace=2.0)
        tail = self._log_tail(inst)
        if not inst.ever_ready:
            self._set_state(inst, State.FAILED, f"{why} before it was ready")
            self._record_launch(inst, "failed")
            self._fail_waiters(
                inst,
                EngineFailed(
                    f"{inst.id} ({inst.recipe.backend}) {why} before it was ready",
                    log_tail=tail,
                    hint=f"full log: studioctl logs {inst.id}",
                    details={"instance": inst.id},
                ),
            )
        else:
            # A restart that failed to come up counts as another crash.
            self._crashed(inst, f"{why} while restarting")

    def _fail_waiters(self, inst: Instance, exc: StudioError) -> None:
        if inst.ready is not None and not inst.ready.done():
            inst.ready.set_exception(exc)
            inst.ready.exception()  # mark retrieved: no "never retrieved" warning if nobody waits

    async def _watch(self, inst: Instance) -> None:
        failures = 0
        last_tree = last_probe = 0.0
        probe_paths = (inst.engine.health_path,)
        while inst.state in (State.READY, State.DRAINING):
            # Exits are noticed within a second; health is probed every health_interval_s.
            await asyncio.sleep(min(self.health_interval_s, 1.0))
            if inst.state not in (State.READY, State.DRAINING):
                return
            if self._exited(inst):
                why = (
                    f"exited with code {inst.exit_code}"
                    if inst.exit_code is not None
                    else "process is gone"
                )
                self._crashed(inst, why)
                return
            now = self.os.now()
            if now - last_tree >= 5.0:
                last_tree = now
                self._refresh_tree(inst)
                self._rotate_log(inst)
            idle = self._idle_for(inst, now)
            if idle is not None and await self._unload_idle(inst, idle):
                return
            if now - last_probe < self.health_interval_s * 0.999:
                continue
            last_probe = now
            if await readiness.probe(
                self._session, inst.base_url, probe_paths, headers=inst.auth_headers
            ):
                failures = 0
            else:
                failures += 1
                if failures >= self.health_failures:
                    self._crashed(inst, f"health probe failed {failures} times in a row")
                    return

    def _idle_for(self, inst: Instance, now: float) -> float | None:
        """Seconds without a gateway request, once past the recipe's ``idle_unload_s``."""
        limit = inst.recipe.idle_unload_s
        if not limit or inst.state != State.READY or inst.ready_at is None:
            return None
        if self.gateway_inflight(inst.id):
            return None
        idle = now - max(inst.ready_at, self.last_activity(inst.id) or 0.0)
        return idle if idle >= limit else None

    async def _unload_idle(self, inst: Instance, idle: float) -> bool:
        """Evict an idle instance (draining any direct clients); False if another
        operation holds it (tried again at the next check)."""
        self.bus.publish(
            "idle_unload",
            f"{inst.id}: no request for {idle:.0f}s (idle_unload_s "
            f"{inst.recipe.idle_unload_s:g}): evicting",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"idle_s": idle},
        )
        try:
            await self.evict(inst.id)
        except ConflictError:
            return False
        return True

    def _crashed(self, inst: Instance, why: str) -> None:
        inst.crash_times.append(self.os.now())
        self._set_state(inst, State.CRASHED, why)
        self.bus.publish(
            "crash", f"{inst.id}: crashed: {why}", instance_id=inst.id, recipe_id=inst.recipe.id
        )

    async def _after_crash(self, inst: Instance) -> None:
        # Whatever is left of the tree goes (a hung API server, orphaned workers).
        await self._terminate(inst, grace=5.0)
        if inst.desired == "stopped":
            self._set_state(inst, State.STOPPED, "stopped while crashed")
            return
        d = decide(
            self.policy,
            inst.recipe.restart,
            inst.crash_times,
            self.os.now(),
            exit_code=inst.exit_code,
        )
        if not d.restart:
            self._set_state(inst, State.FAILED, d.reason)
            self._fail_waiters(inst, EngineFailed(f"{inst.id}: {d.reason}"))
            return
        inst.next_restart_at = self.os.now() + d.delay_s
        self._persist(inst)
        self.bus.publish(
            "restart_scheduled",
            f"{inst.id}: {d.reason}",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"delay_s": d.delay_s, "restarts": inst.restarts},
        )
        while (left := inst.next_restart_at - self.os.now()) > 0:
            await asyncio.sleep(min(left, 0.5))
            if inst.desired == "stopped" or inst.state != State.CRASHED:
                return
        inst.next_restart_at = None
        inst.restarts += 1
        try:
            self._check_port_free(inst)
            self._spawn(inst, first=False)
        except StudioError as exc:
            inst.crash_times.append(self.os.now())
            self.bus.publish(
                "error", f"{inst.id}: restart failed: {exc.message}", instance_id=inst.id
            )
            self._persist(inst)

    def _check_port_free(self, inst: Instance) -> None:
        holder = self.os.port_holder(inst.host, inst.port)
        if holder is not None:
            raise ConflictError(f"port {inst.port} is taken by {holder}")

    # ------------------------------------------------------------------ evict

    async def evict(
        self,
        target: str,
        *,
        drain_timeout: float = 30.0,
        grace: float = 15.0,
        force: bool = False,
        lock_wait: bool = False,
    ) -> dict[str, Any]:
        inst = self.get(target)
        async with self.locks.hold(
            {f"recipe:{inst.recipe.id}", f"instance:{inst.id}"}, f"evict {inst.id}", wait=lock_wait
        ):
            return await self._evict(inst, drain_timeout=drain_timeout, grace=grace, force=force)

    async def _evict(
        self, inst: Instance, *, drain_timeout: float, grace: float, force: bool
    ) -> dict[str, Any]:
        t0 = time.monotonic()
        report: dict[str, Any] = {
            "instance": inst.id,
            "recipe": inst.recipe.id,
            "state_before": str(inst.state),
        }
        if inst.state in (State.STOPPED, State.FAILED):
            if inst.state == State.FAILED and self._tree_alive(inst):
                pass  # leftovers of a failed stop: fall through and kill them
            else:
                report.update(
                    already=str(inst.state),
                    signals=[],
                    processes=[],
                    leftover=[],
                    drained=None,
                    seconds=0.0,
                )
                return report
        inst.desired = "stopped"
        self._persist(inst)
        drained: bool | None = None
        if inst.state == State.READY and not force:
            self._set_state(inst, State.DRAINING, "evict requested")
            drained = await self._drain(inst, drain_timeout)
            report["drain_s"] = round(time.monotonic() - t0, 3)
        if inst.task and not inst.task.done() and inst.task is not asyncio.current_task():
            inst.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inst.task
        if inst.state in ACTIVE and inst.state != State.STOPPING:
            self._set_state(inst, State.STOPPING, "evict")
        elif inst.state == State.CRASHED:
            pass
        held_vram = inst.vram_bytes  # the last reading, before the processes go
        result = await self._terminate(inst, grace=grace)
        report.update(result)
        report["drained"] = drained
        if self.vram_release is not None:
            try:
                vram = await self.vram_release(inst, held_vram)
            except Exception:  # a telemetry fault must not fail the evict
                log.exception("%s: waiting for its GPU memory to be released failed", inst.id)
                vram = None
            if vram is not None:
                report.update(vram)
        if result["leftover"]:
            if inst.state == State.STOPPING:
                self._set_state(
                    inst,
                    State.FAILED,
                    "processes survived SIGKILL: "
                    + ", ".join(str(p["pid"]) for p in result["leftover"]),
                )
        elif inst.state is not State.STOPPED:  # type: ignore[comparison-overlap]
            self._set_state(inst, State.STOPPED, "evicted")
        inst.stopped_at = self.os.now()
        self._fail_waiters(inst, EngineFailed(f"{inst.id} was evicted before it was ready"))
        self._persist(inst)
        report["seconds"] = round(time.monotonic() - t0, 3)
        report["state"] = str(inst.state)
        self.bus.publish(
            "evict",
            f"{inst.id}: evicted in {report['seconds']:.1f}s "
            f"({', '.join(result['signals']) or 'already gone'})",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={k: v for k, v in report.items() if k != "processes"},
        )
        return report

    async def _drain(self, inst: Instance, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            engine_inflight = await self.engine_inflight(inst)
            total = (engine_inflight or 0) + self.gateway_inflight(inst.id)
            if total == 0:
                return True
            if time.monotonic() >= deadline or self._exited(inst):
                return False
            await asyncio.sleep(0.25)

    async def engine_inflight(self, inst: Instance) -> int | None:
        """Running + waiting requests from the engine's own /metrics (None if unreadable)."""
        from studioctl.engine_metrics import summarize

        text = await readiness.fetch_text(
            self._session, inst.base_url + "/metrics", headers=inst.auth_headers
        )
        if text is None:
            return None
        snap = summarize(inst.recipe.backend, text)
        return int((snap.requests_running or 0) + (snap.requests_waiting or 0))

    def _tree_alive(self, inst: Instance) -> bool:
        return any(self.os.is_alive(p, c) for p, c in inst.tree.items())

    def _refresh_tree(self, inst: Instance) -> None:
        if inst.pid is None:
            return
        before = len(inst.tree)
        for p in self.os.tree(inst.pid):
            inst.tree.setdefault(p.pid, p.create_time)
        if len(inst.tree) != before:
            self._persist(inst)

    async def _terminate(self, inst: Instance, *, grace: float) -> dict[str, Any]:
        """SIGTERM the group, SIGKILL after ``grace``, then verify the whole tree is gone."""
        return await terminate(
            self.os,
            pid=inst.pid,
            pgid=inst.pgid,
            recorded=inst.tree,
            spawned=inst.spawned,
            grace=grace,
        )

    # ------------------------------------------------------------------ switch

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
    ) -> dict[str, Any]:
        src = self.get(frm)
        loaded = self._load_recipe(to) if isinstance(to, str) else to
        recipe = placement.placed(loaded, self.settings.engines.host)
        if recipe.id == src.recipe.id:
            raise UsageError(f"{frm} already runs recipe {recipe.id}; nothing to switch")
        new_gpus = list(gpus) if gpus is not None else list(recipe.gpus)
        visible = await self._visible_gpus()
        # Sharing a GPU with the old engine: it must go first (both would not fit). Anyone
        # else in the way: refuse before touching the old one.
        with_src = placement.conflicts(
            [placement.Resident(src.id, src.recipe.id, tuple(src.gpus))], new_gpus, visible
        )
        overlap = list(with_src[0].gpus) if with_src else []
        _refuse_shared_gpus(
            recipe.id, placement.conflicts(self.residents(exclude=src.id), new_gpus, visible)
        )
        new_port = port if port is not None else recipe.port
        # The same fixed port cannot be held twice either: evict first then.
        same_port = new_port is not None and new_port == src.port
        resources = {
            f"recipe:{src.recipe.id}",
            f"recipe:{recipe.id}",
            f"instance:{src.id}",
            *(f"gpu:{g}" for g in placement.gpu_set(src.gpus, visible)),
            *(f"gpu:{g}" for g in placement.gpu_set(new_gpus, visible)),
        }
        t0 = time.monotonic()
        report: dict[str, Any] = {
            "from": src.id,
            "to_recipe": recipe.id,
            "order": "evict-then-launch" if overlap or same_port else "launch-then-evict",
            "shared_gpus": overlap,
        }
        async with self.locks.hold(resources, f"switch {src.id} -> {recipe.id}", wait=lock_wait):
            if overlap or same_port:
                t = time.monotonic()
                report["evict"] = await self._evict(
                    src, drain_timeout=drain_timeout, grace=grace, force=False
                )
                report["evict_s"] = round(time.monotonic() - t, 3)
                gap_start = t + report["evict"].get("drain_s", 0.0)
                t = time.monotonic()
                inst = self._start_instance(
                    recipe, port=port, gpus=new_gpus, force=False, timeout=timeout, visible=visible
                )
                await self.wait_ready(inst)
                report["launch_s"] = round(time.monotonic() - t, 3)
                report["gap_s"] = round(time.monotonic() - gap_start, 3)
            else:
                t = time.monotonic()
                # No GPU shared with the old one (checked above), nor with anyone else.
                inst = self._start_instance(
                    recipe, port=port, gpus=new_gpus, force=False, timeout=timeout, visible=visible
                )
                await self.wait_ready(inst)
                report["launch_s"] = round(time.monotonic() - t, 3)
                t = time.monotonic()
                report["evict"] = await self._evict(
                    src, drain_timeout=drain_timeout, grace=grace, force=False
                )
                report["evict_s"] = round(time.monotonic() - t, 3)
                report["gap_s"] = 0.0
        report["instance"] = inst.to_dict()
        report["seconds"] = round(time.monotonic() - t0, 3)
        self.bus.publish(
            "switch",
            f"switched {src.id} -> {inst.id} in {report['seconds']:.1f}s ({report['order']})",
            instance_id=inst.id,
            recipe_id=recipe.id,
            data={k: v for k, v in report.items() if k not in ("instance", "evict")},
        )
        return report

    # ------------------------------------------------------------------ adoption

    async def reconcile(self) -> None:
        """Daemon start: adopt live instances from the store; mark dead ones crashed."""
        from studioctl.lifecycle.adoption import reconcile

        await reconcile(self)

    async def adopt(self, pid: int, recipe_id: str, *, port: int | None = None) -> Instance:
        """Take over an engine server studioctl did not start."""
        from studioctl.lifecycle.adoption import adopt

        return await adopt(self, pid, recipe_id, port=port)

    def foreign_servers(self) -> builtins.list[dict[str, Any]]:
        """vLLM/SGLang servers running on this host that studioctl does not manage."""
        from studioctl.lifecycle.adoption import foreign_servers

        return foreign_servers(self)

    # ------------------------------------------------------------------ housekeeping

    def prune_logs(self, retention_days: float) -> builtins.list[Path]:
        """Delete instance logs (and their rotations) untouched for ``retention_days``,
        except those of instances that still hold a process."""
        keep = {
            i.log_path.name
            for i in self.instances.values()
            if i.state in ACTIVE or i.state == State.CRASHED
        }
        cutoff = self.os.now() - retention_days * 86400
        removed: builtins.list[Path] = []
        folder = paths.instance_log_dir()
        if not folder.is_dir():
            return removed
        for p in folder.iterdir():
            base = p.name.split(".log")[0] + ".log"
            try:
                if base in keep or p.stat().st_mtime >= cutoff:
                    continue
                p.unlink()
                removed.append(p)
            except OSError:
                continue
        return removed

    # ------------------------------------------------------------------ internals

    def _set_state(self, inst: Instance, new: State, reason: str) -> None:
        old = inst.state
        check(old, new, instance_id=inst.id)
        if new in (State.READY, State.FAILED, State.STOPPED, State.CRASHED):
            # Start-up is over: the engine read its key file and printed what it prints.
            self._scrub_log(inst)
            with contextlib.suppress(OSError):
                key_file_path(inst.id).unlink(missing_ok=True)
        inst.state = new
        inst.reason = reason
        ts = self.os.now()
        if new == State.STOPPED:
            inst.stopped_at = ts
        self.repo.record_transition(inst.id, str(old), str(new), reason, ts)
        self._persist(inst)
        self.bus.publish(
            "state",
            f"{inst.id}: {old} -> {new}" + (f" ({reason})" if reason else ""),
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"from": str(old), "to": str(new), "reason": reason},
        )
        self._changed()

    def _persist(self, inst: Instance) -> None:
        self.repo.update(inst.id, **inst.stored_fields())

    def _scrub_log(self, inst: Instance) -> None:
        """Mask the engine's key wherever the engine printed it into its log."""
        logfiles.scrub(inst.log_path, inst.api_key, start=inst.log_offset)

    def _log_tail(self, inst: Instance) -> builtins.list[str]:
        """The log's last lines for an error message, the key masked."""
        self._scrub_log(inst)
        lines = logfiles.tail_lines(inst.log_path, LOG_TAIL_LINES)
        return [redact(line, inst.api_key) for line in lines]

    def _record_launch(self, inst: Instance, outcome: str) -> None:
        if inst.started_at is None:
            return
        with contextlib.suppress(Exception):
            self.launches.record(
                inst.recipe.id,
                inst.id,
                inst.started_at,
                outcome,
                self.os.now() - inst.started_at,
                dict(inst.stages),
            )

    def _changed(self) -> None:
        for fn in self.on_change:
            try:
                fn()
            except Exception:
                log.exception("on_change callback failed")

    def _rotate_log(self, inst: Instance) -> None:
        """Copy-and-truncate rotation: the engine keeps its O_APPEND descriptor."""
        max_bytes = self.settings.logs.max_bytes
        backups = self.settings.logs.backups
        try:
            if inst.log_path.stat().st_size <= max_bytes:
                return
        except OSError:
            return
        for i in range(backups - 1, 0, -1):
            src = inst.log_path.with_name(f"{inst.log_path.name}.{i}")
            if src.exists():
                src.replace(inst.log_path.with_name(f"{inst.log_path.name}.{i + 1}"))
        if backups > 0:
            shutil.copyfile(inst.log_path, inst.log_path.with_name(f"{inst.log_path.name}.1"))
        with open(inst.log_path, "r+b") as f:
            f.truncate(0)


def _refuse_shared_gpus(recipe_id: str, found: builtins.list[placement.Conflict]) -> None:
    """ConflictError (exit 5) naming the first instance in the way and the GPU(s)."""
    if not found:
        return
    c = found[0]
    raise ConflictError(
        c.message(),
        code="gpus_busy",
        hint=f"evict it first, use `studioctl switch {c.instance_id} {recipe_id}`, "
        "or pass --force to run both",
        details={
            "conflicts": [
                {"instance": x.instance_id, "recipe": x.recipe_id, "gpus": list(x.gpus)}
                for x in found
            ]
        },
    )


def _nvml_gpu_count() -> int:
    from studioctl import gpu

    return gpu.device_count()


def _write_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by this user only (dir 0700, file 0600)."""
    paths.ensure_dir(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of another mode is made private too
        os.write(fd, content.encode())
    finally:
        os.close(fd)
