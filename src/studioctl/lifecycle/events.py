"""The daemon's event log: stored in SQLite, fanned out live to subscribers (SSE, progress)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from studioctl.store.events import Event  # one event type, stored or live

__all__ = ["Event", "EventBus", "EventStore"]


class EventStore(Protocol):
    def append(
        self,
        kind: str,
        message: str,
        *,
        instance_id: str | None = None,
        recipe_id: str | None = None,
        data: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> int: ...


class EventBus:
    """Publish stores then fans out; a slow subscriber drops events rather than block."""

    def __init__(self, store: EventStore | None, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._subs: set[asyncio.Queue[Event]] = set()
        self._mem_id = 0

    def publish(
        self,
        kind: str,
        message: str,
        *,
        instance_id: str | None = None,
        recipe_id: str | None = None,
        data: dict[str, Any] | None = None,
        persist: bool = True,
    ) -> Event:
        ts = self._clock()
        if self._store is not None and persist:
            eid = self._store.append(
                kind, message, instance_id=instance_id, recipe_id=recipe_id, data=data, ts=ts
            )
        else:
            self._mem_id -= 1  # negative ids: live-only events (not stored)
            eid = self._mem_id
        ev = Event(eid, ts, kind, message, instance_id, recipe_id, data or {})
        for q in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(ev)
        return ev

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        self._subs.discard(q)
