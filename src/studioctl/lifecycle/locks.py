"""Resource locks for lifecycle operations.

A launch, evict or switch claims the resources it touches (``recipe:<id>``, ``gpu:<n>``,
``instance:<id>``). A second operation on any of the same resources is refused at once with
what is in progress (HTTP 409 / exit 5), or waits for it when asked to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from studioctl.errors import ConflictError


@dataclass
class _Held:
    description: str
    resources: frozenset[str]
    since: float = field(default_factory=time.monotonic)


class ResourceLocks:
    def __init__(self) -> None:
        self._held: list[_Held] = []
        self._changed = asyncio.Condition()

    def _conflict(self, wanted: frozenset[str]) -> _Held | None:
        for h in self._held:
            if h.resources & wanted:
                return h
        return None

    def in_progress(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {"operation": h.description, "resources": sorted(h.resources), "for_s": now - h.since}
            for h in self._held
        ]

    @asynccontextmanager
    async def hold(
        self, resources: Iterable[str], description: str, *, wait: bool = False
    ) -> AsyncIterator[None]:
        wanted = frozenset(resources)
        async with self._changed:
            while (busy := self._conflict(wanted)) is not None:
                if not wait:
                    shared = ", ".join(sorted(busy.resources & wanted))
                    raise ConflictError(
                        f"{busy.description} is in progress "
                        f"(for {time.monotonic() - busy.since:.0f}s, on {shared})",
                        code="operation_in_progress",
                        hint="wait for it, or pass --wait to queue behind it",
                    )
                await self._changed.wait()
            held = _Held(description, wanted)
            self._held.append(held)
        try:
            yield
        finally:
            async with self._changed:
                self._held.remove(held)
                self._changed.notify_all()
