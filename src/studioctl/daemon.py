"""The composition root: settings, store, supervisor, control API, gateway, signals, lock.

``studioctl daemon run`` calls ``run()``: one process per STUDIOCTL_HOME (a lock file held
with flock), the control API on a 0600 Unix socket, the gateway on TCP, systemd
``Type=notify`` support, and a graceful stop on SIGTERM/SIGINT that leaves engines running
(they are adopted on the next start) unless asked to stop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import IO, Any

from studioctl import paths
from studioctl.errors import ConflictError, StudioError

log = logging.getLogger("studioctl.daemon")


# --------------------------------------------------------------------------- lock


class DaemonLock:
    """An flock on ``daemon.lock`` holding our pid. Released by the kernel if we die."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        paths.ensure_dir(self.path.parent)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConflictError(
                f"a daemon is already running for this STUDIOCTL_HOME (pid {holder})",
                code="daemon_running",
                hint="studioctl daemon status   /   studioctl daemon stop",
                details={"pid": int(holder) if holder.isdigit() else None},
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.seek(0)
                self._fh.truncate()
            self._fh.close()
            self._fh = None


def lock_holder(path: Path | None = None) -> int | None:
    """The pid of the running daemon, from its lock, or None when no daemon holds it."""
    path = path or paths.daemon_lock_file()
    try:
        fh = open(path)  # noqa: SIM115
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


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
#: the supervisor's and telemetry's HTTP sessions, the control socket's clients.
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


async def _main(settings: Any) -> int:
    from studioctl.control import DaemonInfo, build_control_app
    from studioctl.httpserver import Server, ServerLimits
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.restart import RestartPolicy
    from studioctl.lifecycle.supervisor import Supervisor
    from studioctl.store.db import Database
    from studioctl.store.events import EventRepo

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
    db.migrate()
    bus = EventBus(EventRepo(db))
    d = settings.daemon
    policy = RestartPolicy(
        backoff_s=d.restart_backoff_s,
        backoff_max_s=d.restart_backoff_max_s,
        budget=d.crash_budget,
        window_s=d.crash_window_s,
    )
    sup = Supervisor(
        settings=settings,
        db=db,
        bus=bus,
        policy=policy,
        health_interval_s=d.health_interval_s,
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
    from studioctl.telemetry import Telemetry, control_routes

    # Scrapes engines with the supervisor's aiohttp session; waits for VRAM after evicts.
    telemetry = Telemetry(sup, db=db, bus=bus, session=lambda: sup.session)
    sup.vram_release = telemetry.vram_released
    extra_routes = control_routes(telemetry)
    gateway = None
    gateway_url = None
    extra_status = None
    if tcp is not None:
        from studioctl.gateway import wiring

        gateway = wiring.build_gateway_core(settings, db)
        gateway_url = f"http://{settings.gateway.host}:{tcp.getsockname()[1]}/v1"
        extra_routes += wiring.admin_routes_for(gateway)
        extra_status = wiring.gateway_status(gateway.core.limiter, gateway_url)
        # -- supervisor -> gateway: the one place where attributes of the supervisor are
        # set (until Supervisor takes ``hooks=``; then this is the hooks adapter).
        hooks = gateway.hooks()

        def instances_changed() -> None:
            hooks.instances_changed(sup.list(include_stopped=True))

        sup.on_change.append(instances_changed)
        sup.gateway_inflight = hooks.inflight
        sup.last_activity = hooks.last_activity
        instances_changed()
        # -- end of the supervisor attributes
        telemetry.gateway = gateway.core.snapshot
    info = DaemonInfo(
        socket=str(paths.control_socket()),
        shutdown=request_shutdown,
        gateway_url=gateway_url,
        extra_status=extra_status,
    )
    control = build_control_app(sup, bus, info, extra_routes=extra_routes)
    # The control socket (0600, our user only) gets the same bounds as the gateway.
    limits = ServerLimits.from_settings(gs, max_connections=max_conn)
    servers = [Server(control, control_sock, limits, name="control")]
    gw_server: Server | None = None
    gateway_app = None
    gw_tasks: list[asyncio.Task[None]] = []
    if tcp is not None and gateway is not None:
        from studioctl import API_VERSION, __version__
        from studioctl.gateway.app import GatewayApp

        gateway_app = GatewayApp(
            gateway.core,
            settings=settings.gateway,
            admin_app=control,
            admin_token=settings.daemon.admin_token,
            health=wiring.gateway_health(db, sup.list),
            version={"version": __version__, "api_version": API_VERSION},
            extra_metrics=telemetry.prometheus_lines,
        )
        await gateway_app.startup()
        gw_tasks.append(asyncio.create_task(gateway.housekeeping(settings)))
        gw_server = Server(gateway_app, tcp, limits, name="gateway")
        servers.append(gw_server)
    await telemetry.start()
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    housekeeping = asyncio.create_task(_housekeeping(settings, sup, EventRepo(db)))
    log.info(
        "studioctl daemon %d ready: control %s, gateway %s",
        os.getpid(),
        info.socket,
        info.gateway_url or "off",
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
    if gw_server is not None and gateway_app is not None:
        await _drain_gateway(gw_server, gateway_app, gs.drain_timeout_s)
    for s in servers:
        s.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    await telemetry.stop()  # before the supervisor closes the session it scrapes with
    try:
        await sup.close(stop_engines=stop_engines["value"])
        await telemetry.close()  # adds the last figures to the store
        for t in gw_tasks:
            t.cancel()
        if gateway_app is not None:
            await gateway_app.shutdown()
        if gateway is not None:
            gateway.close()
        bus.publish("daemon", f"daemon stopped (pid {os.getpid()})", data={"pid": os.getpid()})
    except StudioError as exc:
        log.error("shutdown: %s", exc.message)
    finally:
        db.close()
        with contextlib.suppress(OSError):
            paths.control_socket().unlink()
    log.info("stopped in %.1fs", time.monotonic() - t0)
    return 0
