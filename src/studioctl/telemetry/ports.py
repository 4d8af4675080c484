"""What telemetry needs from the rest of the daemon, as protocols (given to its constructor).

Telemetry imports no supervisor and no HTTP client: the composition root passes objects that
have these shapes (the supervisor; the one engine-HTTP session of the daemon).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from studioctl.lifecycle.runtime import Instance


class EngineReply(Protocol):
    """An engine's answer: HTTP status and the whole body."""

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...


class EngineHttp(Protocol):
    """GET toward an engine (control-plane calls: here, ``/metrics`` scrapes).

    Raises an ``OSError`` (``TimeoutError`` included) when the engine does not answer.
    """

    async def get(
        self, url: str, *, api_key: str | None = None, timeout_s: float
    ) -> EngineReply: ...


class InstanceSource(Protocol):
    """The supervisor, as telemetry sees it: the instances it runs, and where the GPU memory
    measured for one is recorded (the supervisor owns its instances; status shows the figure,
    evict reports it as what the instance held)."""

    @property
    def instances(self) -> Mapping[str, Instance]: ...

    def record_vram(self, instance_id: str, vram_bytes: int | None) -> None: ...
