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

import os
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


def cache_dir() -> Path:
    h = home()
    return h / "cache" if h else _platform("cache")


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
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path
