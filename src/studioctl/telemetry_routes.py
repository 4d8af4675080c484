"""The control API's telemetry routes: ``GET /telemetry`` and ``GET /stats[?recipe=ID]``.

A thin layer over :class:`~studioctl.telemetry.Telemetry`'s public views (kept out of the
telemetry package: HTTP belongs to the control API).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.routing import Route

    from studioctl.telemetry import Telemetry


def control_routes(tel: Telemetry) -> list[Route]:
    """``GET /telemetry`` (the current snapshot) and ``GET /stats[?recipe=ID]`` (lifetime
    figures and peaks per recipe), for ``build_control_app(extra_routes=...)``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from studioctl import API_VERSION

    headers = {"X-Studioctl-Api": str(API_VERSION)}

    async def telemetry(_: Request) -> Response:
        return JSONResponse(tel.snapshot(), headers=headers)

    async def stats(request: Request) -> Response:
        recipe = request.query_params.get("recipe") or None
        rows = tel.recipe_stats(recipe)
        return JSONResponse({"recipes": [s.to_dict() for s in rows]}, headers=headers)

    return [Route("/telemetry", telemetry), Route("/stats", stats)]
