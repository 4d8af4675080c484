"""``GET /v1/models`` and ``GET /v1/models/{id}``: the model cards a request's tenant may see,
and the tenant of a request that is not proxied (its key from ``Authorization`` or the
``gateway.api_key_header``), which the mailbox routes use too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from studioctl.errors import GatewayError
from studioctl.gateway.asgi import Scope, Send, send_json
from studioctl.gateway.body import MAX_MODEL_CHARS, clip
from studioctl.gateway.context import Headers
from studioctl.gateway.routing import RouteTable
from studioctl.gateway.sse import json_dumps
from studioctl.tenants import TenantContext

__all__ = ["ModelCards"]


class ModelCards:
    """The model listing per tenant (``authenticate``: the admission's, 401 on a bad key)."""

    def __init__(
        self,
        routes: RouteTable,
        authenticate: Callable[[bytes | None, bytes | None], TenantContext],
        key_header: bytes | None,
    ) -> None:
        self.routes = routes
        self.authenticate = authenticate
        self.key_header = key_header

    def tenant(self, scope: Scope) -> TenantContext:
        """The request's tenant, from its key (or the anonymous tenant when allowed)."""
        authorization = api_key = None
        key_header = self.key_header
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == key_header:
                api_key = value
        return self.authenticate(authorization, api_key)

    def listing(self, scope: Scope) -> list[dict[str, Any]]:
        """``/v1/models``' data as the request's tenant may see it."""
        allowed = self.tenant(scope).limits.allowed_models
        data = self.routes.models()
        if allowed is not None:
            data = [m for m in data if m["id"] in allowed]
        return data

    async def models(self, scope: Scope, send: Send, extra: Headers | None) -> None:
        await send_json(
            send, 200, json_dumps({"object": "list", "data": self.listing(scope)}), extra
        )

    async def model(self, model: str, scope: Scope, send: Send, extra: Headers | None) -> None:
        """``GET /v1/models/{id}``: that model's card (names may hold '/')."""
        card = next((c for c in self.listing(scope) if c["id"] == model), None)
        if card is not None:
            return await send_json(send, 200, json_dumps(card), extra)
        raise GatewayError(
            404,
            "model_not_found",
            f"the model {clip(model, MAX_MODEL_CHARS)!r} does not exist",
            param="model",
        )
