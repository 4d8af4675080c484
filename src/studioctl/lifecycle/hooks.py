"""What the supervisor asks of the rest of the daemon, given to it at construction.

The supervisor sits below the gateway and telemetry, so it never imports them: the daemon
passes one object that answers for them. ``NullHooks`` is the answer when there is neither
(tests, tools): no requests in flight, no activity, nobody to tell, no GPU memory to wait for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from studioctl.lifecycle.runtime import Instance


class SupervisorHooks(Protocol):
    def inflight(self, instance_id: str) -> int:
        """Gateway requests in flight to the instance (a drain waits for them)."""
        ...

    def last_activity(self, instance_id: str) -> float | None:
        """``time.time()`` when the gateway last finished a request to it (idle_unload_s)."""
        ...

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        """Every instance the supervisor knows, stopped ones included, after any change."""
        ...

    async def vram_released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        """After an evict's processes are gone: wait until their GPU memory is freed; the
        figures join the evict report (None: no GPUs, nothing to wait for)."""
        ...


class NullHooks:
    """No gateway, no telemetry."""

    def inflight(self, instance_id: str) -> int:
        return 0

    def last_activity(self, instance_id: str) -> float | None:
        return None

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        return None

    async def vram_released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        return None
