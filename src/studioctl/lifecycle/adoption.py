"""Adoption: taking over engine processes the daemon did not start in this run.

On daemon start (``reconcile``), every stored instance whose process is still alive with the
same pid and create time is adopted — readiness probed again, log following resumed — and a
dead one is marked crashed and handed to its restart policy. ``adopt`` takes over a vLLM or
SGLang server that studioctl never started; ``foreign_servers`` finds such servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.errors import ConflictError, NotFoundError, StudioError, UsageError
from studioctl.lifecycle.runtime import Instance, recipe_from_json
from studioctl.states import ACTIVE, State

if TYPE_CHECKING:
    from studioctl.lifecycle.monitor import Monitor
    from studioctl.lifecycle.registry import InstanceRegistry
    from studioctl.recipes import Recipe
    from studioctl.store.instances import InstanceRow

log = logging.getLogger("studioctl.supervisor")


async def reconcile(
    reg: InstanceRegistry,
    monitor: Monitor,
    finish_evict: Callable[[Instance], Awaitable[object]],
) -> None:
    """Daemon start: adopt live instances from the store; mark dead ones crashed.

    ``finish_evict`` stops an instance whose evict the daemon's exit cut short."""
    for rec in reg.repo.list(include_stopped=False):
        try:
            inst = _restored(rec)
        except Exception as exc:
            log.warning("cannot restore instance %s: %s", rec.id, exc)
            continue
        reg.add(inst, stored=True)
        inst.ready = asyncio.get_running_loop().create_future()
        if inst.state == State.FAILED:
            continue
        alive = inst.pid is not None and reg.os.is_alive(inst.pid, inst.create_time)
        if inst.state in ACTIVE and alive:
            with contextlib.suppress(OSError):
                inst.log_offset = inst.log_path.stat().st_size
            if inst.state in (State.DRAINING, State.STOPPING):
                # An evict was cut short by the daemon's exit: finish it.
                inst.desired = "stopped"
                inst.task = asyncio.create_task(_finish(finish_evict, inst))
                continue
            reg.bus.publish(
                "adopt",
                f"{inst.id}: adopted pid {inst.pid} ({inst.state}) after daemon restart",
                instance_id=inst.id,
                recipe_id=inst.recipe.id,
            )
        elif inst.state in ACTIVE:
            if inst.state == State.STOPPING or inst.desired == "stopped":
                reg.set_state(inst, State.STOPPED, "gone while the daemon was down")
                continue
            if not inst.ever_ready:
                reg.set_state(
                    inst, State.FAILED, "launch interrupted: process gone while the daemon was down"
                )
                continue
            reg.crashed(inst, "process gone while the daemon was down")
        monitor.start(inst)
    reg.changed()


def _restored(rec: InstanceRow) -> Instance:
    """The live view of a stored instance (its recipe as launched)."""
    from studioctl.engines import get_engine

    recipe = recipe_from_json(rec.recipe_json)
    return Instance(
        id=rec.id,
        recipe=recipe,
        engine=get_engine(recipe.backend),
        host=rec.host,
        port=rec.port,
        gpus=list(rec.gpus),
        log_path=Path(rec.log_path),
        state=State(rec.state),
        reason=rec.state_reason or "",
        pid=rec.pid,
        pgid=rec.pgid,
        create_time=rec.create_time,
        tree={int(p["pid"]): float(p["create_time"]) for p in rec.process_tree},
        restarts=rec.restarts,
        crash_times=list(rec.crash_times),
        desired=rec.desired,
        created_at=rec.created_at,
        started_at=rec.started_at,
        ready_at=rec.ready_at,
        stopped_at=rec.stopped_at,
        adopted=True,
        ever_ready=rec.ready_at is not None,
        api_key=rec.api_key,  # the key the engine was started with
    )


async def _finish(finish_evict: Callable[[Instance], Awaitable[object]], inst: Instance) -> None:
    with contextlib.suppress(StudioError):
        await finish_evict(inst)


async def adopt(
    reg: InstanceRegistry,
    monitor: Monitor,
    load_recipe: Callable[[str], Recipe],
    pid: int,
    recipe_id: str,
    *,
    port: int | None = None,
) -> Instance:
    """Take over an engine server studioctl did not start."""
    info = reg.os.info(pid)
    if info is None:
        raise NotFoundError(f"no process with pid {pid}")
    for other in reg.instances.values():
        if pid in other.tree and other.state in ACTIVE:
            raise ConflictError(f"pid {pid} already belongs to {other.id}")
    recipe = load_recipe(recipe_id)
    from studioctl.engines import get_engine

    port = port or _port_from_cmdline(info.cmdline) or recipe.port
    if port is None:
        raise UsageError(f"cannot tell which port pid {pid} listens on; pass --port")
    iid = reg.repo.next_id(recipe.id)
    log_path = _stdout_file(pid) or paths.instance_log_dir() / f"{iid}.log"
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError as exc:
        raise NotFoundError(f"pid {pid} exited") from exc
    inst = Instance(
        id=iid,
        recipe=recipe,
        engine=get_engine(recipe.backend),
        host=recipe.host,
        port=port,
        gpus=list(recipe.gpus),
        log_path=log_path,
        pid=pid,
        pgid=pgid,
        create_time=info.create_time,
        adopted=True,
        foreign=True,
    )
    inst.started_at = info.create_time
    inst.tree = {pid: info.create_time}
    with contextlib.suppress(OSError):
        inst.log_offset = log_path.stat().st_size
    reg.add(inst)
    reg.refresh_tree(inst)  # after the insert: it persists the tree it finds
    reg.bus.publish(
        "adopt",
        f"{iid}: adopted foreign pid {pid} as recipe {recipe.id}",
        instance_id=iid,
        recipe_id=recipe.id,
    )
    inst.ready = asyncio.get_running_loop().create_future()
    monitor.start(inst)
    return inst


def foreign_servers(reg: InstanceRegistry) -> list[dict[str, Any]]:
    """vLLM/SGLang servers running on this host that studioctl does not manage."""
    from studioctl.engines import get_engine

    ours: set[int] = set()
    for inst in reg.instances.values():
        if inst.state in ACTIVE:
            ours.update(inst.tree)
    out = []
    for backend in ("vllm", "sglang"):
        markers = get_engine(backend).process_markers
        for p in reg.os.scan(markers):
            if p.pid in ours or p.pid == os.getpid():
                continue
            try:
                if os.getpgid(p.pid) != p.pid and _parent_is_engine(p.pid, markers):
                    continue  # a worker of a server already listed
            except ProcessLookupError:
                continue
            out.append(
                {
                    "pid": p.pid,
                    "backend": backend,
                    "port": _port_from_cmdline(p.cmdline),
                    "command": " ".join(p.cmdline)[:200],
                    "managed": False,
                }
            )
    return out


def _port_from_cmdline(cmdline: Iterable[str]) -> int | None:
    args = list(cmdline)
    for i, a in enumerate(args):
        if a == "--port" and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if a.startswith("--port="):
            v = a.split("=", 1)[1]
            if v.isdigit():
                return int(v)
    return None


def _stdout_file(pid: int) -> Path | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None
    p = Path(target)
    return p if p.is_file() else None


def _parent_is_engine(pid: int, markers: tuple[str, ...]) -> bool:
    import psutil

    try:
        parent = psutil.Process(pid).parent()
        if parent is None:
            return False
        cmd = " ".join(parent.cmdline())
    except psutil.Error:
        return False
    return any(m in cmd for m in markers)
