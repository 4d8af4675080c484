"""The settings schema: one pydantic model per section of ``studioctl.yaml``.

Types, ranges and the small value rules (a host is not blank, an empty admin token is
none) live here, in the field annotations; ``settings.load`` validates every value it reads
with its field's annotation and turns pydantic's errors into the messages users see, using
the same bounds (``field_bounds``). Validation is strict: ``port: '8000'`` in the file is a
type error; text from the environment, flags and ``${VAR}`` is parsed by the loader first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import annotated_types
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from studioctl import paths

REDACTED = "***"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return value


def _none_if_empty(value: str | None) -> str | None:
    return value or None  # an empty admin token means "none", never "matches empty"


def _as_tuple(value: Any) -> Any:
    # YAML and flags give lists; the settings hold tuples (frozen, hashable).
    return tuple(value) if isinstance(value, list) else value


def _recipe_dir(value: Any, info: ValidationInfo) -> Any:
    """A recipe folder: ``~`` expanded, relative to the settings file's folder (the
    validation context's ``base``) or, from the environment and flags, the current one."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        return value  # Path's own check refuses it
    _not_blank(value)
    p = Path(value).expanduser()
    if not p.is_absolute():
        base = (info.context or {}).get("base")
        p = (base if base is not None else Path.cwd()) / p
    return Path(os.path.normpath(p))


Host = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: Seconds where 0 means "not at all" (no drain).
SecondsOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]
Token = Annotated[str | None, AfterValidator(_none_if_empty)]
Origin = Annotated[str, AfterValidator(_not_blank)]
RecipeDir = Annotated[Path, BeforeValidator(_recipe_dir)]
Origins = Annotated[tuple[Origin, ...], BeforeValidator(_as_tuple)]
RecipeDirs = Annotated[tuple[RecipeDir, ...], BeforeValidator(_as_tuple)]


# Pydantic dataclasses: validated on construction, and still plain frozen dataclasses (their
# defaults are class attributes, as httpserver.ServerLimits reads them; eq and hash by value).
# strict: the loader parses text (environment, flags, ${VAR}) itself, with its own spellings
# of true/false; a YAML value must already have the right type.
_STRICT = ConfigDict(strict=True, extra="forbid")


@pydantic_dataclass(frozen=True, config=_STRICT)
class GatewaySettings:
    host: Host = "127.0.0.1"
    port: Port = 8000
    upstream_timeout_s: Seconds = 300.0
    max_body_bytes: PositiveInt = 1048576
    max_concurrent: PositiveInt = 128
    clamp_output: bool = False
    metrics_tenant_labels: bool = True
    metrics_public: bool = False  # /metrics on TCP needs the admin token unless public
    allow_anonymous: bool = False
    cors_origins: Origins = ()
    enabled: bool = True
    # Bounds on what a client controls (httpserver.py), public-facing defaults: a request
    # head must be complete header_timeout_s after it began (or after the accept) and within
    # max_header_bytes; a declared body must not stall for body_timeout_s; a response must not
    # sit unread for send_timeout_s; idle keep-alive connections close after
    # keepalive_timeout_s; beyond max_connections new connections get 503 at once.
    header_timeout_s: Seconds = 10.0
    body_timeout_s: Seconds = 30.0
    send_timeout_s: Seconds = 60.0
    keepalive_timeout_s: Seconds = 15.0
    max_header_bytes: Annotated[int, Field(ge=1024)] = 65536
    max_connections: Annotated[int, Field(ge=1)] = 4096
    # On stop: seconds in-flight requests get to finish before they are ended (with an error
    # event for streams) and recorded.
    drain_timeout_s: SecondsOrZero = 30.0


@pydantic_dataclass(frozen=True, config=_STRICT)
class EngineSettings:
    host: Host = "127.0.0.1"
    port_min: Port = 18000
    port_max: Port = 18999


@pydantic_dataclass(frozen=True, config=_STRICT)
class RecipeSettings:
    #: Extra recipe folders, searched after ``<config dir>/recipes`` (absolute paths).
    dirs: RecipeDirs = ()

    def search_path(self) -> tuple[Path, ...]:
        """``<config dir>/recipes`` then the listed folders, without duplicates, in order."""
        out: list[Path] = []
        for d in (paths.user_recipes_dir(), *self.dirs):
            if d not in out:
                out.append(d)
        return tuple(out)


@pydantic_dataclass(frozen=True, config=_STRICT)
class DaemonSettings:
    autostart: bool = True
    admin_token: Token = None
    # Crash handling: backoff doubles from restart_backoff_s up to restart_backoff_max_s;
    # crash_budget crashes within crash_window_s mark the instance failed.
    restart_backoff_s: Seconds = 10.0
    restart_backoff_max_s: Seconds = 300.0
    crash_budget: Annotated[int, Field(ge=1)] = 5
    crash_window_s: Seconds = 600.0
    # Seconds between health probes of a ready instance (3 failures in a row: crashed).
    health_interval_s: Seconds = 2.0


@pydantic_dataclass(frozen=True, config=_STRICT)
class LogSettings:
    max_bytes: PositiveInt = 50 * 1024 * 1024
    backups: Annotated[int, Field(ge=0)] = 3
    retention_days: PositiveInt = 14


#: Section name → its model, in file/display order.
SECTIONS: dict[str, type[Any]] = {
    "gateway": GatewaySettings,
    "engines": EngineSettings,
    "recipes": RecipeSettings,
    "daemon": DaemonSettings,
    "logs": LogSettings,
}


@dataclass(frozen=True)
class Settings:
    """The effective settings: the validated sections, and where each value came from.

    A plain dataclass: it is assembled from sections already validated, and ``sources``
    must not take part in equality (the same values from another file are the same settings).
    """

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
        from studioctl.suggest import did_you_mean

        section, _, key = dotted.partition(".")
        if section not in SECTIONS or (key and key not in section_keys(section)):
            raise KeyError(f"unknown setting {dotted!r}{did_you_mean(dotted, all_keys())}")
        value = getattr(self, section)
        return getattr(value, key) if key else value

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """Nested plain values (JSON-ready); the admin token shown as ``***`` when redacted."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            values = getattr(self, section)
            out[section] = {key: _plain(getattr(values, key)) for key in section_keys(section)}
        if redact and out["daemon"]["admin_token"] is not None:
            out["daemon"]["admin_token"] = REDACTED
        return out


def section_keys(section: str) -> list[str]:
    """The keys of one section, in display order."""
    return list(_fields(section))


def all_keys() -> list[str]:
    """Every dotted key, in display order: ``["gateway.host", "gateway.port", …]``."""
    return [f"{s}.{k}" for s in SECTIONS for k in section_keys(s)]


def field_info(dotted: str) -> FieldInfo:
    """The pydantic field of a dotted key (its type, bounds and validators)."""
    section, key = dotted.split(".")
    return _fields(section)[key]


def _fields(section: str) -> dict[str, FieldInfo]:
    fields: dict[str, FieldInfo] = SECTIONS[section].__pydantic_fields__
    return fields


def field_bounds(dotted: str) -> tuple[float | None, float | None, bool]:
    """``(minimum, maximum, minimum is exclusive)`` from the field's constraints."""
    lo: float | None = None
    hi: float | None = None
    exclusive = False
    for rule in field_info(dotted).metadata:
        if isinstance(rule, annotated_types.Gt):
            lo, exclusive = float(rule.gt), True  # type: ignore[arg-type]
        elif isinstance(rule, annotated_types.Ge):
            lo = float(rule.ge)  # type: ignore[arg-type]
        elif isinstance(rule, annotated_types.Le):
            hi = float(rule.le)  # type: ignore[arg-type]
    return lo, hi, exclusive


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
