"""The composition root: settings, store, supervisor, control API, gateway, signals, lock.

``studioctl daemon run`` calls ``run()``: one process per STUDIOCTL_HOME (a lock file held
with flock), the control API on a 0600 Unix socket, the gateway on TCP, systemd
``Type=notify`` support, and a graceful stop on SIGTERM/SIGINT that leaves engines running
(they are adopted on the next start) unless asked to stop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.daemon_lock import DaemonLock
from studioctl.errors import ConflictError, StudioError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp

    from studioctl.gateway.wiring import Gateway
    from studioctl.lifecycle.runtime import Instance
    from studioctl.telemetry import VramWatch

log = logging.getLogger("studioctl.daemon")


# --------------------------------------------------------------------------- systemd


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about READY=1 / STOPPING=1. No-op without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state, exc)
        return False


# --------------------------------------------------------------------------- sockets


def bind_unix(path: Path) -> socket.socket:
    """The control socket, 0600 in a runtime dir that is ours alone (``paths.private_dir``).

    Whatever is at ``path`` must be a socket (a stale one from a daemon that died: we hold the
    lock, so nobody else uses it); anything else is an error naming it, never removed. The
    mode comes from the umask at bind (no chmod by path, which a swapped entry could
    redirect) and is verified on the new entry.
    """
    paths.private_dir(path.parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else _file_kind(st.st_mode)
            raise StudioError(
                f"cannot create the control socket {path}: {kind} is in the way",
                code="socket_path_taken",
                hint=f"remove {path} (the daemon only replaces a stale socket)",
                details={"path": str(path)},
            )
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is created 0600: the file system is the authentication
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StudioError(
            f"cannot create the control socket {path}: {exc.strerror}",
            code="socket_path_taken",
            details={"path": str(path)},
        ) from exc
    finally:
        os.umask(old)
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        sock.close()
        raise StudioError(
            f"the control socket {path} came out as mode {stat.S_IMODE(st.st_mode):04o}, "
            f"uid {st.st_uid}: expected a socket of ours with mode 0600"
        )
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a file that is not a socket"


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from studioctl.lifecycle.osproc import OsProc

        holder = OsProc().port_holder(host, port) or "another process"
        raise ConflictError(
            f"gateway address {host}:{port} is taken by {holder}: {exc.strerror}",
            code="port_taken",
            hint="set gateway.port in studioctl.yaml or STUDIOCTL_GATEWAY_PORT",
        ) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


# --------------------------------------------------------------------------- logging


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    if os.environ.get("STUDIOCTL_DETACHED") != "1":
        # Detached (`daemon start`), stderr already goes to daemon.log: don't log twice.
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(fmt)
        root.addHandler(err)
    logfile = paths.daemon_log_file()
    paths.ensure_dir(logfile.parent)
    from logging.handlers import RotatingFileHandler

    fh = RotatingFileHandler(logfile, maxBytes=10 * 1024 * 1024, backupCount=3)
    fh.setFormatter(fmt)
    root.addHandler(fh)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- run


def run(*, verbose: bool = False) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT or a shutdown request."""
    from studioctl.settings import load_settings

    settings = load_settings()
    lock = DaemonLock(paths.daemon_lock_file())
    lock.acquire()
    setup_logging(verbose)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_main(settings))
    finally:
        lock.release()


def _loop_factory() -> Any:
    """uvloop when available (the gateway's hot path is ~2x faster on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (every connection is a descriptor; the
    usual soft default, 1024 or less, is soon reached). Returns (soft, hard) after it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel still caps it at fs.nr_open
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1048576
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft, hard


#: Descriptors kept for everything but gateway connections: the store, logs, engine pipes,
#: the engine HTTP client's connections, the control socket's clients.
FD_RESERVE = 256


def connection_budget(max_connections: int, nofile: int) -> int:
    """The gateway's connection limit within ``nofile`` descriptors (the soft limit; negative:
    unlimited): each connection may hold two (itself and its request to an engine), after
    FD_RESERVE for the rest of the daemon."""
    if nofile < 0:
        return max_connections
    return max(1, min(max_connections, (nofile - FD_RESERVE) // 2))


async def _drain_gateway(server: Any, app: Any, timeout_s: float) -> None:
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


async def _housekeeping(settings: Any, sup: Any, events: Any) -> None:
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


class _LateHooks:
    """The supervisor's hooks (``lifecycle.hooks.SupervisorHooks``): the VRAM watch, and the
    gateway (in-flight counts, last activity, the route table) once it is built."""

    def __init__(self, vram: VramWatch) -> None:
        self.vram = vram
        self.gateway: Gateway | None = None

    def inflight(self, instance_id: str) -> int:
        return self.gateway.inflight(instance_id) if self.gateway is not None else 0

    def last_activity(self, instance_id: str) -> float | None:
        return self.gateway.last_activity(instance_id) if self.gateway is not None else None

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        if self.gateway is not None:
            self.gateway.instances_changed(instances)

    async def vram_released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        return await self.vram.released(inst, held)


async def _main(settings: Any) -> int:
    from studioctl.control import DaemonInfo, ExtraStatus, build_control_app
    from studioctl.httpserver import Server, ServerLimits
    from studioctl.lifecycle.engine_http import EngineHttp
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.restart import RestartPolicy
    from studioctl.lifecycle.supervisor import Supervisor
    from studioctl.store.db import Database
    from studioctl.store.events import EventRepo
    from studioctl.store.migrations import migrate

    # Every connection is a descriptor: the soft limit up to the hard one, before anything
    # opens (engines inherit it too), and the gateway's connection limit within it.
    gs = settings.gateway
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
    tcp = (
        bind_tcp(settings.gateway.host, settings.gateway.port) if settings.gateway.enabled else None
    )
    db = Database(paths.database_file())
    migrate(db)
    bus = EventBus(EventRepo(db))
    d = settings.daemon
    policy = RestartPolicy(
        backoff_s=d.restart_backoff_s,
        backoff_max_s=d.restart_backoff_max_s,
        budget=d.crash_budget,
        window_s=d.crash_window_s,
    )
    from studioctl.control.gpus import telemetry_routes
    from studioctl.telemetry import GpuReader, Telemetry, VramWatch

    engine_http = EngineHttp()  # probes, drains and telemetry's scrapes: one session
    gpus = GpuReader()
    hooks = _LateHooks(VramWatch(gpus))  # evicts wait for their GPU memory
    sup = Supervisor(
        settings=settings,
        db=db,
        bus=bus,
        policy=policy,
        health_interval_s=d.health_interval_s,
        hooks=hooks,
        engine_http=engine_http,
    )
    stop = asyncio.Event()
    stop_engines = {"value": False}

    def request_shutdown(engines: bool) -> None:
        stop_engines["value"] = engines
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await sup.start()
    gateway: Any = None

    def gateway_snapshot() -> dict[str, Any]:
        # The gateway is built below (it serves telemetry's /metrics families) and before
        # telemetry starts sampling, so it is there by the first call.
        snap: dict[str, Any] = gateway.snapshot()
        return snap

    telemetry = Telemetry(
        sup,
        db=db,
        bus=bus,
        engine_http=engine_http,
        gpus=gpus,
        gateway_snapshot=gateway_snapshot if tcp is not None else None,
    )
    gateway_url = f"http://{gs.host}:{tcp.getsockname()[1]}/v1" if tcp is not None else None

    def make_control(
        routes: Sequence[BaseRoute] = (), extra_status: ExtraStatus | None = None
    ) -> Starlette:
        """The control app, complete when built: the gateway (when on) adds its admin
        routes and status figures before serving it under /admin/."""
        info = DaemonInfo(
            socket=str(paths.control_socket()),
            gateway_url=gateway_url,
            shutdown=request_shutdown,
            extra_status=extra_status,
        )
        return build_control_app(sup, bus, info, routes=[*telemetry_routes(telemetry), *routes])

    # The control socket (0600, our user only) gets the same bounds as the gateway.
    limits = ServerLimits.from_settings(gs, max_connections=max_conn)
    gw_server: Server | None = None
    gateway = None
    if tcp is None or gateway_url is None:
        control: ASGIApp = make_control()
        servers = [Server(control, control_sock, limits, name="control")]
    else:
        from studioctl.gateway.wiring import build_gateway

        gateway = await build_gateway(
            settings=settings,
            db=db,
            sup=sup,
            control=make_control,
            gateway_url=gateway_url,
            extra_metrics=telemetry.prometheus_lines,
        )
        assert gateway.app.admin_app is not None  # make_control's
        servers = [Server(gateway.app.admin_app, control_sock, limits, name="control")]
        hooks.gateway = gateway
        gw_server = Server(gateway.app, tcp, limits, name="gateway")
        servers.append(gw_server)
    await telemetry.start()
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    housekeeping = asyncio.create_task(_housekeeping(settings, sup, EventRepo(db)))
    log.info(
        "studioctl daemon %d ready: control %s, gateway %s",
        os.getpid(),
        paths.control_socket(),
        gateway_url or "off",
    )
    bus.publish("daemon", f"daemon started (pid {os.getpid()})", data={"pid": os.getpid()})
    sd_notify("READY=1")
    await asyncio.wait(
        [asyncio.create_task(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
    )
    sd_notify("STOPPING=1")
    log.info("stopping (engines %s)", "stop too" if stop_engines["value"] else "keep running")
    t0 = time.monotonic()
    housekeeping.cancel()
    if gw_server is not None and gateway is not None:
        await _drain_gateway(gw_server, gateway.app, gs.drain_timeout_s)
    for s in servers:
        s.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    await telemetry.stop()  # its scrapes end before the engine HTTP client closes
    try:
        await sup.close(stop_engines=stop_engines["value"])
        await telemetry.close()  # adds the last figures to the store
        await gpus.close()  # after the evicts of sup.close and the last sample
        if gateway is not None:
            await gateway.close()
        bus.publish("daemon", f"daemon stopped (pid {os.getpid()})", data={"pid": os.getpid()})
    except StudioError as exc:
        log.error("shutdown: %s", exc.message)
    finally:
        await engine_http.close()
        db.close()
        with contextlib.suppress(OSError):
            paths.control_socket().unlink()
    log.info("stopped in %.1fs", time.monotonic() - t0)
    return 0
