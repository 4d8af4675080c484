"""Starting an engine's process: its key file, a marker line in its log, the spawn itself.

Used for a launch (``first``) and for every restart after a crash; the instance's record
and events follow through the registry.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from studioctl import paths
from studioctl.errors import EngineFailed
from studioctl.lifecycle.runtime import key_file_path, new_api_key
from studioctl.states import State

if TYPE_CHECKING:
    from studioctl.lifecycle.registry import InstanceRegistry
    from studioctl.lifecycle.runtime import Instance


def spawn(reg: InstanceRegistry, inst: Instance, *, first: bool) -> None:
    """Start ``inst``'s engine (``first``: a launch, else a restart, which moves it back to
    STARTING). EngineFailed when it cannot be started at all."""
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
            write_private(Path(path), content)
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
        spawned = reg.os.spawn(cmd.argv, env=cmd.env, log_path=inst.log_path)
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
    inst.started_at = reg.os.now()
    inst.ready_at = None
    inst.stages = {"started": 0.0}
    inst.exit_code = None
    if not first:
        reg.set_state(inst, State.STARTING, f"restart {inst.restarts}")
    else:
        reg.persist(inst)
        reg.bus.publish(
            "launch",
            f"{inst.id}: started pid {inst.pid} on port {inst.port}",
            instance_id=inst.id,
            recipe_id=inst.recipe.id,
            data={"pid": inst.pid, "port": inst.port, "command": cmd.shell()},
        )
    reg.bus.publish(
        "stage",
        f"{inst.id}: process started",
        instance_id=inst.id,
        recipe_id=inst.recipe.id,
        data={
            "stage": "started",
            "label": "process started",
            "t": 0.0,
            "eta": reg.eta(inst.recipe.id),
        },
    )
    reg.changed()


def write_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by this user only (dir 0700, file 0600)."""
    paths.ensure_dir(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of another mode is made private too
        os.write(fd, content.encode())
    finally:
        os.close(fd)
