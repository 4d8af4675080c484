"""The control app: the daemon's own routes (version, status, shutdown), the instance,
serving and log routes, and the routes the daemon passes in (telemetry, tenants and usage)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from studioctl import API_VERSION, __version__
from studioctl.api import models as M
from studioctl.control.http import error_response, json_response, read_request
from studioctl.control.instances import engine_key_routes, instance_routes
from studioctl.control.logs import log_routes
from studioctl.control.serving import Serving, serving_routes, with_queued
from studioctl.errors import NotFoundError, StudioError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.supervisor import Supervisor

#: Figures another part of the daemon adds to ``GET /status`` (the gateway's: its URL,
#: requests in flight), merged into the answer's top level.
ExtraStatus = Callable[[], Awaitable[Mapping[str, object]]]


@dataclass(frozen=True)
class DaemonInfo:
    """What ``/version`` and ``/status`` say about the daemon, complete when built."""

    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    socket: str = ""
    gateway_url: str | None = None
    shutdown: Callable[[bool], None] | None = None
    extra_status: ExtraStatus | None = None


def build_control_app(
    sup: Supervisor,
    bus: EventBus,
    info: DaemonInfo,
    routes: Sequence[BaseRoute] = (),
    serving: Serving | None = None,
) -> Starlette:
    """The control app; ``routes`` are the daemon's extra ones (telemetry's
    ``control.gpus.telemetry_routes``, the admin ``control.tenants.tenant_routes``);
    ``serving``: the gateway's queued requests and the orchestrator's preload (without it,
    nothing is queued and preload is refused: the gateway is off)."""
    serving = serving if serving is not None else Serving()

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StudioError):
            return error_response(exc)
        return error_response(StudioError(f"internal error: {exc!r}"))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(NotFoundError(f"no route {request.method} {request.url.path}"))

    return Starlette(
        routes=[
            *daemon_routes(sup, info, serving),
            *instance_routes(sup, bus, serving),
            *serving_routes(sup, serving),
            *engine_key_routes(sup),
            *log_routes(sup, bus),
            *routes,
        ],
        exception_handlers={Exception: on_error, 404: not_found, StudioError: on_error},
    )


def daemon_routes(sup: Supervisor, info: DaemonInfo, serving: Serving) -> list[Route]:
    async def version(_: Request) -> Response:
        return json_response(
            {
                "version": __version__,
                "api_version": API_VERSION,
                "pid": info.pid,
                "started_at": info.started_at,
            }
        )

    async def status(_: Request) -> Response:
        now = time.time()
        instances, queued = with_queued(sup.list(), serving, now)
        out: dict[str, object] = {
            "daemon": {
                "pid": info.pid,
                "version": __version__,
                "api_version": API_VERSION,
                "uptime_s": now - info.started_at,
                "socket": info.socket,
            },
            "gateway": {"url": info.gateway_url},
            "instances": instances,
            "queued": queued,
            "operations": sup.locks.in_progress(),
        }
        if info.extra_status is not None:
            out.update(await info.extra_status())
        return json_response(out)

    async def shutdown(request: Request) -> Response:
        req = await read_request(request, M.ShutdownRequest)
        if info.shutdown is None:
            raise StudioError("this daemon cannot be shut down over the API")
        info.shutdown(req.stop_engines)
        return json_response(
            {"ok": True, "pid": info.pid, "stop_engines": req.stop_engines}, status=202
        )

    return [
        Route("/version", version),
        Route("/status", status),
        Route("/daemon/shutdown", shutdown, methods=["POST"]),
    ]
