"""Waiting rooms: requests that wait for their model to load, or for a gateway slot.

Two kinds of wait, both bounded (``depth`` waiters per room, ``timeout_s`` per waiter) and
both first in, first out. A model's room takes its recipe's ``queue_depth`` and
``queue_timeout_s`` when the recipe sets them (:class:`QueueRules`, by served name and alias,
refreshed with the recipes on disk), else the gateway's:

- **loading** (:meth:`ModelQueues.wait_for_model`): the route table refused a model that is
  starting or loading, or one the orchestrator is about to load (the ``want(model, ctx)``
  hook says so). The request waits in its model's room and is sent the moment the route
  table says the model is ready: the table calls :meth:`ModelQueues.routes_changed` on every
  change (``RouteTable.subscribe``), which wakes the room; nothing polls.
  Full → 503 ``queue_full``; timed out → 503 ``model_loading``; both with Retry-After.
- **busy** (:meth:`ModelQueues.park`, only with ``when_busy``, i.e.
  ``gateway.queue_when_busy``): every global slot (``gateway.max_concurrent``) is taken. The
  request parks until one is given back (accounting calls :meth:`ModelQueues.slot_freed`);
  one waiter is woken per freed slot. Per-tenant limits are checked before and answer 429 at
  once. Full → 503 ``queue_full``; timed out → the original 429 ``limit_concurrent``.

**In order** (``in_order``, i.e. ``scheduler.policy: fifo``, the strict FIFO baseline): no
request overtakes an older one for another model. While anything waits in a model room, a
request for a ready model waits too (:meth:`ModelQueues.wait_turn`; the gateway checks
``in_order and waiting`` on its fast path, nothing more); a waiter is sent only when no
older waiter, in any model room, is for another model; and a waiter leaving a room (sent,
timed out, gone) wakes the other rooms to look again.

Who holds what while waiting: a request queued for a loading model was admitted (it holds
its tenant's and the gateway's concurrency slot and spent its RPM token: a released waiter
is never refused by a limit it already passed, and one tenant can queue no more than its
``max_concurrent``); a parked request holds nothing of the limiter yet. Either way the
caller's ``finally`` gives back whatever was taken, on every path (timeout, disconnect,
drain, cancellation).

While a request waits, a watcher reads its client's side: a client that goes away leaves
the room at once (``ctx.gone``, its task cancelled); nothing is sent upstream. Every waiter
gets a short random request id (the gateway has none otherwise), listed with its tenant,
model and time waited by :meth:`ModelQueues.listing` (``GET /v1/queues``), never its prompt.
Time waited goes to ``ctx.queue_s`` (the usage row's ``queue_ms``) and to the
``studioctl_gateway_queue_seconds`` histogram.

Nothing here runs for a request that does not wait: the fast path costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from studioctl.errors import GatewayBusy, GatewayError
from studioctl.gateway.asgi import Receive
from studioctl.gateway.context import RequestContext
from studioctl.gateway.limiting import Grant, LimitsBackend
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.routing import (
    LOADING_RETRY_AFTER_S,
    RouteTable,
    Upstream,
    loading_retry_after,
)

__all__ = [
    "BUSY",
    "DEFAULT_QUEUE_DEPTH",
    "DEFAULT_QUEUE_TIMEOUT_S",
    "LOADING",
    "ModelQueues",
    "QueueRecipe",
    "QueueRules",
    "RoomRule",
    "Waiter",
    "WaitingRoom",
    "Want",
]

T = TypeVar("T")

DEFAULT_QUEUE_DEPTH = 64
DEFAULT_QUEUE_TIMEOUT_S = 300.0
# What a waiter waits for (``Waiter.kind``, the ``queue`` field of the listing).
LOADING, BUSY = "loading", "busy"


def _minus(left_s: float | None, waited_s: float) -> float | None:
    return None if left_s is None or left_s <= waited_s else left_s - waited_s


# Retry-After of 503 queue_full: the queue drains as fast as the model serves.
QUEUE_FULL_RETRY_AFTER_S = LOADING_RETRY_AFTER_S

#: The orchestrator's hook: True if it will serve ``model`` (it is about to load it), so the
#: request waits instead of being refused ``model_not_running``. Called on the event loop;
#: must not block.
Want = Callable[[str, RequestContext], bool]


class QueueRecipe(Protocol):
    """What the rooms read of a recipe (``studioctl.recipes.Recipe`` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def model_names(self) -> Sequence[str]: ...

    @property
    def queue_depth(self) -> int | None: ...

    @property
    def queue_timeout_s(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class RoomRule:
    """A model name's recipe and that recipe's own room bounds (None: the gateway's)."""

    recipe: str
    depth: int | None = None
    timeout_s: float | None = None


class QueueRules:
    """Model name (served name or alias) → its :class:`RoomRule`, from the recipes on disk.

    Replaced wholesale by :meth:`recipes_changed` (the gateway's housekeeping calls it with
    the route table's ``recipes_changed``); a room keeps the bounds it was opened with.
    """

    __slots__ = ("log_bodies", "rules")

    def __init__(self, recipes: Iterable[QueueRecipe] = ()) -> None:
        self.rules: dict[str, RoomRule] = {}
        # The recipes with ``log_bodies`` (read with the rules: the same recipes, the same
        # refresh; admission asks :meth:`logs_bodies`).
        self.log_bodies: frozenset[str] = frozenset()
        self.recipes_changed(recipes)

    def logs_bodies(self, recipe_id: str) -> bool:
        """Whether the recipe's requests have their bodies stored (``log_bodies``)."""
        return recipe_id in self.log_bodies

    def recipes_changed(self, recipes: Iterable[QueueRecipe]) -> None:
        recipes = list(recipes)
        self.log_bodies = frozenset(r.id for r in recipes if getattr(r, "log_bodies", False))
        rules: dict[str, RoomRule] = {}
        for r in recipes:
            rule = RoomRule(r.id, r.queue_depth, r.queue_timeout_s)
            for name in r.model_names:
                rules.setdefault(name, rule)  # the first recipe to claim a name routes it
        self.rules = rules

    def get(self, name: str) -> RoomRule | None:
        return self.rules.get(name)


class Waiter:
    """One request in a room."""

    __slots__ = ("ctx", "kind", "model", "request_id", "since", "woken")

    def __init__(self, ctx: RequestContext, model: str | None, kind: str, now: float) -> None:
        self.ctx = ctx
        self.model = model
        self.kind = kind
        self.request_id = ctx.request_id  # one id everywhere (gateway.context)
        self.since = now  # perf_counter()
        self.woken: asyncio.Future[None] | None = None

    def wake(self) -> bool:
        """Wake the waiter to look again; False if it was already woken."""
        fut = self.woken
        if fut is None or fut.done():
            return False
        fut.set_result(None)
        return True

    def fail(self, exc: BaseException) -> None:
        fut = self.woken
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def to_dict(self, now: float) -> dict[str, Any]:
        tenant = self.ctx.tenant
        return {
            "request_id": self.request_id,
            "tenant": tenant.name if tenant is not None else None,
            "model": self.model,
            "waited_ms": round((now - self.since) * 1000.0, 1),
            "queue": self.kind,
        }


class WaitingRoom:
    """One bounded first-in-first-out room (a model's queue, or the parking lot).
    ``recipe``: whose requests wait here (in order, rooms of one recipe never hold each
    other back)."""

    __slots__ = ("depth", "recipe", "timeout_s", "waiters")

    def __init__(self, depth: int, timeout_s: float, recipe: str = "") -> None:
        self.depth = depth
        self.timeout_s = timeout_s
        self.recipe = recipe
        self.waiters: dict[Waiter, None] = {}  # insertion-ordered set

    def __len__(self) -> int:
        return len(self.waiters)

    def enter(self, waiter: Waiter) -> None:
        if len(self.waiters) >= self.depth:
            raise GatewayError(
                503,
                "queue_full",
                f"{self.depth} requests already wait"
                + (f" for model {waiter.model!r}" if waiter.kind == LOADING else " for a slot")
                + "; retry shortly",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )
        self.waiters[waiter] = None

    def leave(self, waiter: Waiter) -> None:
        self.waiters.pop(waiter, None)

    def wake_all(self) -> None:
        for waiter in self.waiters:
            waiter.wake()

    def wake_one(self) -> bool:
        """Wake the first waiter not already woken; False if there is none."""
        return any(waiter.wake() for waiter in self.waiters)

    def fail_all(self, exc: BaseException) -> None:
        for waiter in self.waiters:
            waiter.fail(exc)


async def _watch_disconnect(receive: Receive, ctx: RequestContext) -> None:
    """While a request waits: its client going away cancels its task (``ctx.gone``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ctx.gone = True
            ctx.task.cancel()
            return


class ModelQueues:
    """Per-model rooms and the parking lot (see the module docstring)."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        limiter: LimitsBackend,
        metrics: GatewayMetrics,
        depth: int = DEFAULT_QUEUE_DEPTH,
        timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        when_busy: bool = False,
        in_order: bool = False,
        rules: QueueRules | None = None,
    ) -> None:
        """``depth``, ``timeout_s``: the gateway's bounds (``rules``: a recipe's own);
        ``in_order``: strict first in, first out across models (see the module docstring);
        off, a request for a ready model never waits here."""
        # depth 0 (a valid gateway.queue_depth): nobody waits, each such request is
        # answered 503 queue_full with Retry-After (the orchestrator still hears its want).
        if depth < 0 or timeout_s <= 0:
            raise ValueError("queue depth must be ≥ 0 and its timeout > 0")
        self.routes = routes
        self.limiter = limiter
        self.metrics = metrics
        self.depth = depth
        self.timeout_s = timeout_s
        self.when_busy = when_busy
        self.in_order = in_order
        self.rules = rules if rules is not None else QueueRules()
        self.rooms: dict[str, WaitingRoom] = {}  # model → its room, while it has waiters
        self.parked = WaitingRoom(depth, timeout_s)
        self._closed: GatewayError | None = None
        routes.subscribe(self.routes_changed)

    # -- what the gateway calls ------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Whether any request waits in a model room (the parking lot does not count)."""
        return bool(self.rooms)

    async def wait_for_model(
        self,
        ctx: RequestContext,
        model: str,
        refusal: GatewayError,
        receive: Receive,
        want: Want | None,
    ) -> Upstream:
        """``routes.resolve(model)`` raised ``refusal``: wait for the model if it is loading
        or wanted, and return its ready instance; else raise ``refusal`` (or queue_full,
        model_loading on timeout, the error of :meth:`fail` / :meth:`close`)."""
        if not self._waits_for(model, ctx, want):
            raise refusal
        return await self._wait_for_model(ctx, model, receive, want)

    async def wait_turn(
        self,
        ctx: RequestContext,
        model: str,
        upstream: Upstream,
        receive: Receive,
        want: Want | None,
    ) -> Upstream:
        """``in_order``: ``model`` is ready (``upstream``), but requests wait in the rooms.
        Behind an older one for another model it waits its turn in its model's room (as
        :meth:`wait_for_model`); else it goes now."""
        if self._first_in_line(model, None):
            return upstream
        return await self._wait_for_model(ctx, model, receive, want)

    async def _wait_for_model(
        self, ctx: RequestContext, model: str, receive: Receive, want: Want | None
    ) -> Upstream:
        room = self.rooms.get(model)
        if room is None:
            room = self.rooms[model] = self._room_for(model)
        waiter = Waiter(ctx, model, LOADING, _now())

        def attempt() -> Upstream | None:
            try:
                upstream = self.routes.resolve(model)
            except GatewayError:
                if self._waits_for(model, ctx, want):
                    return None
                raise
            if self.in_order and not self._first_in_line(model, waiter.since):
                return None  # ready, but an older request for another model goes first
            return upstream

        timed_out = GatewayError(
            503,
            "model_loading",
            f"model {model!r} did not become ready within {room.timeout_s:g} s; retry later",
            # What is left of the load once this request has waited its whole timeout.
            retry_after=loading_retry_after(_minus(self.routes.load_left(model), room.timeout_s)),
        )
        try:
            return await self._wait(room, waiter, attempt, receive, timed_out)
        finally:
            if not room.waiters and self.rooms.get(model) is room:
                del self.rooms[model]

    async def park(
        self,
        ctx: RequestContext,
        busy: GatewayBusy,
        receive: Receive,
        tokens: int | None = None,
    ) -> Grant:
        """Every global slot is taken (``busy``): wait for one, then return the admission
        (the tenant's checks run again then; their 429 ends the wait). ``tokens``: as for
        ``LimitsBackend.acquire``."""
        tenant = ctx.tenant
        assert tenant is not None
        limiter = self.limiter

        def attempt() -> bool | None:
            # A free global slot: ``acquire`` takes it before anything else runs.
            return True if limiter.inflight() < limiter.global_max_concurrent else None

        waiter = Waiter(ctx, ctx.model, BUSY, _now())
        admission: Grant | None = None
        try:
            await self._wait(self.parked, waiter, attempt, receive, busy)
            admission = await limiter.acquire(tenant, tokens)
            return admission
        finally:
            if admission is None and waiter.woken is not None and waiter.woken.done():
                self.slot_freed()  # it was woken for a slot it did not take: pass it on

    def slot_freed(self) -> None:
        """A global slot was given back: wake the first parked request (if any)."""
        if self.parked.waiters and self.limiter.inflight() < self.limiter.global_max_concurrent:
            self.parked.wake_one()

    def routes_changed(self) -> None:
        """The route table changed: every model's waiters look again."""
        for room in self.rooms.values():
            room.wake_all()

    # -- what the orchestrator and the daemon call -------------------------------------------

    def fail(self, model: str, error: GatewayError) -> int:
        """End every request waiting for ``model`` with ``error`` (its load failed);
        returns how many."""
        room = self.rooms.get(model)
        if room is None:
            return 0
        room.fail_all(error)
        return len(room)

    def close(self, error: GatewayError) -> None:
        """Draining: every waiter, and every request that would wait, ends with ``error``."""
        self._closed = error
        self.parked.fail_all(error)
        for room in self.rooms.values():
            room.fail_all(error)

    def reopen(self) -> None:
        self._closed = None

    def counts(self) -> dict[str, int]:
        """Requests waiting per model (loading and parked alike)."""
        out = {model: len(room) for model, room in self.rooms.items() if room.waiters}
        for waiter in self.parked.waiters:
            key = waiter.model or ""
            out[key] = out.get(key, 0) + 1
        return out

    def listing(self, model: str | None = None) -> dict[str, Any]:
        """``GET /v1/queues`` (all models) or ``/v1/queues/{model}``: ids, tenants, models
        and times waited, oldest first; never a prompt."""
        now = _now()
        waiters = [w for room in self.rooms.values() for w in room.waiters]
        waiters.extend(self.parked.waiters)
        if model is not None:
            waiters = [w for w in waiters if w.model == model]
        waiters.sort(key=lambda w: w.since)
        counts = self.counts()
        if model is not None:
            counts = {model: counts.get(model, 0)}
        return {"object": "list", "counts": counts, "data": [w.to_dict(now) for w in waiters]}

    # -- inside ----------------------------------------------------------------------------

    def _waits_for(self, model: str, ctx: RequestContext, want: Want | None) -> bool:
        return self.routes.loading(model) or (want is not None and want(model, ctx))

    def _room_for(self, model: str) -> WaitingRoom:
        """A new room for ``model``, with its recipe's bounds where the recipe sets them."""
        rule = self.rules.get(model)
        if rule is None:
            return WaitingRoom(self.depth, self.timeout_s, model)
        depth = rule.depth if rule.depth is not None else self.depth
        timeout_s = rule.timeout_s if rule.timeout_s is not None else self.timeout_s
        return WaitingRoom(depth, timeout_s, rule.recipe)

    def _first_in_line(self, model: str, since: float | None) -> bool:
        """Whether no waiter older than ``since`` (None: any waiter) is for another model
        (another recipe: a served name and its aliases are one). A room's first waiter is
        its oldest (rooms are first in, first out)."""
        rule = self.rules.get(model)
        recipe = rule.recipe if rule is not None else model
        for room in self.rooms.values():
            if room.recipe == recipe or not room.waiters:
                continue
            if since is None or next(iter(room.waiters)).since < since:
                return False
        return True

    async def _wait(
        self,
        room: WaitingRoom,
        waiter: Waiter,
        attempt: Callable[[], T | None],
        receive: Receive,
        timed_out: GatewayError,
    ) -> T:
        """Wait in ``room`` until ``attempt()`` gives a result; a timeout raises
        ``timed_out``. Leaves the room, and records the time waited, on every path."""
        if self._closed is not None:
            raise self._closed
        room.enter(waiter)  # queue_full
        ctx = waiter.ctx
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(_watch_disconnect(receive, ctx))
        try:
            async with asyncio.timeout(room.timeout_s):
                while True:
                    waiter.woken = loop.create_future()
                    await waiter.woken
                    result = attempt()
                    if result is not None:
                        return result
        except TimeoutError:
            raise timed_out from None
        finally:
            watcher.cancel()
            room.leave(waiter)
            if self.in_order and room is not self.parked:
                self.routes_changed()  # the waiters it held back look again
            waited = _now() - waiter.since
            ctx.queue_s += waited
            self.metrics.queue_wait(waiter.model, waited)


def _now() -> float:
    # Not loop.time(): uvloop's is whole milliseconds (a short wait would read 0).
    return time.perf_counter()
