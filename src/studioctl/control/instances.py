"""Instance routes: list and show, launch, evict, switch, adopt.

A launch, evict or switch with ``stream: true`` answers NDJSON: the matching events as they
happen, then one ``result`` (or ``error``) line. A client that goes away does not cancel the
operation: launches finish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING

from starlette.routing import Route

from studioctl.api import models as M
from studioctl.api import params as P
from studioctl.control.http import api_headers, json_response, ndjson, read_request
from studioctl.control.recipes import named_recipe
from studioctl.control.serving import Serving, with_queued
from studioctl.errors import StudioError, UsageError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from studioctl.lifecycle.events import Event, EventBus
    from studioctl.lifecycle.supervisor import Supervisor

#: What an operation returns: an instance's or a report's ``to_dict()``.
Result = dict[str, object]
Operation = Callable[[], Coroutine[None, None, Result]]


def streamed(bus: EventBus, op: Operation, match: Callable[[Event], bool]) -> Response:
    """Run ``op`` while streaming matching events as NDJSON, then its result or error."""
    from starlette.responses import StreamingResponse

    q = bus.subscribe()

    def event_lines() -> list[bytes]:
        out = []
        while not q.empty():
            ev = q.get_nowait()
            if match(ev):
                out.append(ndjson({"type": "event", **ev.to_dict()}))
        return out

    async def gen() -> AsyncIterator[bytes]:
        task = asyncio.create_task(op())
        try:
            while True:
                getter = asyncio.create_task(q.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    ev = getter.result()
                    if match(ev):
                        yield ndjson({"type": "event", **ev.to_dict()})
                else:
                    getter.cancel()
                if task in done:
                    for line in event_lines():
                        yield line
                    yield _last_line(task)
                    return
        finally:
            bus.unsubscribe(q)

    return StreamingResponse(gen(), media_type="application/x-ndjson", headers=api_headers())


def _last_line(task: asyncio.Task[Result]) -> bytes:
    exc = task.exception()
    if isinstance(exc, StudioError):
        return ndjson({"type": "error", "status": exc.http_status, "error": exc.to_dict()})
    if exc is not None:
        err = {"message": str(exc), "type": "internal_error"}
        return ndjson({"type": "error", "status": 500, "error": err})
    return ndjson({"type": "result", "result": task.result()})


def instance_routes(sup: Supervisor, bus: EventBus, serving: Serving | None = None) -> list[Route]:
    h = _Instances(sup, bus, serving if serving is not None else Serving())
    return [
        Route("/instances", h.list_instances),
        Route("/instances", h.launch, methods=["POST"]),
        Route("/instances/{target}", h.get_instance),
        Route("/instances/{target}/evict", h.evict, methods=["POST"]),
        Route("/switch", h.switch, methods=["POST"]),
        Route("/adopt", h.adopt, methods=["POST"]),
    ]


class _Instances:
    """The handlers, one method per route."""

    def __init__(self, sup: Supervisor, bus: EventBus, serving: Serving) -> None:
        self.sup = sup
        self.bus = bus
        self.serving = serving

    async def list_instances(self, request: Request) -> Response:
        include = P.q_bool(request.query_params, "all")
        foreign = P.q_bool(request.query_params, "foreign")
        instances, queued = with_queued(
            self.sup.list(include_stopped=include), self.serving, time.time()
        )
        out: dict[str, object] = {"instances": instances, "queued": queued}
        if foreign:
            out["foreign"] = await asyncio.to_thread(self.sup.foreign_servers)
        return json_response(out)

    async def get_instance(self, request: Request) -> Response:
        return json_response(self.sup.get(request.path_params["target"]).to_dict())

    async def launch(self, request: Request) -> Response:
        req = await read_request(request, M.LaunchRequest)
        target, recipe_id = await named_recipe(
            request, req.recipe, req.recipe_file, param="recipe", file_param="recipe_file"
        )
        if req.recipe_file is not None and req.recipe not in (None, recipe_id):
            raise UsageError(
                f"recipe {req.recipe[:200]!r} and recipe_file (id {recipe_id!r}) differ",
                details={"param": "recipe"},
            )

        async def op() -> Result:
            inst = await self.sup.launch(
                target,
                port=req.port,
                gpus=req.gpus,
                force=req.force,
                wait=req.wait,
                timeout=req.timeout,
                lock_wait=req.lock_wait,
            )
            return inst.to_dict()

        if req.stream:
            # The recipe's id, never the raw argument: a path names no events.
            return streamed(self.bus, op, lambda ev: ev.recipe_id == recipe_id)
        return json_response(await op(), status=201)

    async def evict(self, request: Request) -> Response:
        req = await read_request(request, M.EvictRequest)
        inst = self.sup.get(request.path_params["target"])

        async def op() -> Result:
            report = await self.sup.evict(
                inst.id,
                drain_timeout=req.drain_timeout,
                grace=req.grace,
                force=req.force,
                lock_wait=req.lock_wait,
            )
            return report.to_dict()

        if req.stream:
            return streamed(self.bus, op, lambda ev: ev.instance_id == inst.id)
        return json_response(await op())

    async def switch(self, request: Request) -> Response:
        req = await read_request(request, M.SwitchRequest)
        to_target, to = await named_recipe(
            request, req.to, req.to_file, param="to", file_param="to_file"
        )
        src = self.sup.get(req.from_)

        async def op() -> Result:
            report = await self.sup.switch(
                src.id,
                to_target,
                port=req.port,
                gpus=req.gpus,
                drain_timeout=req.drain_timeout,
                grace=req.grace,
                timeout=req.timeout,
                lock_wait=req.lock_wait,
            )
            return report.to_dict()

        if req.stream:
            return streamed(
                self.bus, op, lambda ev: ev.recipe_id in (src.recipe.id, to) or ev.kind == "switch"
            )
        return json_response(await op())

    async def adopt(self, request: Request) -> Response:
        req = await read_request(request, M.AdoptRequest)
        # A path: absolute, and only on the socket.
        await named_recipe(request, req.recipe, None, param="recipe", file_param="recipe_file")
        inst = await self.sup.adopt(req.pid, req.recipe, port=req.port)
        return json_response(inst.to_dict(), status=201)


# -- an engine's own API key: control socket only ------------------------------------------


def engine_key_routes(sup: Supervisor) -> list[Route]:
    """``GET /instances/{target}/engine-key`` → ``{"id", "url", "api_key"}``: what talking to
    an engine directly needs (``studioctl bench INSTANCE``, a scrape of its own /metrics).

    Only on the control socket: its file mode limits it to the daemon's own user, who can
    read the key from the daemon's store anyway. Over TCP (``/admin/`` on the gateway port)
    the admin token manages tenants and instances; it must not become every engine's key,
    which would bypass the gateway's tenants, limits and accounting."""

    async def engine_key(request: Request) -> Response:
        if request.client is not None:  # uvicorn gives a Unix socket's requests no address
            raise UsageError(
                "an engine's API key is given only on the daemon's control socket, not over TCP",
                hint="send requests through the gateway with a tenant key",
                details={"param": "target"},
            )
        inst = sup.get(request.path_params["target"])
        return json_response({"id": inst.id, "url": inst.base_url, "api_key": inst.api_key})

    return [Route("/instances/{target}/engine-key", engine_key)]
