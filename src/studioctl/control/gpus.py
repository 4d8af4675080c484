"""Telemetry routes: ``GET /telemetry`` (the current snapshot: GPUs, instances, energy) and
``GET /stats[?recipe=ID]`` (lifetime figures and peaks per recipe). The daemon passes them
to ``build_control_app(routes=...)`` with its telemetry object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from starlette.routing import Route

from studioctl.control.http import json_response

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response


class _Stats(Protocol):
    def to_dict(self) -> Mapping[str, object]: ...


class TelemetrySource(Protocol):
    """What the routes read of the daemon's telemetry (``studioctl.telemetry.Telemetry``)."""

    def snapshot(self) -> Mapping[str, object]: ...

    def recipe_stats(self, recipe_id: str | None = None) -> Sequence[_Stats]: ...


def telemetry_routes(tel: TelemetrySource) -> list[Route]:
    async def telemetry(_: Request) -> Response:
        return json_response(tel.snapshot())

    async def stats(request: Request) -> Response:
        recipe = request.query_params.get("recipe") or None
        return json_response({"recipes": [s.to_dict() for s in tel.recipe_stats(recipe)]})

    return [Route("/telemetry", telemetry), Route("/stats", stats)]
