"""Assemble the gateway inside the daemon: tenants, auth, limits, usage writer, routes.

The route table follows the supervisor's instances (``Gateway.instances_changed``, called
through the daemon's supervisor hooks); eviction drains on the gateway's in-flight count; the
admin routes join the control app; usage rows go to SQLite through a background writer;
``GET /metrics`` adds instance states and the daemon's telemetry (``extra_metrics``) to the
gateway's own figures; ``Gateway.snapshot()`` feeds ``top``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl import API_VERSION, __version__
from studioctl.gateway.auth import Authenticator
from studioctl.gateway.limits import Limiter
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.proxy import GatewayApp
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.gateway.tokenize import PromptCounter
from studioctl.states import State
from studioctl.tenants import ANONYMOUS_TENANT_ID, TenantService, anonymous_context

if TYPE_CHECKING:
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp

    from studioctl.control import ExtraStatus
    from studioctl.lifecycle.runtime import Instance
    from studioctl.lifecycle.supervisor import Supervisor
    from studioctl.settings import Settings
    from studioctl.store.db import Database
    from studioctl.store.usage import UsageRepo, UsageWriter

log = logging.getLogger("studioctl.gateway")

HOUSEKEEPING_S = 60.0  # flush key last-used times, prune idle limiter state


@dataclass
class Gateway:
    app: GatewayApp
    tenants: TenantService
    routes: RouteTable
    limiter: Limiter
    metrics: GatewayMetrics
    usage_repo: UsageRepo
    writer: UsageWriter
    feed: RouteFeed
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _tenant_names: dict[str, str] | None = None  # tenant id → name, dropped on tenant changes

    def snapshot(self) -> dict[str, Any]:
        """The gateway's live figures for ``studioctl top``: requests answered so far, rejections
        by reason, requests in flight (all, and per tenant with any in flight). Called every
        second by telemetry: read from the counters, never by rendering /metrics."""
        totals = self.metrics.summary()
        if self._tenant_names is None:
            names = {t.id: t.name for t in self.tenants.list()}
            names.setdefault(ANONYMOUS_TENANT_ID, ANONYMOUS_TENANT_ID)
            self._tenant_names = names
        per_tenant = {
            name: n for tid, name in self._tenant_names.items() if (n := self.limiter.inflight(tid))
        }
        return {
            "requests_total": totals["requests_total"],
            "rejections": totals["rejections"],
            "inflight": self.limiter.inflight(),
            "max_concurrent": self.limiter.global_max_concurrent,
            "tenants_inflight": per_tenant,
        }

    # The gateway's half of the supervisor's hooks (lifecycle.hooks.SupervisorHooks).

    def inflight(self, instance_id: str) -> int:
        return self.routes.inflight(instance_id)

    def last_activity(self, instance_id: str) -> float | None:
        return self.routes.last_used(instance_id)

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        self.feed.instances_changed(instances)

    def _forget_tenants(self) -> None:
        self._tenant_names = None

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.app.shutdown()
        self.writer.close()
        with contextlib.suppress(Exception):
            self.tenants.flush_last_used()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RouteFeed:
    """Keeps the route table in step with the supervisor's instances (all of them, stopped
    included) and the recipes on disk (``known``: every served name and alias → recipe id)."""

    def __init__(self, routes: RouteTable, known: dict[str, str]) -> None:
        self.routes = routes
        self.known = known
        self.instances: list[Instance] = []

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        self.instances = list(instances)
        self.refresh()

    def known_changed(self, known: dict[str, str]) -> None:
        self.known = known
        self.refresh()

    def refresh(self) -> None:
        ups = [
            Upstream(
                instance_id=i.id,
                recipe_id=i.recipe.id,
                host=i.host if i.host not in ("0.0.0.0", "::", "") else "127.0.0.1",
                port=i.port,
                state=str(i.state),
                model_names=tuple(i.recipe.model_names),
                engine_names=(i.recipe.served_name,),  # aliases are rewritten to it
                api_key=i.api_key,  # the engine's own key: sent on every call to it
            )
            for i in self.instances
            if i.state != State.STOPPED
        ]
        # Recipes launched since the last scan (added after start-up) are known too: once
        # evicted, their names answer 503 model_not_running, not 404.
        names = {n: i.recipe.id for i in self.instances for n in i.recipe.model_names}
        self.routes.update(ups, {**names, **self.known})


class _Routes(RouteTable):
    """The route table, whose ``/metrics`` lines (instance states, in-flight counts) are
    followed by the daemon's own families (``extra``: telemetry's GPU/instance/energy lines)."""

    def __init__(self, extra: Callable[[], str] | None) -> None:
        super().__init__()
        self._extra = extra

    def metrics_lines(self) -> str:
        text = super().metrics_lines()
        if self._extra is None:
            return text
        try:
            return text + self._extra()
        except Exception:  # a telemetry fault must not take the gateway's /metrics down
            log.exception("extra /metrics lines failed")
            return text


async def build_gateway(
    *,
    settings: Settings,
    db: Database,
    sup: Supervisor,
    control: Callable[[Sequence[BaseRoute], ExtraStatus], ASGIApp],
    gateway_url: str,
    extra_metrics: Callable[[], str] | None = None,
) -> Gateway:
    from studioctl.control.tenants import tenant_routes
    from studioctl.store.usage import UsageRepo, UsageWriter

    gs = settings.gateway
    tenants = TenantService(db)
    anonymous = None
    if gs.allow_anonymous:
        if is_loopback(gs.host):
            anonymous = anonymous_context()
        else:
            log.warning(
                "gateway.allow_anonymous ignored: the gateway binds %s, not a loopback address",
                gs.host,
            )
    auth = Authenticator(tenants.lookup, anonymous=anonymous)
    tenants.subscribe(auth.invalidate)
    limiter = Limiter(global_max_concurrent=gs.max_concurrent)
    metrics = GatewayMetrics(
        tenant_labels=gs.metrics_tenant_labels, inflight_source=limiter.inflight
    )
    usage_repo = UsageRepo(db)
    writer = UsageWriter(usage_repo)
    routes = _Routes(extra_metrics)
    # Recipes on disk: re-read by housekeeping only.
    feed = RouteFeed(routes, _known_models(settings))
    feed.instances_changed(sup.list(include_stopped=True))

    async def health() -> dict[str, Any]:
        ok_store = await asyncio.to_thread(db.check)
        instances = {i.id: str(i.state) for i in sup.list()}
        return {
            "ok": ok_store,
            "store": "ok" if ok_store else "unreachable",
            "instances": instances,
        }

    async def gateway_status() -> dict[str, Any]:
        return {"gateway": {"url": gateway_url, "inflight": limiter.inflight(), "health": "ok"}}

    # The control app, with the admin routes and the gateway's status figures: served on the
    # socket by the daemon, and here under /admin/.
    admin_app = control(tenant_routes(tenants, usage_repo), gateway_status)
    app = GatewayApp(
        settings=gs,
        routes=routes,
        auth=auth,
        limiter=limiter,
        usage=writer,
        metrics=metrics,
        tokenizer=PromptCounter(),
        admin_app=admin_app,
        admin_token=settings.daemon.admin_token,
        health=health,
        version={"version": __version__, "api_version": API_VERSION},
    )
    await app.startup()
    gw = Gateway(
        app=app,
        tenants=tenants,
        routes=routes,
        limiter=limiter,
        metrics=metrics,
        usage_repo=usage_repo,
        writer=writer,
        feed=feed,
    )
    tenants.subscribe(gw._forget_tenants)

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await asyncio.to_thread(tenants.flush_last_used)
                limiter.prune()
                # Recipes added or edited on disk become known models.
                feed.known_changed(await asyncio.to_thread(_known_models, settings))
            except Exception:
                log.exception("gateway housekeeping failed")

    gw._tasks.append(asyncio.create_task(housekeeping()))
    return gw


def _known_models(settings: Settings) -> dict[str, str]:
    """Every recipe's served names and aliases → recipe id (for 503 model_not_running)."""
    from studioctl.recipes import recipe_dirs, scan_recipes

    scan = scan_recipes(recipe_dirs(settings))
    for err in scan.errors:  # a bad file must not take the good ones down with it
        log.warning("recipe skipped by the gateway: %s", err.message)
    out: dict[str, str] = {}
    for r in scan.recipes:
        for name in r.model_names:
            out.setdefault(name, r.id)
    return out
