"""The control API's answers, as the client reads them: TypedDicts, so ``studioctl status``
and ``ps`` (polled by scripts, timed by benchmarks/cli_startup.py) get typed fields for the
price of a dict, without importing pydantic. The daemon builds these answers from the
objects' own ``to_dict()``; ``total=False`` where a key is present only sometimes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias, TypedDict

if TYPE_CHECKING:  # for the type checker alone: importing pydantic costs the fast path ~40 ms
    from pydantic import JsonValue


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
    operations: list[dict[str, JsonValue]]


class InstanceList(TypedDict, total=False):
    instances: list[InstanceInfo]
    foreign: list[dict[str, JsonValue]]


#: What an evict or a switch reports (``Supervisor.evict`` / ``switch``): figures that vary
#: with what happened (drained or not, VRAM released or not), read by key and printed.
Report: TypeAlias = "dict[str, JsonValue]"


class ShutdownAnswer(TypedDict):
    ok: bool
    pid: int
    stop_engines: bool


#: One line of a streamed launch or switch: ``{"type": "event", ...}``, then
#: ``{"type": "result", "result": ...}`` or ``{"type": "error", "status": ..., "error": ...}``.
StreamMessage: TypeAlias = "dict[str, JsonValue]"
