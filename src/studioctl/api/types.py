"""The control API's answers, as the client reads them: TypedDicts, so ``studioctl status``
and ``ps`` (polled by scripts, timed by benchmarks/cli_startup.py) get typed fields for the
price of a dict, without importing pydantic. The daemon builds these answers from the
objects' own ``to_dict()``; ``total=False`` where a key is present only sometimes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, TypedDict

if TYPE_CHECKING:  # for the type checker alone: importing pydantic costs the fast path ~40 ms
    from pydantic import JsonValue


#: A JSON object as the daemon sent it, for answers read key by key (tenants, usage).
JsonObject: TypeAlias = "dict[str, JsonValue]"


class VersionInfo(TypedDict):
    version: str
    api_version: int
    pid: int
    started_at: float


class InstanceInfo(TypedDict, total=False):
    id: str
    recipe: str
    backend: str
    model: str
    served_name: str
    model_names: list[str]
    host: str
    port: int
    url: str
    pid: int | None
    state: str
    reason: str | None
    uptime_s: float | None
    started_at: float | None
    ready_at: float | None
    restarts: int
    gpus: list[int]
    log_path: str
    stages: dict[str, float]
    adopted: bool
    foreign: bool
    next_restart_at: float | None
    processes: list[dict[str, JsonValue]]
    vram_bytes: int | None
    queued: int  # gateway requests waiting for one of its model names


class QueuedModel(TypedDict):
    """A model with requests waiting in the gateway; ``instance`` None: none serves it yet
    (its load is requested)."""

    model: str
    recipe: str | None
    instance: str | None
    queued: int


class DaemonStatus(TypedDict):
    pid: int
    version: str
    api_version: int
    uptime_s: float
    socket: str


class GatewayStatus(TypedDict, total=False):
    url: str | None
    inflight: int
    health: str


class Status(TypedDict):
    daemon: DaemonStatus
    gateway: GatewayStatus
    instances: list[InstanceInfo]
    queued: list[QueuedModel]
    operations: list[dict[str, JsonValue]]


class InstanceList(TypedDict, total=False):
    instances: list[InstanceInfo]
    queued: list[QueuedModel]
    foreign: list[ForeignServer]


class ProcessReport(TypedDict):
    pid: int
    name: str
    how: str


class ForeignServer(TypedDict):
    pid: int
    backend: str
    port: int | None
    command: str


class Report(TypedDict, total=False):
    """What an evict reports (``Supervisor.evict``); keys vary with what happened (drained
    or not, already stopped, VRAM released or not: only with NVML)."""

    instance: str
    recipe: str
    state_before: str
    state: str
    already: str
    signals: list[str]
    processes: list[ProcessReport]
    leftover: list[ProcessReport]
    drained: bool | None
    drain_s: float
    seconds: float
    vram_bytes: int | None
    vram_released: bool
    vram_wait_s: float
    vram_still_held: int | None
    vram_pids: list[int]


class UnloadAnswer(TypedDict, total=False):
    """``studioctl unload``: the evict report of each instance that left (none: ``already``
    is ``"not running"``)."""

    model: str
    recipe: str
    unloaded: list[Report]
    already: str


class PreloadAnswer(TypedDict, total=False):
    """``studioctl preload``: ``state`` is ``ready`` once loaded; with ``wait`` false also
    ``starting``, ``loading`` or ``requested`` (no instance yet). ``already``: it was
    ready before the preload."""

    model: str
    recipe: str
    state: str
    instance: str | None
    seconds: float
    already: str


class ShutdownAnswer(TypedDict):
    ok: bool
    pid: int
    stop_engines: bool


#: One line of a streamed launch or switch: ``{"type": "event", ...}``, then
#: ``{"type": "result", "result": ...}`` or ``{"type": "error", "status": ..., "error": ...}``.
StreamMessage: TypeAlias = "dict[str, JsonValue]"


class EngineKey(TypedDict):
    """``GET /instances/{target}/engine-key`` (control socket only): an engine's base URL
    and the API key the daemon started it with (None: an engine started without one)."""

    id: str
    url: str
    api_key: str | None
