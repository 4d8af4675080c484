"""The composition root: every part of the daemon built once, in dependency order, each given
what it needs in its constructor (docs/architecture.md, "The composition root").

1. the store and the event bus;
2. the GPU reader and the engine HTTP client (one session for probes, drains and scrapes);
3. the gateway core (tenants, auth, limits, metrics, usage writer, route table), which needs
   neither the supervisor nor telemetry;
4. the supervisor, with hooks answered by the gateway core and the VRAM watch;
5. telemetry, reading the supervisor and the GPU reader;
6. the gateway's waiting rooms and the on-demand orchestrator (told of instance changes by
   the hooks of step 4, acting through the supervisor);
7. the control API, with telemetry's and the tenants' routes, the gateway's status, and
   the rooms' queued counts and the orchestrator's preload (``control.Serving``);
8. the gateway's ASGI app, with the control app under /admin/, the rooms and the
   orchestrator's ``want`` hook, and telemetry's and the orchestrator's /metrics lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl import API_VERSION, __version__, paths
from studioctl.daemon.system import (
    bind_tcp,
    bind_unix,
    connection_budget,
    raise_nofile_limit,
    sd_notify,
)
from studioctl.errors import StudioError

if TYPE_CHECKING:
    import socket

    from starlette.types import ASGIApp

    from studioctl.gateway.app import GatewayApp
    from studioctl.gateway.queue import ModelQueues
    from studioctl.gateway.wiring import DaemonGateway, GatewayHooksSource
    from studioctl.httpserver import Server
    from studioctl.lifecycle.engine_http import EngineHttp
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.ondemand import OnDemand
    from studioctl.lifecycle.runtime import Instance
    from studioctl.lifecycle.supervisor import Supervisor
    from studioctl.settings import Settings
    from studioctl.store.db import Database, Feed
    from studioctl.telemetry import GpuReader, Telemetry, VramWatch
    from studioctl.webhooks.service import Mailbox

log = logging.getLogger("studioctl.daemon")


class DaemonHooks:
    """The supervisor's hooks (``lifecycle.hooks.SupervisorHooks``): in-flight counts, last
    activity and the instance list go to the gateway (when it is on); evicts wait on the VRAM
    watch."""

    def __init__(self, gateway: GatewayHooksSource | None, vram: VramWatch) -> None:
        self.gateway = gateway
        self.vram = vram
        self.listeners: list[Callable[[Sequence[Instance]], None]] = []

    def subscribe(self, listener: Callable[[Sequence[Instance]], None]) -> None:
        """Also tell ``listener`` every instance change (the on-demand orchestrator, built
        after the supervisor these hooks are given to)."""
        self.listeners.append(listener)

    def inflight(self, instance_id: str) -> int:
        return self.gateway.inflight(instance_id) if self.gateway is not None else 0

    def last_activity(self, instance_id: str) -> float | None:
        return self.gateway.last_activity(instance_id) if self.gateway is not None else None

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        if self.gateway is not None:
            self.gateway.instances_changed(instances)
        for listener in self.listeners:
            listener(instances)

    async def vram_released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        return await self.vram.released(inst, held)


@dataclass(eq=False)
class Parts:
    """Everything the daemon built, for serving and for the ordered shutdown."""

    settings: Settings
    db: Database
    bus: EventBus
    gpus: GpuReader
    engine_http: EngineHttp
    sup: Supervisor
    telemetry: Telemetry
    control: ASGIApp
    gateway: DaemonGateway | None = None
    ondemand: OnDemand | None = None
    queues: ModelQueues | None = None
    gateway_app: GatewayApp | None = None
    mailbox: Mailbox | None = None
    servers: list[Server] = field(default_factory=list)
    gateway_server: Server | None = None
    feed: Feed | None = None


def build(
    settings: Settings,
    *,
    tcp: socket.socket | None,
    shutdown: Callable[[bool], None],
) -> Parts:
    """Build every part (no event loop work yet: nothing is started here)."""
    from studioctl.control import DaemonInfo, Serving, build_control_app
    from studioctl.control.gpus import telemetry_routes
    from studioctl.control.mailbox import mailbox_routes
    from studioctl.control.requests import request_routes
    from studioctl.control.tenants import tenant_routes
    from studioctl.lifecycle.engine_http import EngineHttp
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.supervisor import Supervisor
    from studioctl.store import open_store
    from studioctl.store.events import EventRepo
    from studioctl.store.usage import RequestLog
    from studioctl.telemetry import GpuReader, Telemetry, VramWatch

    db = open_store(settings.store)  # migrated; SQLite, or PostgreSQL shared by daemons
    feed = db.change_feed()  # other daemons' tenant and key changes (None: SQLite)
    bus = EventBus(EventRepo(db))
    gpus = GpuReader()
    engine_http = EngineHttp()  # probes, drains and telemetry's scrapes: one session
    gateway = mailbox = None
    if tcp is not None:
        from studioctl.gateway.wiring import build_gateway_core

        gateway = build_gateway_core(settings, db, feed)
    hooks = DaemonHooks(gateway.hooks() if gateway else None, VramWatch(gpus))
    sup = Supervisor(
        settings=settings,
        db=db,
        bus=bus,
        policy=_restart_policy(settings),
        health_interval_s=settings.daemon.health_interval_s,
        hooks=hooks,
        engine_http=engine_http,
    )
    telemetry = Telemetry(
        sup,
        db=db,
        bus=bus,
        engine_http=engine_http,
        gpus=gpus,
        gateway_snapshot=gateway.core.snapshot if gateway else None,
    )
    url = f"http://{settings.gateway.host}:{tcp.getsockname()[1]}/v1" if tcp else None
    routes = list(telemetry_routes(telemetry))
    if gateway is not None:  # tenants and usage live with the gateway that enforces them
        routes += tenant_routes(gateway.tenants, gateway.usage_repo)
        routes += request_routes(gateway.tenants, RequestLog(db))
        mailbox = _mailbox(settings, db)
        routes += mailbox_routes(mailbox, gateway.tenants)
    info = DaemonInfo(
        socket=str(paths.control_socket()),
        gateway_url=url,
        shutdown=shutdown,
        extra_status=_gateway_status(gateway, url),
    )
    queues = ondemand = None
    serving = Serving()
    if gateway is not None:
        queues, ondemand = _on_demand(settings, gateway, hooks, sup, bus, db, gpus)
        serving = Serving(queues.counts, gateway.core.routes.recipe_of, ondemand.preload)
    control = build_control_app(sup, bus, info, routes=routes, serving=serving)
    parts = Parts(settings, db, bus, gpus, engine_http, sup, telemetry, control, gateway)
    parts.queues, parts.ondemand, parts.mailbox = queues, ondemand, mailbox
    parts.feed = feed
    if gateway is not None:
        parts.gateway_app = _gateway_app(parts, gateway)
    return parts


def _mailbox(settings: Settings, db: Database) -> Mailbox:
    """The mailbox over the store's database, with its delivery worker (started later)."""
    from studioctl.store.mailbox import MailboxRepo
    from studioctl.webhooks.service import Mailbox
    from studioctl.webhooks.worker import DeliveryWorker

    if settings.mailbox.backend == "postgres":
        log.warning("mailbox.backend postgres: the mailbox is kept in the store's database")
    repo = MailboxRepo(db)
    worker = DeliveryWorker(repo=repo, settings=settings.webhook)
    return Mailbox(
        repo=repo,
        webhook=settings.webhook,
        mailbox=settings.mailbox,
        worker=worker,
        clock=time.time,
    )


def _on_demand(
    settings: Settings,
    gateway: DaemonGateway,
    hooks: DaemonHooks,
    sup: Supervisor,
    bus: EventBus,
    db: Database,
    gpus: GpuReader,
) -> tuple[ModelQueues, OnDemand]:
    """The gateway's waiting rooms and the orchestrator that loads what they wait for."""
    from studioctl.gateway.queue import ModelQueues
    from studioctl.lifecycle import memory
    from studioctl.lifecycle.ondemand import OnDemand
    from studioctl.recipes import recipe_dirs, scan_recipes
    from studioctl.store.vram import VramRepo

    gs, core = settings.gateway, gateway.core
    queues = ModelQueues(
        routes=core.routes,
        limiter=core.limiter,
        metrics=core.metrics,
        depth=gs.queue_depth,
        timeout_s=gs.queue_timeout_s,
        when_busy=gs.queue_when_busy,
        in_order=settings.scheduler.policy == "fifo",  # strict FIFO: nobody overtakes
        rules=gateway.queue_rules,  # a recipe's own queue_depth / queue_timeout_s
    )
    vram = VramRepo(db)
    ondemand = OnDemand(
        settings=settings,
        engines=sup,
        queues=queues,
        bus=bus,
        recipes=lambda: scan_recipes(recipe_dirs(settings)).recipes,
        subscribe=hooks.subscribe,
        inflight=hooks.inflight,
        last_activity=hooks.last_activity,
        host_gpus=lambda: gpus.last,
        learned_gb=lambda r: memory.learned_gb(vram, r),
    )
    return queues, ondemand


def _restart_policy(settings: Settings) -> Any:
    from studioctl.lifecycle.restart import RestartPolicy

    d = settings.daemon
    return RestartPolicy(
        backoff_s=d.restart_backoff_s,
        backoff_max_s=d.restart_backoff_max_s,
        budget=d.crash_budget,
        window_s=d.crash_window_s,
    )


def _gateway_status(
    gateway: DaemonGateway | None, url: str | None
) -> Callable[[], Awaitable[dict[str, Any]]] | None:
    if gateway is None:
        return None
    from studioctl.gateway.wiring import gateway_status

    return gateway_status(gateway.core.limiter, url)


def _gateway_app(parts: Parts, gateway: DaemonGateway) -> GatewayApp:
    from studioctl.buildinfo import build_info
    from studioctl.gateway.app import GatewayApp
    from studioctl.gateway.wiring import gateway_health

    return GatewayApp(
        gateway.core,
        settings=parts.settings.gateway,
        admin_app=parts.control,
        admin_token=parts.settings.daemon.admin_token,
        health=gateway_health(parts.db, parts.sup.list, gateway.core.limiter),
        version={"version": __version__, "api_version": API_VERSION, **build_info()},
        extra_metrics=_metrics_lines(parts),
        queues=parts.queues,
        want=parts.ondemand.want if parts.ondemand is not None else None,
        mailbox=parts.mailbox,
    )


def _metrics_lines(parts: Parts) -> Callable[[], str]:
    """Telemetry's lines on /metrics, then the on-demand decisions' counters."""
    telemetry, ondemand = parts.telemetry, parts.ondemand
    if ondemand is None:
        return telemetry.prometheus_lines
    return lambda: telemetry.prometheus_lines() + ondemand.metrics_lines()


async def main(settings: Settings) -> int:
    """Bind, build, start, serve until SIGTERM/SIGINT or a shutdown request, stop."""
    from studioctl.httpserver import Server, ServerLimits

    gs = settings.gateway
    # Every connection is a descriptor: the soft limit up to the hard one, before anything
    # opens (engines inherit it too), and the gateway's connection limit within it.
    nofile, hard = raise_nofile_limit()
    max_conn = connection_budget(gs.max_connections, nofile)
    log.info("open-file limit %d (hard %d): up to %d connections", nofile, hard, max_conn)
    if max_conn < gs.max_connections:
        log.warning(
            "gateway.max_connections %d lowered to %d: the open-file limit is %d "
            "(raise it, e.g. LimitNOFILE=65536 in the systemd unit)",
            gs.max_connections,
            max_conn,
            nofile,
        )
    # Bind first: a taken gateway port is a clear error (exit 5) before anything starts.
    control_sock = bind_unix(paths.control_socket())
    tcp = bind_tcp(gs.host, gs.port) if gs.enabled else None
    stop = asyncio.Event()
    stop_engines = {"value": False}

    def request_shutdown(engines: bool) -> None:
        stop_engines["value"] = engines
        stop.set()

    parts = build(settings, tcp=tcp, shutdown=request_shutdown)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The control socket (0600, our user only) gets the same bounds as the gateway.
    limits = ServerLimits.from_settings(gs, max_connections=max_conn)
    parts.servers.append(Server(parts.control, control_sock, limits, name="control"))
    if tcp is not None and parts.gateway_app is not None:
        parts.gateway_server = Server(parts.gateway_app, tcp, limits, name="gateway")
        parts.servers.append(parts.gateway_server)
    background = await _start(parts)
    tasks = [asyncio.create_task(s.serve()) for s in parts.servers]
    log.info(
        "studioctl daemon %d ready: control %s, gateway %s",
        os.getpid(),
        paths.control_socket(),
        f"http://{gs.host}:{tcp.getsockname()[1]}/v1" if tcp else "off",
    )
    parts.bus.publish("daemon", f"daemon started (pid {os.getpid()})", data={"pid": os.getpid()})
    sd_notify("READY=1")
    await asyncio.wait(
        [asyncio.create_task(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
    )
    sd_notify("STOPPING=1")
    await _stop(parts, tasks, background, stop_engines=stop_engines["value"])
    return 0


async def _start(parts: Parts) -> list[asyncio.Task[None]]:
    """Adopt what runs, then start the background work; the tasks to cancel at stop."""
    from studioctl.store.events import EventRepo

    await parts.sup.start()
    background = [
        asyncio.create_task(_housekeeping(parts.settings, parts.sup, EventRepo(parts.db)))
    ]
    if parts.gateway is not None and parts.gateway_app is not None:
        await parts.gateway_app.startup()
        if parts.mailbox is not None:
            parts.mailbox.worker.start()
        background.append(asyncio.create_task(parts.gateway.housekeeping(parts.settings)))
    await parts.telemetry.start()
    if parts.ondemand is not None:  # after telemetry: its GPU reading gives the capacity
        await parts.ondemand.start()
    return background


async def _stop(
    parts: Parts,
    tasks: list[asyncio.Task[None]],
    background: list[asyncio.Task[None]],
    *,
    stop_engines: bool,
) -> None:
    """Drain the gateway, stop serving, then telemetry, the supervisor (engines keep running
    unless ``stop_engines``), the gateway's writers and the store, in that order."""
    log.info("stopping (engines %s)", "stop too" if stop_engines else "keep running")
    t0 = time.monotonic()
    for t in background:
        t.cancel()
    if parts.ondemand is not None:  # nothing new loads while the daemon stops
        await parts.ondemand.close()
    if parts.gateway_server is not None and parts.gateway_app is not None:
        await _drain_gateway(
            parts.gateway_server, parts.gateway_app, parts.settings.gateway.drain_timeout_s
        )
    for s in parts.servers:
        s.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    await parts.telemetry.stop()  # before the engine HTTP client it scrapes with closes
    pid = os.getpid()
    try:
        await parts.sup.close(stop_engines=stop_engines)
        await parts.telemetry.close()  # adds the last figures to the store
        await parts.engine_http.close()
        await parts.gpus.close()
        if parts.gateway_app is not None:
            await parts.gateway_app.shutdown()
        if parts.mailbox is not None:  # after the drain: kept requests stored their records
            await parts.mailbox.worker.close()
        if parts.gateway is not None:
            parts.gateway.close()
        parts.bus.publish("daemon", f"daemon stopped (pid {pid})", data={"pid": pid})
    except StudioError as exc:
        log.error("shutdown: %s", exc.message)
    finally:
        if parts.feed is not None:
            parts.feed.close()
        parts.db.close()
        with contextlib.suppress(OSError):
            paths.control_socket().unlink()
    log.info("stopped in %.1fs", time.monotonic() - t0)


async def _drain_gateway(server: Server, app: GatewayApp, timeout_s: float) -> None:
    """Stop accepting gateway connections, let in-flight requests finish (``drain_timeout_s``),
    then end the rest: ``GatewayApp.drain`` answers new requests on open connections 503
    ``shutting_down``, ends streams still running at the deadline with an error event and
    records every row."""
    server.stop_accepting()
    busy = server.inflight()
    if busy:
        log.info("draining %d gateway requests (up to %gs)", busy, timeout_s)
    try:
        await app.drain(timeout_s)
    except Exception:
        log.exception("gateway drain failed")


async def _housekeeping(settings: Settings, sup: Supervisor, events: Any) -> None:
    """Daily: delete old instance logs and events (``logs.retention_days``)."""
    days = settings.logs.retention_days
    while True:
        try:
            removed = sup.prune_logs(days)
            pruned = events.prune(time.time() - days * 86400)
            if removed or pruned:
                log.info("retention: removed %d log files, %d events", len(removed), pruned)
        except Exception:
            log.exception("housekeeping failed")
        await asyncio.sleep(86400)
