"""The in-memory view of one instance, and how it is stored and shown."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl.lifecycle.osproc import Spawned
from studioctl.states import State

if TYPE_CHECKING:
    from studioctl.engines.base import Engine
    from studioctl.recipes import Recipe
    from studioctl.store.instances import InstanceRow


@dataclass
class Instance:
    """One running (or resting) recipe. Changed only by the supervisor."""

    id: str
    recipe: Recipe
    engine: Engine
    host: str
    port: int
    gpus: list[int]
    log_path: Path
    state: State = State.STARTING
    reason: str = ""
    pid: int | None = None
    pgid: int | None = None
    create_time: float | None = None
    spawned: Spawned | None = None
    # Every process seen in the tree (pid → create time): verified gone at stop.
    tree: dict[int, float] = field(default_factory=dict)
    restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    desired: str = "running"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ready_at: float | None = None
    stopped_at: float | None = None
    next_restart_at: float | None = None
    stages: dict[str, float] = field(default_factory=dict)  # stage name → seconds after start
    adopted: bool = False
    foreign: bool = False  # adopted with `studioctl adopt PID`: not started by studioctl
    ever_ready: bool = False
    exit_code: int | None = None
    # The engine's own API key, generated at launch and stored with the instance (a restart
    # or an adoption keeps it). None: an engine started without one (before keys, foreign).
    # Never shown: not in to_dict() nor repr.
    api_key: str | None = field(default=None, repr=False)
    # Runtime only (never stored):
    task: asyncio.Task[None] | None = None
    ready: asyncio.Future[None] | None = None
    log_offset: int = 0
    # GPU memory of the process tree, telemetry's latest reading (Supervisor.record_vram;
    # None: no GPU/NVML). An evict reports it as what the engine held.
    vram_bytes: int | None = None

    @property
    def recipe_id(self) -> str:
        return self.recipe.id

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def tree_list(self) -> list[dict[str, Any]]:
        return [{"pid": p, "create_time": c} for p, c in sorted(self.tree.items())]

    def stored_fields(self) -> dict[str, Any]:
        """The fields the InstanceRepo keeps (everything needed to adopt after a restart)."""
        return {
            "recipe_id": self.recipe.id,
            "backend": self.recipe.backend,
            "model": self.recipe.model,
            "served_name": self.recipe.served_name,
            "host": self.host,
            "port": self.port,
            "pid": self.pid,
            "create_time": self.create_time,
            "pgid": self.pgid,
            "recipe_hash": self.recipe.content_hash(),
            "recipe_json": self.recipe.model_dump_json(),
            "log_path": str(self.log_path),
            "gpus": list(self.gpus),
            "state_reason": self.reason,
            "restarts": self.restarts,
            "crash_times": list(self.crash_times),
            "desired": self.desired,
            "process_tree": self.tree_list(),
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "stopped_at": self.stopped_at,
            "next_restart_at": self.next_restart_at,
            "api_key": self.api_key,
        }

    @property
    def auth_headers(self) -> dict[str, str]:
        """What every call to the engine sends (probes, scrapes): its key, if it has one."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def to_record(self) -> InstanceRow:
        """A new store row (state included: the store's first history entry)."""
        from studioctl.store.instances import InstanceRow

        return InstanceRow(
            id=self.id, state=self.state, created_at=self.created_at, **self.stored_fields()
        )

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        uptime = (now - self.ready_at) if (self.ready_at and self.state == State.READY) else None
        return {
            "id": self.id,
            "recipe": self.recipe.id,
            "backend": self.recipe.backend,
            "model": self.recipe.model,
            "served_name": self.recipe.served_name,
            "model_names": self.recipe.model_names,
            "host": self.host,
            "port": self.port,
            "url": self.base_url,
            "pid": self.pid,
            "state": str(self.state),
            "reason": self.reason,
            "uptime_s": uptime,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "restarts": self.restarts,
            "gpus": list(self.gpus),
            "log_path": str(self.log_path),
            "stages": dict(self.stages),
            "adopted": self.adopted,
            "foreign": self.foreign,
            "next_restart_at": self.next_restart_at,
            "processes": self.tree_list(),
            "vram_bytes": self.vram_bytes,
        }


def new_api_key() -> str:
    """A fresh engine API key. The prefix keeps it from starting with ``-`` (an argparse
    option) and makes it recognisable to secret scanners."""
    return "sce-" + secrets.token_urlsafe(32)


def key_file_path(instance_id: str) -> Path:
    """Where an engine that reads its key from a file (SGLang) finds it while it starts
    (written 0600 in a 0700 folder; removed once start-up is over)."""
    from studioctl import paths

    return paths.state_dir() / "engine-keys" / f"{instance_id}.yaml"


def recipe_from_json(text: str) -> Recipe:
    from studioctl.recipes import Recipe

    return Recipe.model_validate(json.loads(text))
