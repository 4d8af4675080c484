"""Daemon and gateway settings: flag > env ``STUDIOCTL_*`` > ``studioctl.yaml`` > default.

The file lives at ``<config dir>/studioctl.yaml`` (``paths.settings_file()``), or wherever
``--config FILE`` / ``STUDIOCTL_CONFIG`` point. Every section and key is optional::

    gateway:
      host: 127.0.0.1
      port: ${STUDIOCTL_PORT:-8000}     # ${VAR} / ${VAR:-default} in any string value
    engines:
      port_min: 18000
      port_max: 18999
    recipes:
      dirs: [~/recipes, ./team]          # after <config dir>/recipes; relative to this file
    daemon:
      autostart: true
      admin_token: ${ADMIN_TOKEN}        # unset variable without a default → error
    logs:
      retention_days: 14

Each key ``section.key`` can also be set with the environment variable
``STUDIOCTL_<SECTION>_<KEY>`` (``STUDIOCTL_GATEWAY_PORT=9000``; lists: ``recipes.dirs`` is
``os.pathsep``-separated, ``gateway.cors_origins`` comma-separated; booleans take
``true/false/1/0/yes/no/on/off``; an empty value counts as unset). ``STUDIOCTL_ADMIN_TOKEN`` is
a short alias for ``STUDIOCTL_DAEMON_ADMIN_TOKEN``. ``STUDIOCTL_HOME`` and
``STUDIOCTL_CONFIG`` pick folders and files; they are not settings.

Unknown sections and keys, wrong types and out-of-range values are ``ConfigError``\\ s naming
the file, the line and the key (or the environment variable). Nothing is read at import time:
``load_settings()`` reads the file and the environment when called.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from studioctl.yamlfile import YamlDoc

ENV_PREFIX = "STUDIOCTL_"
#: Short aliases: environment variable → dotted key. The long form wins when both are set.
ENV_ALIASES: dict[str, str] = {"STUDIOCTL_ADMIN_TOKEN": "daemon.admin_token"}
#: ``STUDIOCTL_*`` variables that are not settings (they pick folders and files).
NOT_SETTINGS = frozenset({"STUDIOCTL_HOME", "STUDIOCTL_CONFIG"})
REDACTED = "***"


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000
    upstream_timeout_s: float = 300.0
    max_body_bytes: int = 1048576
    max_concurrent: int = 128
    clamp_output: bool = False
    metrics_tenant_labels: bool = True
    metrics_public: bool = False  # /metrics on TCP needs the admin token unless public
    allow_anonymous: bool = False
    cors_origins: tuple[str, ...] = ()
    enabled: bool = True
    # Bounds on what a client controls (httpserver.py), public-facing defaults: a request
    # head must be complete header_timeout_s after it began (or after the accept) and within
    # max_header_bytes; a declared body must not stall for body_timeout_s; a response must not
    # sit unread for send_timeout_s; idle keep-alive connections close after
    # keepalive_timeout_s; beyond max_connections new connections get 503 at once.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    send_timeout_s: float = 60.0
    keepalive_timeout_s: float = 15.0
    max_header_bytes: int = 65536
    max_connections: int = 4096
    # On stop: seconds in-flight requests get to finish before they are ended (with an error
    # event for streams) and recorded.
    drain_timeout_s: float = 30.0


@dataclass(frozen=True)
class EngineSettings:
    host: str = "127.0.0.1"
    port_min: int = 18000
    port_max: int = 18999


@dataclass(frozen=True)
class RecipeSettings:
    #: Extra recipe folders, searched after ``<config dir>/recipes`` (absolute paths).
    dirs: tuple[Path, ...] = ()

    def search_path(self) -> tuple[Path, ...]:
        """``<config dir>/recipes`` then the listed folders, without duplicates, in order."""
        out: list[Path] = []
        for d in (paths.user_recipes_dir(), *self.dirs):
            if d not in out:
                out.append(d)
        return tuple(out)


@dataclass(frozen=True)
class DaemonSettings:
    autostart: bool = True
    admin_token: str | None = None
    # Crash handling: backoff doubles from restart_backoff_s up to restart_backoff_max_s;
    # crash_budget crashes within crash_window_s mark the instance failed.
    restart_backoff_s: float = 10.0
    restart_backoff_max_s: float = 300.0
    crash_budget: int = 5
    crash_window_s: float = 600.0
    # Seconds between health probes of a ready instance (3 failures in a row: crashed).
    health_interval_s: float = 2.0


@dataclass(frozen=True)
class LogSettings:
    max_bytes: int = 50 * 1024 * 1024
    backups: int = 3
    retention_days: int = 14


# Section name → its dataclass, in file/display order.
_SECTIONS: dict[str, type[Any]] = {
    "gateway": GatewaySettings,
    "engines": EngineSettings,
    "recipes": RecipeSettings,
    "daemon": DaemonSettings,
    "logs": LogSettings,
}


@dataclass(frozen=True)
class Settings:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    engines: EngineSettings = field(default_factory=EngineSettings)
    recipes: RecipeSettings = field(default_factory=RecipeSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    #: ``"gateway.port"`` → ``"default"`` | ``"file:/path/studioctl.yaml:12"`` |
    #: ``"env:STUDIOCTL_GATEWAY_PORT"`` | ``"flag"``
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    #: The settings file that was read, if it exists.
    file: Path | None = None

    def get(self, dotted: str) -> Any:
        """``settings.get("gateway.port")`` → 8000. Unknown keys raise ``KeyError``."""
        section, _, key = dotted.partition(".")
        if section not in _SECTIONS or (key and key not in _keys(section)):
            raise KeyError(f"unknown setting {dotted!r}{_did_you_mean(dotted, all_keys())}")
        value = getattr(self, section)
        return getattr(value, key) if key else value

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """Nested plain values (JSON-ready); the admin token shown as ``***`` when redacted."""
        out: dict[str, Any] = {}
        for section in _SECTIONS:
            values: dict[str, Any] = {}
            for key in _keys(section):
                values[key] = _plain(getattr(getattr(self, section), key))
            out[section] = values
        if redact and out["daemon"]["admin_token"] is not None:
            out["daemon"]["admin_token"] = REDACTED
        return out


def all_keys() -> list[str]:
    """Every dotted key, in display order: ``["gateway.host", "gateway.port", …]``."""
    return [f"{s}.{k}" for s in _SECTIONS for k in _keys(s)]


def env_var(dotted: str) -> str:
    """``"gateway.port"`` → ``"STUDIOCTL_GATEWAY_PORT"``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def settings_path(env: Mapping[str, str] | None = None) -> Path:
    """``$STUDIOCTL_CONFIG`` (also set by ``--config``) or ``<config dir>/studioctl.yaml``."""
    environ = os.environ if env is None else env
    explicit = environ.get("STUDIOCTL_CONFIG")
    if explicit:
        return Path(explicit).expanduser().absolute()
    return paths.settings_file()


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """The effective settings: ``overrides`` (CLI flags) > ``env`` > the file > defaults.

    ``overrides`` maps dotted keys (``"gateway.port"``) to values; ``None`` values are
    ignored (an option that was not given). ``env`` defaults to ``os.environ`` and is also
    the environment for ``${VAR}`` interpolation. ``file`` defaults to ``settings_path()``;
    the default file may be missing (defaults apply), a file named explicitly (argument,
    ``--config``, ``STUDIOCTL_CONFIG``) must exist.
    """
    environ = os.environ if env is None else env
    required = file is not None or bool(environ.get("STUDIOCTL_CONFIG"))
    path = file if file is not None else settings_path(environ)
    return _load(path, required=required, env=environ, interp_env=environ, overrides=overrides)


def validate_settings_file(path: Path) -> Settings:
    """Load one settings file on its own (no ``STUDIOCTL_*`` overrides); it must exist.

    ``${VAR}`` interpolation still uses the process environment.
    """
    return _load(path, required=True, env={}, interp_env=os.environ, overrides=None)


# --- loading ------------------------------------------------------------------------------


class _Layer:
    """The values read so far: dotted key → value, source label, error location.

    Sources are read from lowest to highest precedence; a later one overwrites.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.where: dict[str, dict[str, Any]] = {}

    def set(self, key: str, value: Any, source: str, where: dict[str, Any]) -> None:
        self.values[key] = value
        self.sources[key] = source
        self.where[key] = where


def _load(
    path: Path,
    *,
    required: bool,
    env: Mapping[str, str],
    interp_env: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
) -> Settings:
    path = path.expanduser().absolute()
    merged = _Layer()
    used_file: Path | None = None
    if path.is_file() or required:
        _read_file(path, interp_env, merged)
        used_file = path
    _read_env(env, merged)
    _read_overrides(overrides or {}, merged)

    sections: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for section, cls in _SECTIONS.items():
        kwargs: dict[str, Any] = {}
        for key in _keys(section):
            dotted = f"{section}.{key}"
            if dotted in merged.values:
                kwargs[key] = merged.values[dotted]
                sources[dotted] = merged.sources[dotted]
            else:
                sources[dotted] = "default"
        sections[section] = cls(**kwargs)
    settings = Settings(**sections, sources=sources, file=used_file)
    _check_cross(settings, merged)
    return settings


def _read_file(path: Path, interp_env: Mapping[str, str], layer: _Layer) -> None:
    from studioctl.yamlfile import load_file  # imported lazily: yaml is not needed for --help

    if not path.exists():
        raise ConfigError(
            "settings file not found",
            file=str(path),
            hint="check the path given on the command line, with --config or in STUDIOCTL_CONFIG",
        )
    doc = load_file(path, error=ConfigError)
    data = doc.data
    if data is None:
        return  # an empty file: all defaults
    if not isinstance(data, dict):
        raise ConfigError(
            f"the settings file must be a mapping of sections, got {_kind(data)}",
            file=doc.path,
            line=doc.line(),
        )
    for section, body in data.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section{_did_you_mean(section, list(_SECTIONS))}",
                file=doc.path,
                line=doc.line(section),
                key=section,
                hint="sections: " + ", ".join(_SECTIONS),
            )
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(
                f"must be a mapping of keys, got {_kind(body)}",
                file=doc.path,
                line=doc.line(section),
                key=section,
            )
        for key, raw in body.items():
            dotted = f"{section}.{key}"
            line = doc.line(section, key)
            where: dict[str, Any] = {"file": doc.path, "line": line, "key": dotted}
            if key not in _keys(section):
                candidates = [k for k in all_keys() if k.split(".")[1] == key]
                suggestion = (
                    f" (did you mean {candidates[0]!r}?)"
                    if candidates
                    else _did_you_mean(key, _keys(section))
                )
                raise ConfigError(
                    f"unknown key{suggestion}",
                    file=doc.path,
                    line=line,
                    key=dotted,
                    hint=f"keys in {section}: " + ", ".join(_keys(section)),
                )
            value = _interpolate_tree(raw, doc, (section, key), interp_env)
            parsed = _coerce(
                dotted,
                value,
                text=_was_interpolated(raw),
                base=path.parent,
                where=where,
            )
            layer.set(dotted, parsed, f"file:{doc.path}:{line}", where)


def _interpolate_tree(
    value: Any, doc: YamlDoc, keypath: tuple[str | int, ...], env: Mapping[str, str]
) -> Any:
    from studioctl.yamlfile import dotted, interpolate

    if isinstance(value, list):
        return [_interpolate_tree(item, doc, (*keypath, i), env) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, doc, (*keypath, k), env) for k, v in value.items()}
    return interpolate(
        value,
        env=env,
        where=dotted(keypath),
        file=doc.path,
        line=doc.line(*keypath),
        error=ConfigError,
    )


def _was_interpolated(raw: Any) -> bool:
    # A string such as "${PORT:-8000}" stands for a typed value: parse its text like an
    # environment variable. A plain quoted "8000" for an integer stays a type error.
    return isinstance(raw, str) and "${" in raw


def _read_env(env: Mapping[str, str], layer: _Layer) -> None:
    known = {env_var(k): k for k in all_keys()}
    # Typos in variables that look like settings are errors, not silently ignored.
    for name in sorted(env):
        if name in known or name in NOT_SETTINGS or name in ENV_ALIASES:
            continue
        section = next((s for s in _SECTIONS if name.startswith(env_var(s) + "_")), None)
        if section is not None:
            raise ConfigError(
                f"unknown setting variable{_did_you_mean(name, list(known))}",
                key=name,
                hint=f"{section} variables: "
                + ", ".join(env_var(f"{section}.{k}") for k in _keys(section)),
            )
    # Aliases first so that the long form, read after, wins.
    for name, dotted in [*ENV_ALIASES.items(), *((v, k) for v, k in known.items())]:
        text = env.get(name)
        if not text:
            continue  # unset or empty: not given
        where = {"key": name, "setting": dotted}
        parsed = _coerce(dotted, text, text=True, base=None, where=where)
        layer.set(dotted, parsed, f"env:{name}", where)


def _read_overrides(overrides: Mapping[str, Any], layer: _Layer) -> None:
    keys = all_keys()
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted not in keys:
            raise UsageError(f"unknown setting {dotted!r}{_did_you_mean(dotted, keys)}")
        where = {"flag": dotted}
        parsed = _coerce(dotted, value, text=isinstance(value, str), base=None, where=where)
        layer.set(dotted, parsed, "flag", where)


# --- types and checks ---------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# Dotted key → (minimum, maximum, minimum is exclusive).
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "daemon.restart_backoff_s": (0, None, True),
    "daemon.restart_backoff_max_s": (0, None, True),
    "daemon.crash_budget": (1, None, False),
    "daemon.crash_window_s": (0, None, True),
    "daemon.health_interval_s": (0, None, True),
    "gateway.port": (1, 65535, False),
    "gateway.upstream_timeout_s": (0, None, True),
    "gateway.max_body_bytes": (0, None, True),
    "gateway.max_concurrent": (0, None, True),
    "gateway.header_timeout_s": (0, None, True),
    "gateway.body_timeout_s": (0, None, True),
    "gateway.send_timeout_s": (0, None, True),
    "gateway.keepalive_timeout_s": (0, None, True),
    "gateway.max_header_bytes": (1024, None, False),
    "gateway.max_connections": (1, None, False),
    "gateway.drain_timeout_s": (0, None, False),
    "engines.port_min": (1, 65535, False),
    "engines.port_max": (1, 65535, False),
    "logs.max_bytes": (0, None, True),
    "logs.backups": (0, None, False),
    "logs.retention_days": (0, None, True),
}
_NON_EMPTY = frozenset({"gateway.host", "engines.host"})


def _kind_of(dotted: str) -> str:
    """The value kind of a key, from its dataclass field's annotation."""
    section, key = dotted.split(".")
    return _FIELD_KINDS[section][key]


def _annotation_kind(annotation: str) -> str:
    kinds = {
        "str": "str",
        "int": "int",
        "float": "float",
        "bool": "bool",
        "str | None": "optional_str",
        "tuple[str, ...]": "str_list",
        "tuple[Path, ...]": "path_list",
    }
    return kinds[annotation]


# Annotations are strings (``from __future__ import annotations``): map them once, here.
_FIELD_KINDS: dict[str, dict[str, str]] = {
    section: {f.name: _annotation_kind(str(f.type)) for f in fields(cls)}
    for section, cls in _SECTIONS.items()
}


def _keys(section: str) -> list[str]:
    return list(_FIELD_KINDS[section])


def _coerce(
    dotted: str, value: Any, *, text: bool, base: Path | None, where: dict[str, Any]
) -> Any:
    """Check ``value`` for key ``dotted`` and return it typed; ``text``: parse a string form.

    Relative paths are resolved against ``base`` (the settings file's folder), or the
    current directory when ``base`` is None (environment, flags).
    """
    kind = _kind_of(dotted)
    if kind == "int":
        out: Any = _as_int(value, text, dotted, where)
    elif kind == "float":
        out = _as_float(value, text, dotted, where)
    elif kind == "bool":
        out = _as_bool(value, text, dotted, where)
    elif kind == "str":
        if not isinstance(value, str):
            raise _error(f"must be a string, got {_kind(value)}", where)
        out = value.strip() if dotted in _NON_EMPTY else value
        if dotted in _NON_EMPTY and not out:
            raise _error("must not be empty", where)
    elif kind == "optional_str":
        if value is not None and not isinstance(value, str):
            raise _error(f"must be a string, got {_kind(value)}", where)
        out = value or None  # an empty admin token means "none", never "matches empty"
    else:
        out = _as_list(kind, value, text, base, dotted, where)
    _check_range(dotted, out, where)
    return out


def _as_int(value: Any, text: bool, dotted: str, where: dict[str, Any]) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if text and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _error(f"must be an integer{_range_text(dotted)}, got {_shown(value)}", where)


def _as_float(value: Any, text: bool, dotted: str, where: dict[str, Any]) -> float:
    out: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        out = float(value)
    elif text and isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            out = None
    if out is None or not math.isfinite(out):
        raise _error(f"must be a number{_range_text(dotted)}, got {_shown(value)}", where)
    return out


def _as_bool(value: Any, text: bool, dotted: str, where: dict[str, Any]) -> bool:
    if isinstance(value, bool):
        return value
    if text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _error(f"must be true or false, got {_shown(value)}", where)


def _as_list(
    kind: str, value: Any, text: bool, base: Path | None, dotted: str, where: dict[str, Any]
) -> tuple[Any, ...]:
    sep = os.pathsep if kind == "path_list" else ","
    if text and isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(sep) if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _error(f"must be a list, got {_kind(value)}", where)
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, Path) and kind == "path_list":
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            got = "an empty string" if isinstance(item, str) else _kind(item)
            raise _error(f"item {i} must be a non-empty string, got {got}", where)
        if kind == "path_list":
            p = Path(item).expanduser()
            if not p.is_absolute():
                p = (base if base is not None else Path.cwd()) / p
            out.append(Path(os.path.normpath(p)))
        else:
            out.append(item)
    return tuple(out)


def _check_range(dotted: str, value: Any, where: dict[str, Any]) -> None:
    bounds = _RANGES.get(dotted)
    if bounds is None:
        return
    lo, hi, exclusive = bounds
    bad = (lo is not None and (value <= lo if exclusive else value < lo)) or (
        hi is not None and value > hi
    )
    if bad:
        raise _error(f"must be{_range_text(dotted)}, got {value}", where)


def _range_text(dotted: str) -> str:
    bounds = _RANGES.get(dotted)
    if bounds is None:
        return ""
    lo, hi, exclusive = bounds
    if hi is not None:
        return f" between {_num(lo)} and {_num(hi)}"
    if lo is not None:
        return f" greater than {_num(lo)}" if exclusive else f" of at least {_num(lo)}"
    return ""


def _check_cross(settings: Settings, layer: _Layer) -> None:
    lo, hi = settings.engines.port_min, settings.engines.port_max
    if lo > hi:
        # Blame whichever end was set explicitly (port_max if both were).
        blamed = "engines.port_max" if "engines.port_max" in layer.where else "engines.port_min"
        where = layer.where.get(blamed, {"key": blamed})
        raise _error(f"engines.port_min ({lo}) must not exceed engines.port_max ({hi})", where)


def _error(message: str, where: dict[str, Any]) -> ConfigError | UsageError:
    if "flag" in where:
        return UsageError(f"setting {where['flag']}: {message}")
    if "setting" in where:  # an environment variable
        return ConfigError(f"{message} (sets {where['setting']})", key=where["key"])
    return ConfigError(message, file=where.get("file"), line=where.get("line"), key=where["key"])


# --- small helpers ------------------------------------------------------------------------


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and "." in word:
        close = difflib.get_close_matches(word.rsplit(".", 1)[1], choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _shown(value: Any) -> str:
    return _kind(value) if not isinstance(value, str) else repr(value)


def _num(value: float | None) -> str:
    return f"{value:g}" if value is not None else ""


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
