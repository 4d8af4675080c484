"""The gateway's long-lived parts, built once and handed to ``GatewayApp`` whole.

``wiring.build_gateway_core`` builds them for the daemon (tenants from the store, usage rows
to SQLite); tests build them from their own parts. Nothing here needs the supervisor or
telemetry: the route table is told about instances (``RouteTable.instances_changed``), and
``snapshot()`` gives ``top`` its live figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl.gateway.auth import Authenticator
from studioctl.gateway.limiting import LimitsBackend
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.routing import RouteTable
from studioctl.gateway.tokenize import PromptCounter
from studioctl.gateway.upstream import UpstreamPool
from studioctl.gateway.usage import UsageQueue
from studioctl.tenants import ANONYMOUS_TENANT_ID

if TYPE_CHECKING:
    from studioctl.tenants import TenantService

__all__ = ["UPSTREAM_CONNECT_TIMEOUT_S", "UPSTREAM_KEEPALIVE_S", "GatewayCore", "new_pool"]

# Idle upstream connections are closed before the engine would (uvicorn-based engines such
# as vLLM drop idle keep-alive connections after 5 s): no request ever goes out on a
# connection the engine is closing.
UPSTREAM_KEEPALIVE_S = 4.0
UPSTREAM_CONNECT_TIMEOUT_S = 10.0


def new_pool() -> UpstreamPool:
    """Keep-alive connections toward the engines (one for the proxied requests, one for
    the PromptCounter's ``/tokenize`` calls: the same client)."""
    return UpstreamPool(
        keepalive_s=UPSTREAM_KEEPALIVE_S, connect_timeout_s=UPSTREAM_CONNECT_TIMEOUT_S
    )


@dataclass(kw_only=True, eq=False)
class GatewayCore:
    """What every gateway request uses. ``tenants``: the store's tenant service, when there
    is one (it names the tenants in :meth:`snapshot`)."""

    routes: RouteTable
    auth: Authenticator
    limiter: LimitsBackend
    metrics: GatewayMetrics
    usage: UsageQueue
    pool: UpstreamPool
    tokenizer: PromptCounter
    tenants: TenantService | None = None
    # tenant id → name, dropped by forget_tenants() when tenants change
    _tenant_names: dict[str, str] | None = field(default=None, init=False, repr=False)

    def snapshot(self) -> dict[str, Any]:
        """The gateway's live figures for ``studioctl top``: requests answered so far,
        rejections by reason, requests in flight (all, and per tenant with any in flight).
        Called every second by telemetry: read from the counters, never by rendering
        /metrics."""
        totals = self.metrics.summary()
        names = self._tenant_names
        if names is None:
            names = {t.id: t.name for t in self.tenants.list()} if self.tenants else {}
            names.setdefault(ANONYMOUS_TENANT_ID, ANONYMOUS_TENANT_ID)
            self._tenant_names = names
        per_tenant = {name: n for tid, name in names.items() if (n := self.limiter.inflight(tid))}
        return {
            "requests_total": totals["requests_total"],
            "rejections": totals["rejections"],
            "inflight": self.limiter.inflight(),
            "max_concurrent": self.limiter.global_max_concurrent,
            "tenants_inflight": per_tenant,
        }

    def forget_tenants(self) -> None:
        """Tenants changed: :meth:`snapshot` reads their names again."""
        self._tenant_names = None
