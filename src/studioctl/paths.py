"""Where studioctl keeps things. Pure functions: no I/O at import time.

``STUDIOCTL_HOME`` puts every directory under one folder (tests always set it):

    $STUDIOCTL_HOME/config   studioctl.yaml, recipes/
    $STUDIOCTL_HOME/state    studioctl.db (SQLite), daemon lock
    $STUDIOCTL_HOME/log      daemon.log, instances/<id>.log
    $STUDIOCTL_HOME/cache
    $STUDIOCTL_HOME/run      control.sock, daemon.pid

Without it, the platform's directories (platformdirs; XDG on Linux) are used.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

APP = "studioctl"


def home() -> Path | None:
    value = os.environ.get("STUDIOCTL_HOME")
    return Path(value).expanduser().absolute() if value else None


def _platform(kind: str) -> Path:
    import platformdirs  # imported lazily: keeps `studioctl --help` fast

    fn = getattr(platformdirs, f"user_{kind}_dir")
    return Path(fn(APP, appauthor=False))


def config_dir() -> Path:
    h = home()
    return h / "config" if h else _platform("config")


def state_dir() -> Path:
    h = home()
    return h / "state" if h else _platform("state")


def log_dir() -> Path:
    h = home()
    return h / "log" if h else _platform("log")


def runtime_dir() -> Path:
    h = home()
    if h:
        return h / "run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / APP
    # No per-user runtime dir (root shells, containers): a private folder in /tmp.
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}"


def settings_file() -> Path:
    return config_dir() / "studioctl.yaml"


def user_recipes_dir() -> Path:
    return config_dir() / "recipes"


def database_file() -> Path:
    return state_dir() / "studioctl.db"


def control_socket() -> Path:
    return runtime_dir() / "control.sock"


def daemon_lock_file() -> Path:
    return state_dir() / "daemon.lock"


def daemon_log_file() -> Path:
    return log_dir() / "daemon.log"


def instance_log_dir() -> Path:
    return log_dir() / "instances"


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` and its missing parents, each with ``mode`` (mkdir's ``mode`` alone
    covers the last one only: a recipes folder must not leave ``config/`` at 0755)."""
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            d.mkdir(mode=mode)
    if not path.is_dir():
        path.mkdir()  # raises the precise error (FileExistsError: a file is in the way)
    return path


def private_dir(path: Path, *, create: bool = True) -> Path:
    """Create ``path`` (0700) if missing and prove it is ours alone: a directory, not a
    symbolic link, owned by this user and writable by nobody else. With ``create=False``
    (a client about to connect), a missing folder is left missing and passes.

    The runtime dir may fall back to ``/tmp/studioctl-<uid>``, which anyone can create first;
    a folder another user owns (or may write to) would let them swap our control socket for
    their own. Checked on an ``O_NOFOLLOW`` descriptor, so a symlink or a rename between the
    check and the use cannot redirect it. Raises ``ConflictError`` naming what it found.
    """
    from studioctl.errors import ConflictError

    if not create:
        if not os.path.lexists(path):
            return path
    else:
        if not path.parent.exists():
            ensure_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    hint = "remove or fix it, or point studioctl elsewhere (XDG_RUNTIME_DIR or STUDIOCTL_HOME)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        what = "a symbolic link" if os.path.islink(path) else f"not usable ({exc.strerror})"
        raise ConflictError(
            f"refusing the runtime dir {path}: it is {what}",
            code="unsafe_runtime_dir",
            hint=hint,
            details={"path": str(path)},
        ) from exc
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    mode = stat.S_IMODE(st.st_mode)
    problems = []
    if st.st_uid != os.getuid():
        problems.append(f"owned by uid {st.st_uid}, not by us (uid {os.getuid()})")
    writers = [who for who, bit in (("group", 0o020), ("others", 0o002)) if mode & bit]
    if writers:
        problems.append("writable by " + " and ".join(writers))
    if problems:
        raise ConflictError(
            f"refusing the runtime dir {path} (mode {mode:04o}, owner uid {st.st_uid}): "
            + "; ".join(problems),
            code="unsafe_runtime_dir",
            hint=hint,
            details={"path": str(path), "uid": st.st_uid, "mode": f"{mode:04o}"},
        )
    return path
