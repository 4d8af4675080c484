"""The daemon's dealings with the operating system: the control socket and the gateway's
listening socket, systemd notification, the open-file limit, logging."""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from studioctl import paths
from studioctl.errors import ConflictError, StudioError

log = logging.getLogger("studioctl.daemon")


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


def loop_factory() -> Any:
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
