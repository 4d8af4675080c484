"""Watching each instance through its life: one asyncio task per instance.

    starting/loading ──probe 200──► ready ──exit or N failed probes──► crashed ──policy──►
        starting (after backoff) | failed

While an engine starts, its log is read for launch stages and its readiness paths are
probed; once ready, its exit is noticed within a second and its health probed every
``health_interval_s``; its log is rotated and an idle one unloaded (``idle_unload_s``);
after a crash the restart policy decides. Every change goes through the registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from studioctl.errors import ConflictError, EngineFailed, OperationTimeout, StudioError
from studioctl.lifecycle import logfiles, readiness
from studioctl.lifecycle.restart import RestartPolicy, decide
from studioctl.lifecycle.spawn import spawn
from studioctl.lifecycle.terminate import terminate
from studioctl.states import State

if TYPE_CHECKING:
    from studioctl.lifecycle.engine_http import EngineHttp
    from studioctl.lifecycle.hooks import SupervisorHooks
    from studioctl.lifecycle.registry import InstanceRegistry
    from studioctl.lifecycle.runtime import Instance
    from studioctl.lifecycle.terminate import Termination
    from studioctl.settings import LogSettings

log = logging.getLogger("studioctl.supervisor")

PROBE_INTERVAL_S = 0.25  # readiness probe while starting
TREE_CHECK_S = 5.0  # how often a ready engine's process tree is re-read and its log rotated


class Monitor:
    def __init__(
        self,
        reg: InstanceRegistry,
        *,
        http: EngineHttp,
        hooks: SupervisorHooks,
        policy: RestartPolicy,
        logs: LogSettings,
        health_interval_s: float,
        health_failures: int,
        unload: Callable[[str], Awaitable[object]],
    ) -> None:
        """``unload``: how an idle instance is evicted (the supervisor's ``evict``, which
        takes the operation locks; ConflictError when another operation holds it)."""
        self.reg = reg
        self.http = http
        self.hooks = hooks
        self.policy = policy
        self.logs = logs
        self.health_interval_s = health_interval_s
        self.health_failures = health_failures
        self._unload = unload
        self._closing = False

    def start(self, inst: Instance, *, timeout: float | None = None) -> None:
        """Watch ``inst`` from now on (``timeout``: its readiness timeout, else the recipe's)."""
        inst.task = asyncio.create_task(self.run(inst, timeout=timeout), name=f"monitor {inst.id}")

    def close(self) -> None:
        """Daemon shutdown: the loops end at their next turn (the caller cancels them)."""
        self._closing = True

    async def run(self, inst: Instance, *, timeout: float | None = None) -> None:
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
            self.reg.bus.publish("error", f"{inst.id}: monitor error: {exc}", instance_id=inst.id)
            self.reg.fail_waiters(inst, StudioError(f"{inst.id}: internal error: {exc!r}"))

    async def terminate(self, inst: Instance, *, grace: float) -> Termination:
        """SIGTERM the group, SIGKILL after ``grace``, then verify the whole tree is gone."""
        return await terminate(
            self.reg.os,
            pid=inst.pid,
            pgid=inst.pgid,
            recorded=inst.tree,
            spawned=inst.spawned,
            grace=grace,
        )

    # ------------------------------------------------------------------ starting

    async def _await_ready(self, inst: Instance, *, timeout: float | None) -> None:
        osp = self.reg.os
        start = inst.started_at or osp.now()
        limit = timeout if timeout is not None else inst.recipe.readiness_timeout_s
        follower = logfiles.LogFollower(inst.log_path, offset=inst.log_offset)
        tracker = readiness.StageTracker(inst.engine.stages)
        tracker.reached.update(inst.stages)
        probe_paths = (inst.engine.health_path, *inst.engine.ready_paths)
        while True:
            t = osp.now() - start
            lines = follower.read_new()
            if inst.api_key and any(inst.api_key in line for line in lines):
                self.reg.scrub_log(inst)  # the engine printed its key (SGLang's server_args)
            self._stages(inst, tracker, lines, t)
            if await readiness.probe(self.http, inst.base_url, probe_paths, api_key=inst.api_key):
                # The log may hold the last stage lines (SGLang's "fired up" comes late).
                self._stages(inst, tracker, follower.read_new(), osp.now() - start)
                self._ready(inst, start)
                return
            if self.reg.exited(inst):
                code = inst.exit_code
                await self._failed_start(
                    inst, f"exited with code {code}" if code is not None else "process exited"
                )
                return
            if t > limit:
                await self._timed_out(inst, limit)
                return
            self.reg.refresh_tree(inst)
            await asyncio.sleep(PROBE_INTERVAL_S)

    def _stages(
        self, inst: Instance, tracker: readiness.StageTracker, lines: list[str], t: float
    ) -> None:
        for stage in tracker.feed(lines, t):
            inst.stages[stage.name] = round(t, 3)
            self.reg.publish_stage(inst, stage)
            if inst.state == State.STARTING:
                self.reg.set_state(inst, State.LOADING, stage.label)

    def _ready(self, inst: Instance, start: float) -> None:
        self.reg.refresh_tree(inst)
        inst.ready_at = self.reg.os.now()
        took = inst.ready_at - start
        inst.stages["ready"] = round(took, 3)
        first_ready = not inst.ever_ready
        inst.ever_ready = True
        self.reg.set_state(inst, State.READY, f"ready in {took:.1f}s")
        self.reg.record_launch(inst, "ready")
        if inst.ready is not None and not inst.ready.done():
            inst.ready.set_result(None)
        if first_ready:
            self.reg.bus.publish(
                "ready",
                f"{inst.id}: ready on port {inst.port} in {took:.1f}s",
                instance_id=inst.id,
                recipe_id=inst.recipe.id,
                data={"port": inst.port, "seconds": took},
            )

    async def _timed_out(self, inst: Instance, limit: float) -> None:
        await self.terminate(inst, grace=5.0)
        tail = self.reg.log_tail(inst)
        self.reg.set_state(inst, State.FAILED, f"not ready after {limit:g}s")
        self.reg.record_launch(inst, "timeout")
        self.reg.fail_waiters(
            inst,
            OperationTimeout(
                f"{inst.id} was not ready after {limit:g}s; stopped it",
                hint=f"see `studioctl logs {inst.id}`; raise readiness_timeout_s "
                "or --timeout if it is just slow",
                details={"log_tail": tail, "instance": inst.id},
            ),
        )

    async def _failed_start(self, inst: Instance, why: str) -> None:
        # Collect anything of the tree the dead parent left behind.
        await self.terminate(inst, grace=2.0)
        tail = self.reg.log_tail(inst)
        if not inst.ever_ready:
            self.reg.set_state(inst, State.FAILED, f"{why} before it was ready")
            self.reg.record_launch(inst, "failed")
            self.reg.fail_waiters(
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
            self.reg.crashed(inst, f"{why} while restarting")

    # ------------------------------------------------------------------ ready

    async def _watch(self, inst: Instance) -> None:
        failures = 0
        last_tree = last_probe = 0.0
        probe_paths = (inst.engine.health_path,)
        while inst.state in (State.READY, State.DRAINING):
            # Exits are noticed within a second; health is probed every health_interval_s.
            await asyncio.sleep(min(self.health_interval_s, 1.0))
            if inst.state not in (State.READY, State.DRAINING):
                return
            if self.reg.exited(inst):
                code = inst.exit_code
                self.reg.crashed(
                    inst, f"exited with code {code}" if code is not None else "process is gone"
                )
                return
            now = self.reg.os.now()
            if now - last_tree >= TREE_CHECK_S:
                last_tree = now
                self.reg.refresh_tree(inst)
                logfiles.rotate(
                    inst.log_path, max_bytes=self.logs.max_bytes, backups=self.logs.backups
                )
            idle = self._idle_for(inst, now)
            if idle is not None and await self._unload_idle(inst, idle):
                return
            if now - last_probe < self.health_interval_s * 0.999:
                continue
            last_probe = now
            if await readiness.probe(self.http, inst.base_url, probe_paths, api_key=inst.api_key):
                failures = 0
            else:
                failures += 1
                if failures >= self.health_failures:
                    self.reg.crashed(inst, f"health probe failed {failures} times in a row")
                    return

    def _idle_for(self, inst: Instance, now: float) -> float | None:
        """Seconds without a gateway request, once past the recipe's ``idle_unload_s``."""
        limit = inst.recipe.idle_unload_s
        if not limit or inst.state != State.READY or inst.ready_at is None:
            return None
        if self.hooks.inflight(inst.id):
            return None
        idle = now - max(inst.ready_at, self.hooks.last_activity(inst.id) or 0.0)
        return idle if idle >= limit else None

    async def _unload_idle(self, inst: Instance, idle: float) -> bool:
        """Evict an idle instance (draining any direct clients); False if another
        operation holds it (tried again at the next check)."""
        self.reg.bus.publish(
            "idle_unload",
            f"{inst.id}: no request for {idle:.0f}s (idle_unload_s "
            f"{inst.recipe.idle_unload_s:g}): evicting",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"idle_s": idle},
        )
        try:
            await self._unload(inst.id)
        except ConflictError:
            return False
        return True

    # ------------------------------------------------------------------ crashed

    async def _after_crash(self, inst: Instance) -> None:
        # Whatever is left of the tree goes (a hung API server, orphaned workers).
        await self.terminate(inst, grace=5.0)
        if inst.desired == "stopped":
            self.reg.set_state(inst, State.STOPPED, "stopped while crashed")
            return
        osp = self.reg.os
        d = decide(
            self.policy, inst.recipe.restart, inst.crash_times, osp.now(), exit_code=inst.exit_code
        )
        if not d.restart:
            self.reg.set_state(inst, State.FAILED, d.reason)
            self.reg.fail_waiters(inst, EngineFailed(f"{inst.id}: {d.reason}"))
            return
        inst.next_restart_at = osp.now() + d.delay_s
        self.reg.persist(inst)
        self.reg.bus.publish(
            "restart_scheduled",
            f"{inst.id}: {d.reason}",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"delay_s": d.delay_s, "restarts": inst.restarts},
        )
        while (left := inst.next_restart_at - osp.now()) > 0:
            await asyncio.sleep(min(left, 0.5))
            if inst.desired == "stopped" or inst.state != State.CRASHED:
                return
        inst.next_restart_at = None
        inst.restarts += 1
        try:
            holder = osp.port_holder(inst.host, inst.port)
            if holder is not None:
                raise ConflictError(f"port {inst.port} is taken by {holder}")
            spawn(self.reg, inst, first=False)
        except StudioError as exc:
            inst.crash_times.append(osp.now())
            self.reg.bus.publish(
                "error", f"{inst.id}: restart failed: {exc.message}", instance_id=inst.id
            )
            self.reg.persist(inst)
