"""Assemble the gateway inside the daemon: tenants, auth, limits, usage writer, routes.

:func:`build_gateway_core` builds what needs neither the supervisor nor telemetry (tenants
from the store, usage rows to SQLite through a background writer, the route table, the
upstream pool); :class:`GatewayHooksSource` is what the supervisor asks the gateway (requests
in flight, last activity) and tells it (instances changed). The daemon's composition root
(``studioctl.daemon.compose``) then builds ``GatewayApp(core, ...)`` with everything else it
needs in its constructor, and gives the control API the tenants' routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studioctl.gateway.admission import anonymous_allowed
from studioctl.gateway.auth import Authenticator
from studioctl.gateway.core import GatewayCore, new_pool
from studioctl.gateway.limiting import LimitsBackend
from studioctl.gateway.limits import Limiter
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.queue import QueueRules
from studioctl.gateway.routing import RouteTable
from studioctl.gateway.tokenize import PromptCounter
from studioctl.tenants import TenantService, anonymous_context, default_limits

if TYPE_CHECKING:
    from studioctl.lifecycle.runtime import Instance
    from studioctl.recipes import Recipe
    from studioctl.settings import Settings
    from studioctl.store.db import Database, Feed
    from studioctl.store.usage import UsageRepo, UsageWriter

log = logging.getLogger("studioctl.gateway")

HOUSEKEEPING_S = 60.0  # flush key last-used times, prune idle limiter state, rescan recipes

__all__ = [
    "HOUSEKEEPING_S",
    "DaemonGateway",
    "GatewayHooksSource",
    "KnownModels",
    "build_gateway_core",
    "build_limiter",
    "gateway_health",
    "gateway_status",
    "known_models",
    "model_names",
    "recipes_on_disk",
]


class GatewayHooksSource:
    """The gateway's side of the supervisor's hooks, backed by the route table."""

    __slots__ = ("_routes",)

    def __init__(self, routes: RouteTable) -> None:
        self._routes = routes

    def inflight(self, instance_id: str) -> int:
        """Gateway requests in flight to the instance (eviction drains on 0)."""
        return self._routes.inflight(instance_id)

    def last_activity(self, instance_id: str) -> float | None:
        """time.time() when the last request to the instance ended (idle unload)."""
        return self._routes.last_used(instance_id)

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        """Every instance, stopped included, whenever one changes."""
        self._routes.instances_changed(instances)


@dataclass(kw_only=True, eq=False)
class DaemonGateway:
    """The gateway core as the daemon builds it, with the store-backed parts it closes."""

    core: GatewayCore
    tenants: TenantService
    usage_repo: UsageRepo
    writer: UsageWriter
    # Each model name's recipe and its own queue_depth / queue_timeout_s (for the waiting
    # rooms), read with the route table's known models.
    queue_rules: QueueRules

    def hooks(self) -> GatewayHooksSource:
        return GatewayHooksSource(self.core.routes)

    async def housekeeping(self, settings: Settings) -> None:
        """Every HOUSEKEEPING_S: flush key last-used times, prune idle limiter state,
        rescan the recipes (added or edited on disk become known models). Runs until
        cancelled."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await asyncio.to_thread(self.tenants.flush_last_used)
                self.core.limiter.prune()
                recipes = await asyncio.to_thread(recipes_on_disk, settings)
                known = known_models(settings, recipes)
                self.core.routes.recipes_changed(known.names, known.on_demand)
                self.queue_rules.recipes_changed(recipes)
            except Exception:
                log.exception("gateway housekeeping failed")

    def close(self) -> None:
        """Write the queued usage rows and the keys' last-used times."""
        self.writer.close()
        with contextlib.suppress(Exception):
            self.tenants.flush_last_used()


def build_gateway_core(settings: Settings, db: Database, feed: Feed | None = None) -> DaemonGateway:
    """Tenants, auth, limits, metrics, usage writer, route table (with the recipes on disk),
    the upstream pool and the prompt counter: everything the gateway needs but the
    supervisor and telemetry. Starts the usage writer's thread; needs no event loop."""
    from studioctl.store.usage import Pruner, Retention, UsageRepo, UsageWriter

    gs = settings.gateway
    tenants = TenantService(db, default_limits=default_limits(settings.tenants))
    anonymous = None
    if gs.allow_anonymous:
        if anonymous_allowed(gs):
            anonymous = anonymous_context()
        else:
            log.warning(
                "gateway.allow_anonymous ignored: the gateway binds %s, not a loopback address",
                gs.host,
            )
    auth = Authenticator(
        tenants.lookup,
        anonymous=anonymous,
        api_key_header=gs.api_key_header,
        refresh=feed.poll if feed is not None else None,  # other daemons' changes
        fail_open=settings.store.fail_open,
    )
    tenants.subscribe(auth.invalidate)
    if feed is not None:  # other daemons on the same database: hear them, tell them
        feed.subscribe(tenants.changed_elsewhere)
    limiter = build_limiter(settings)
    metrics = GatewayMetrics(
        tenant_labels=gs.metrics_tenant_labels, inflight_source=limiter.inflight
    )
    us = settings.usage
    retention = Retention(days=us.retention_days)
    usage_repo = UsageRepo(db, retention=retention, body_max_bytes=us.body_max_bytes)
    pruner = Pruner(db, retention=retention, body_retention_days=us.body_retention_days)
    # Prunes in its thread; holds up to store.buffer_rows while the store is unreachable.
    writer = UsageWriter(usage_repo, prune=pruner.step, max_pending=settings.store.buffer_rows)
    routes = RouteTable()
    recipes = recipes_on_disk(settings)  # read again by housekeeping
    known = known_models(settings, recipes)
    routes.recipes_changed(known.names, known.on_demand)
    pool = new_pool()
    core = GatewayCore(
        routes=routes,
        auth=auth,
        limiter=limiter,
        metrics=metrics,
        usage=writer,
        pool=pool,
        tokenizer=PromptCounter(new_pool(), max_calls=max(gs.max_concurrent, 1)),
        tenants=tenants,
    )
    tenants.subscribe(core.forget_tenants)
    if feed is not None:
        tenants.subscribe(feed.announce)
    return DaemonGateway(
        core=core,
        tenants=tenants,
        usage_repo=usage_repo,
        writer=writer,
        queue_rules=QueueRules(recipes),
    )


def build_limiter(settings: Settings) -> LimitsBackend:
    """``limits.backend``: this process's memory, or Redis (imported only then)."""
    gs, ls = settings.gateway, settings.limits
    if ls.backend != "redis" or ls.redis_url is None:
        return Limiter(global_max_concurrent=gs.max_concurrent)
    from studioctl.gateway.limits_redis import RedisLimiter
    from studioctl.gateway.redis_client import RedisClient

    return RedisLimiter(
        RedisClient(ls.redis_url),
        global_max_concurrent=gs.max_concurrent,
        lease_s=ls.lease_s,
        namespace=ls.namespace,
        fail_open=ls.fail_open,
    )


@dataclass(frozen=True)
class KnownModels:
    """The recipes on disk as the route table needs them."""

    names: dict[str, str]  # every served name and alias → recipe id (503 model_not_running)
    on_demand: frozenset[str]  # the ids a request loads (listed by /v1/models while stopped)


def known_models(settings: Settings, recipes: Sequence[Recipe] | None = None) -> KnownModels:
    """Every recipe's served names and aliases, and which recipes load on demand (the
    recipe's ``on_demand``, else ``gateway.load_on_demand``: ``Recipe.loads_on_demand``).
    ``recipes``: as ``recipes_on_disk`` read them (read now when not given)."""
    if recipes is None:
        recipes = recipes_on_disk(settings)
    default = settings.gateway.load_on_demand
    on_demand = frozenset(r.id for r in recipes if r.loads_on_demand(default))
    return KnownModels(model_names(recipes), on_demand)


def recipes_on_disk(settings: Settings) -> list[Recipe]:
    """The recipes in the recipe folders, the first of a duplicate id only (the one served,
    as in recipes.catalog); a bad file is logged and skipped."""
    from studioctl.recipes import recipe_dirs, scan_recipes

    scan = scan_recipes(recipe_dirs(settings))
    for err in scan.errors:  # a bad file must not take the good ones down with it
        log.warning("recipe skipped by the gateway: %s", err.message)
    seen: set[str] = set()
    out: list[Recipe] = []
    for r in scan.recipes:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out


def model_names(recipes: Sequence[Recipe]) -> dict[str, str]:
    """Served names and aliases → recipe id (the first recipe to claim a name keeps it)."""
    out: dict[str, str] = {}
    for r in recipes:
        for name in r.model_names:
            out.setdefault(name, r.id)
    return out


def gateway_health(
    db: Database,
    instances: Callable[[], Sequence[Instance]],
    limiter: LimitsBackend | None = None,
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """``GET /healthz``'s report: the store reachable, the limits backend (``redis
    unreachable``: unhealthy unless ``limits.fail_open`` keeps admitting), and every
    instance's state."""

    async def health() -> dict[str, Any]:
        ok_store = await asyncio.to_thread(db.check)
        return {
            "ok": ok_store and (limiter is None or limiter.serving()),
            "store": "ok" if ok_store else f"{db.backend} unreachable",
            "limits": "ok" if limiter is None else limiter.health(),
            "instances": {i.id: str(i.state) for i in instances()},
        }

    return health


def gateway_status(
    limiter: LimitsBackend, url: str | None
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The gateway's part of the daemon's status (``DaemonInfo.extra_status``)."""

    async def status() -> dict[str, Any]:
        return {"gateway": {"url": url, "inflight": limiter.inflight(), "health": "ok"}}

    return status
