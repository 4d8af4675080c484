"""Admin routes of the control API: tenants, API keys, usage, limit profiles.

Mounted into the control app (Unix socket: no token; TCP ``/admin/``: ``X-Admin-Token``).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from studioctl import api_params as P
from studioctl.control import _body, _json
from studioctl.errors import UsageError
from studioctl.tenants import ANONYMOUS_TENANT_ID, TenantService, profiles_dict

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
_WINDOW = re.compile(r"([0-9]{1,9})([mhd])")
MAX_WINDOW_S = 3660 * 86400  # ten years and then some: older than any usage row
MAX_GRACE_S = 365 * 86400.0  # how long rotated keys may stay valid


def parse_window(value: str) -> float:
    """``1h``, ``24h``, ``7d``, ``30d`` (or any ``N[mhd]`` up to ten years) → seconds."""
    if value in WINDOWS:
        return WINDOWS[value]
    m = _WINDOW.fullmatch(value)
    seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise UsageError(
            f"window must be one of {', '.join(WINDOWS)} (or N followed by m, h or d, "
            f"at most 3660d), got {P.shown(value)}",
            details={"param": "window"},
        )
    return float(seconds)


def _overrides(data: dict[str, Any]) -> dict[str, Any]:
    raw = data.get("overrides") or {}
    if not isinstance(raw, dict):
        raise UsageError(
            "overrides must be an object of limit fields", details={"param": "overrides"}
        )
    return raw


def admin_routes(tenants: TenantService, usage_repo: Any) -> list[Route]:
    async def list_tenants(_: Request) -> Response:
        return _json({"tenants": [t.to_dict() for t in tenants.list()]})

    async def create_tenant(request: Request) -> Response:
        data = await _body(request)
        name = P.b_required_text(data, "name")
        info, key = tenants.create(
            name,
            profile=P.b_text(data, "profile") or "standard",
            overrides=_overrides(data),
            allowed_models=data.get("allowed_models"),
        )
        return _json({"tenant": info.to_dict(), "key": key}, status=201)

    async def get_tenant(request: Request) -> Response:
        t = tenants.get(request.path_params["tenant"])
        return _json({**t.to_dict(), "keys": [k.to_dict() for k in tenants.list_keys(t)]})

    async def set_tenant(request: Request) -> Response:
        data = await _body(request)
        enabled = data.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise UsageError("enabled must be true or false", details={"param": "enabled"})
        t = tenants.set(
            request.path_params["tenant"],
            profile=P.b_text(data, "profile"),
            overrides=_overrides(data),
            enabled=enabled,
            allowed_models=data.get("allowed_models"),
        )
        return _json(t.to_dict())

    async def delete_tenant(request: Request) -> Response:
        return _json({"deleted": tenants.delete(request.path_params["tenant"]).to_dict()})

    async def list_keys(request: Request) -> Response:
        return _json(
            {"keys": [k.to_dict() for k in tenants.list_keys(request.path_params["tenant"])]}
        )

    async def create_key(request: Request) -> Response:
        key = tenants.create_key(request.path_params["tenant"])
        return _json({"key": key}, status=201)

    async def rotate_key(request: Request) -> Response:
        data = await _body(request)
        grace = P.b_seconds(data, "grace_s", 86400.0, hi=MAX_GRACE_S) or 0.0
        key = tenants.rotate_key(request.path_params["tenant"], grace_s=grace)
        return _json({"key": key, "grace_s": grace}, status=201)

    async def revoke_key(request: Request) -> Response:
        data = await _body(request)
        tenant = P.b_text(data, "tenant")
        k = tenants.revoke_key(request.path_params["key"], tenant=tenant)
        return _json(k.to_dict())

    async def usage(request: Request) -> Response:
        qp = request.query_params
        window = qp.get("window", "24h")
        seconds = parse_window(window)
        tenant, model = P.q_text(qp, "tenant"), P.q_text(qp, "model")
        summary = usage_repo.summary(seconds, tenant=_tenant_id(tenant), model=model)
        out = summary.to_dict()
        out["window"] = window
        names = {t.id: t.name for t in tenants.list()}
        out["tenant_names"] = names
        return _json(out)

    def _tenant_id(ref: str | None) -> str | None:
        if ref == ANONYMOUS_TENANT_ID:  # the rows of gateway.allow_anonymous (no stored tenant)
            return ref
        return tenants.get(ref).id if ref else None

    async def profiles(_: Request) -> Response:
        return _json({"profiles": profiles_dict()})

    return [
        Route("/tenants", list_tenants),
        Route("/tenants", create_tenant, methods=["POST"]),
        Route("/tenants/{tenant}", get_tenant),
        Route("/tenants/{tenant}", set_tenant, methods=["PATCH"]),
        Route("/tenants/{tenant}", delete_tenant, methods=["DELETE"]),
        Route("/tenants/{tenant}/keys", list_keys),
        Route("/tenants/{tenant}/keys", create_key, methods=["POST"]),
        Route("/tenants/{tenant}/keys/rotate", rotate_key, methods=["POST"]),
        Route("/keys/{key}/revoke", revoke_key, methods=["POST"]),
        Route("/usage", usage),
        Route("/limits/profiles", profiles),
    ]
