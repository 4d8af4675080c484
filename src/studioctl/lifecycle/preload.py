"""``studioctl preload MODEL``: load a model as a request for it would, before the first one.

The orchestrator (``studioctl.lifecycle.ondemand``) plans for wants, not for requests: a
preload registers one (``OnDemand.want``) and renews it until the model is ready, so the
scheduler places it exactly as it places a request's model (memory, idle instances evicted
least recently used first, pinned recipes and groups), and one launch serves the preload and
any request that arrives meanwhile. It ends when the model is ready, when its load fails
(the orchestrator's ``load_failed`` event, with the reason) or at the timeout; a timed-out
preload stops asking (a load already started goes on).

Errors: an unknown name → ``NotFoundError``; a recipe not loaded on demand → ``UsageError``
(launch it); one that can never fit → ``ConflictError`` with the reason; a failed load →
``EngineFailed``; the timeout → ``OperationTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from studioctl.errors import (
    ConflictError,
    EngineFailed,
    NotFoundError,
    OperationTimeout,
    StudioError,
    UsageError,
)
from studioctl.states import State

if TYPE_CHECKING:
    from studioctl.lifecycle.demand import Catalog
    from studioctl.lifecycle.events import Event, EventBus
    from studioctl.lifecycle.runtime import Instance

log = logging.getLogger("studioctl.ondemand")

#: How often a waiting preload renews its want and looks at the instances (a want is
#: forgotten ``ondemand.WANTED_S`` after it was last made).
POLL_S = 0.25
#: The default timeout: the recipe's readiness timeout plus this (its turn may come after
#: another model's requests, ``scheduler.max_wait_s``, and a drain).
SLACK_S = 120.0


class Lister(Protocol):
    def list(self, *, include_stopped: bool = False) -> list[Instance]: ...


class Orchestrator(Protocol):
    """What a preload needs of ``OnDemand`` (read-only members: any subtype will do)."""

    @property
    def catalog(self) -> Catalog: ...

    @property
    def bus(self) -> EventBus: ...

    @property
    def engines(self) -> Lister: ...

    @property
    def failed(self) -> dict[str, float]: ...

    @property
    def ops(self) -> set[asyncio.Task[None]]: ...

    async def rescan(self) -> None: ...

    def want(self, model: str, ctx: object = None) -> bool: ...

    def never_fits(self, rid: str) -> str | None: ...


async def resolve(od: Orchestrator, model: str) -> str:
    """The recipe id ``model`` (a served name, alias or recipe id) names; the recipes are
    read again once before an unknown name is refused (one added since the last scan)."""
    for attempt in range(2):
        rid = od.catalog.names.get(model) or (model if model in od.catalog.recipes else None)
        if rid is not None:
            return rid
        if attempt == 0:
            await od.rescan()
    raise NotFoundError(
        f"no recipe serves the model {model[:200]!r}",
        hint="studioctl recipes list",
        details={"param": "model"},
    )


def live(od: Orchestrator, rid: str) -> Instance | None:
    """The recipe's instance that serves or will serve (ready first), or None."""
    mine = [i for i in od.engines.list() if i.recipe.id == rid]
    for states in ((State.READY,), (State.LOADING, State.STARTING)):
        for inst in mine:
            if inst.state in states:
                return inst
    return None


def answer(model: str, rid: str, inst: Instance | None, t0: float, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "recipe": rid,
        "state": str(inst.state) if inst is not None else "requested",
        "instance": inst.id if inst is not None else None,
        "seconds": round(time.monotonic() - t0, 3),
        **extra,
    }


async def preload(
    od: Orchestrator, model: str, *, timeout: float | None = None, wait: bool = True
) -> dict[str, Any]:
    """Load ``model`` on demand; see the module docstring. The answer: model, recipe,
    state (``ready``; without ``wait`` also ``starting``, ``loading`` or ``requested``),
    instance, seconds, and ``already: "ready"`` when nothing had to be done."""
    t0 = time.monotonic()
    rid = await resolve(od, model)
    inst = live(od, rid)
    if inst is not None and inst.state == State.READY:
        return answer(model, rid, inst, t0, already="ready")
    entry = od.catalog.loadables.get(rid)
    if entry is None or not entry.on_demand:
        raise UsageError(
            f"recipe {rid!r} is not loaded on demand (on_demand: false)",
            hint=f"studioctl launch {rid}",
            details={"param": "model"},
        )
    too_big = od.never_fits(rid)
    if too_big is not None:
        raise ConflictError(f"recipe {rid!r} can never be loaded here: {too_big}", code="no_fit")
    od.failed.pop(rid, None)  # asked for by hand: a recent failure does not hold it back
    recipe = od.catalog.recipes[rid]
    limit = timeout if timeout is not None else recipe.readiness_timeout_s + SLACK_S
    if not wait:
        task = asyncio.get_running_loop().create_task(_quietly(od, rid, recipe.served_name, limit))
        od.ops.add(task)  # cancelled with the orchestrator's own operations at shutdown
        task.add_done_callback(od.ops.discard)
        await asyncio.sleep(0)  # the want is made before the answer
        return answer(model, rid, live(od, rid), t0)
    inst = await until_ready(od, rid, recipe.served_name, limit)
    return answer(model, rid, inst, t0)


async def until_ready(od: Orchestrator, rid: str, name: str, limit: float) -> Instance:
    """Renew the want for ``rid`` (by its served ``name``) until its instance is ready."""
    q = od.bus.subscribe()
    deadline = time.monotonic() + limit
    try:
        while True:
            inst = live(od, rid)
            if inst is not None and inst.state == State.READY:
                return inst
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationTimeout(
                    f"recipe {rid!r} was not ready within {limit:g}s"
                    + (f" (it is {inst.state})" if inst is not None else ""),
                    hint="studioctl events",
                )
            # False while its failure is fresh (its load_failed event is already queued
            # below), or when a rescan made it a recipe that is no longer on demand.
            if not od.want(name) and od.catalog.on_demand(name) is None:
                raise UsageError(f"recipe {rid!r} is no longer loaded on demand")
            failure = await _failure(q, rid, min(POLL_S, left))
            if failure is not None:
                raise EngineFailed(
                    f"loading recipe {rid!r} failed: {failure}"[:600], hint=f"studioctl logs {rid}"
                )
    finally:
        od.bus.unsubscribe(q)


async def _failure(q: asyncio.Queue[Event], rid: str, wait_s: float) -> str | None:
    """The reason of a ``load_failed`` event for ``rid`` arriving within ``wait_s``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while True:
                ev = await q.get()
                if ev.kind == "load_failed" and ev.recipe_id == rid:
                    return str(ev.data.get("reason") or ev.message)
    return None


async def _quietly(od: Orchestrator, rid: str, name: str, limit: float) -> None:
    """A ``--no-wait`` preload: the same wait in the background; its end is only logged
    (the orchestrator's events tell the operator)."""
    try:
        await until_ready(od, rid, name, limit)
    except StudioError as exc:
        log.warning("preload of %s: %s", rid, exc.message)
