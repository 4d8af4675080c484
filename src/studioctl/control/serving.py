"""Serving routes: unload and preload a model by the name clients use (served name, alias)
or its recipe id, and the gateway's queued requests per model in ``GET /instances`` and
``GET /status`` (``studioctl ps``).

    POST /models/unload   {"model", "drain_timeout", "grace", "lock_wait"}
    POST /models/preload  {"model", "timeout", "wait"}

The model travels in the body, not the path: served names often hold a ``/``.

The gateway and the orchestrator are above or beside this package in the layers: the daemon
(``studioctl.daemon.compose``) hands them in as :class:`Serving`, plain callables and the
orchestrator's ``preload``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from starlette.routing import Route

from studioctl.api import models as M
from studioctl.control.http import json_response, read_request
from studioctl.errors import NotFoundError, UsageError
from studioctl.states import State

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from studioctl.api.types import QueuedModel
    from studioctl.lifecycle.runtime import Instance
    from studioctl.lifecycle.supervisor import Supervisor
    from studioctl.recipes import Recipe


class Preload(Protocol):
    """``OnDemand.preload``."""

    def __call__(
        self, model: str, *, timeout: float | None = ..., wait: bool = ...
    ) -> Awaitable[Mapping[str, object]]: ...


@dataclass(frozen=True)
class Serving:
    """What the control API reaches of the gateway and the on-demand orchestrator.

    ``queued``: requests waiting per model name (``ModelQueues.counts``); ``recipe_of``: the
    recipe a model name belongs to (the route table's); ``preload``: None when the gateway
    is off (nothing loads on demand then)."""

    queued: Callable[[], Mapping[str, int]] = dict
    recipe_of: Callable[[str], str | None] = lambda name: None
    preload: Preload | None = None


#: Which instance a model's queued requests are shown on: the one they wait for first.
_WAITED_FOR = {State.STARTING: 0, State.LOADING: 0, State.READY: 1, State.DRAINING: 2}


def with_queued(
    instances: Sequence[Instance], serving: Serving, now: float
) -> tuple[list[dict[str, object]], list[QueuedModel]]:
    """Every instance's ``to_dict()`` with ``queued`` (requests waiting for one of its model
    names), and one row per model with queued requests: model, recipe, instance (None
    when no instance serves it yet: its load is requested) and queued."""
    per_instance = [0] * len(instances)
    out: list[QueuedModel] = []
    for model, count in sorted(serving.queued().items()):
        if not model or count <= 0:  # parked for a gateway slot, no model named
            continue
        serves = [
            (rank, n)
            for n, inst in enumerate(instances)
            if model in inst.recipe.model_names
            and (rank := _WAITED_FOR.get(inst.state)) is not None
        ]
        if serves:
            n = min(serves)[1]
            per_instance[n] += count
            target = instances[n]
            out.append(
                {"model": model, "recipe": target.recipe.id, "instance": target.id, "queued": count}
            )
        else:
            out.append(
                {
                    "model": model,
                    "recipe": serving.recipe_of(model),
                    "instance": None,
                    "queued": count,
                }
            )
    rows: list[dict[str, object]] = [
        {**i.to_dict(now), "queued": q} for i, q in zip(instances, per_instance, strict=True)
    ]
    return rows, out


def serving_routes(sup: Supervisor, serving: Serving) -> list[Route]:
    h = _Serving(sup, serving)
    return [
        Route("/models/unload", h.unload, methods=["POST"]),
        Route("/models/preload", h.preload, methods=["POST"]),
    ]


def serves(recipe: Recipe, model: str) -> bool:
    """Whether ``model`` is the recipe's id, served name or an alias."""
    return model == recipe.id or model in recipe.model_names


class _Serving:
    def __init__(self, sup: Supervisor, serving: Serving) -> None:
        self.sup = sup
        self.serving = serving

    async def unload(self, request: Request) -> Response:
        """Evict every live instance of the model with a drain (in-flight requests finish);
        an on-demand recipe loads again on its next request. Not running: said, not an
        error (as ``evict`` of a stopped instance answers ``already``)."""
        req = await read_request(request, M.UnloadRequest)
        mine = [i for i in self.sup.list() if serves(i.recipe, req.model)]
        if not mine:
            rid = await asyncio.to_thread(self._recipe_on_disk, req.model)
            return json_response(
                {"model": req.model, "recipe": rid, "unloaded": [], "already": "not running"}
            )
        reports = []
        for inst in mine:  # one after the other: they hold the same recipe's lock
            report = await self.sup.evict(
                inst.id,
                drain_timeout=req.drain_timeout,
                grace=req.grace,
                force=False,
                lock_wait=req.lock_wait,
            )
            reports.append(report.to_dict())
        return json_response({"model": req.model, "recipe": mine[0].recipe.id, "unloaded": reports})

    def _recipe_on_disk(self, model: str) -> str:
        from studioctl.recipes import recipe_dirs, scan_recipes
        from studioctl.suggest import did_you_mean

        recipes = scan_recipes(recipe_dirs(self.sup.settings)).recipes
        for r in recipes:
            if serves(r, model):
                return r.id
        names = {n for r in recipes for n in (r.id, *r.model_names)}
        raise NotFoundError(
            f"no recipe serves the model {model!r}{did_you_mean(model, names)}",
            hint="studioctl recipes list",
            details={"param": "model"},
        )

    async def preload(self, request: Request) -> Response:
        req = await read_request(request, M.PreloadRequest)
        if self.serving.preload is None:
            raise UsageError(
                "preload loads through the gateway's on-demand loading, and the gateway is off",
                hint=f"studioctl launch {req.model}",
            )
        answer = await self.serving.preload(req.model, timeout=req.timeout, wait=req.wait)
        return json_response(answer)
