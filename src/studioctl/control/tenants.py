"""Admin routes: tenants, API keys, usage, limit profiles.

The tenant gateway's admin API is accepted too: its field names on create and patch
(``api.models.TENANT_ALIASES``), a tenant named by id or name, ``window`` 1h/24h/7d on
``/usage``; a tenant created without a profile gets ``default`` (``tenants.default_*``).

Built by the daemon once the gateway's tenant service exists and passed to
``build_control_app(routes=...)``: served on the control socket (no token) and, behind
``X-Admin-Token``, on the gateway's TCP port under ``/admin/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from starlette.routing import Route

from studioctl.api import models as M
from studioctl.api import params as P
from studioctl.control.http import json_response, read_request
from studioctl.tenants import ANONYMOUS_TENANT_ID, DEFAULT_PROFILE, profiles_dict

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from studioctl.store.usage import UsageRepo
    from studioctl.tenants import TenantService


def _models(value: object) -> Sequence[str] | str | None:
    """``allowed_models`` as sent: the tenant service checks it and names what is wrong."""
    return cast("Sequence[str] | str | None", value)


def _tenant_id(tenants: TenantService, ref: str | None) -> str | None:
    if ref == ANONYMOUS_TENANT_ID:  # the rows of gateway.allow_anonymous (no stored tenant)
        return ref
    return tenants.get(ref).id if ref else None


def tenant_routes(tenants: TenantService, usage_repo: UsageRepo) -> list[Route]:
    async def list_tenants(_: Request) -> Response:
        return json_response({"tenants": [t.to_dict() for t in tenants.list()]})

    async def create_tenant(request: Request) -> Response:
        req = await read_request(request, M.TenantCreate)
        info, key = tenants.create(
            req.name,
            profile=req.profile or DEFAULT_PROFILE,
            overrides=req.limit_overrides(),
            allowed_models=_models(req.allowed_models),
        )
        return json_response({"tenant": info.to_dict(), "key": key}, status=201)

    async def get_tenant(request: Request) -> Response:
        t = tenants.get(request.path_params["tenant"])
        return json_response({**t.to_dict(), "keys": [k.to_dict() for k in tenants.list_keys(t)]})

    async def set_tenant(request: Request) -> Response:
        req = await read_request(request, M.TenantPatch)
        t = tenants.set(
            request.path_params["tenant"],
            profile=req.profile,
            overrides=req.limit_overrides(),
            enabled=req.enabled,
            allowed_models=_models(req.allowed_models),
            name=req.name,
        )
        return json_response(t.to_dict())

    async def delete_tenant(request: Request) -> Response:
        return json_response({"deleted": tenants.delete(request.path_params["tenant"]).to_dict()})

    async def list_keys(request: Request) -> Response:
        keys = tenants.list_keys(request.path_params["tenant"])
        return json_response({"keys": [k.to_dict() for k in keys]})

    async def create_key(request: Request) -> Response:
        key = tenants.create_key(request.path_params["tenant"])
        return json_response({"key": key}, status=201)

    async def rotate_key(request: Request) -> Response:
        req = await read_request(request, M.RotateKey)
        key = tenants.rotate_key(request.path_params["tenant"], grace_s=req.grace_s)
        return json_response({"key": key, "grace_s": req.grace_s}, status=201)

    async def revoke_key(request: Request) -> Response:
        req = await read_request(request, M.RevokeKey)
        k = tenants.revoke_key(request.path_params["key"], tenant=req.tenant)
        return json_response(k.to_dict())

    async def usage(request: Request) -> Response:
        qp = request.query_params
        window = qp.get("window", "24h")
        seconds = P.parse_window(window)
        tenant, model = P.q_text(qp, "tenant"), P.q_text(qp, "model")
        summary = usage_repo.summary(seconds, tenant=_tenant_id(tenants, tenant), model=model)
        out = summary.to_dict()
        out["window"] = window
        out["tenant_names"] = {t.id: t.name for t in tenants.list()}
        return json_response(out)

    async def profiles(_: Request) -> Response:
        return json_response({"profiles": profiles_dict(tenants.profiles)})

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
