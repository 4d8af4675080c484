"""The settings schema: one frozen dataclass per section of ``studioctl.yaml``.

Each field's annotation names its rule (``settings.rules``: type, bounds, small value rules
such as "a host is not blank" or "an empty admin token is none"), which pydantic checks when
``settings.load`` reads a value. The annotations stay strings until then (``from __future__
import annotations``), so importing the settings, or loading the defaults, does not import
pydantic: ``studioctl ps`` deciding whether to start the daemon stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.settings.groups import Group
from studioctl.settings.webhook import MailboxSettings, WebhookAuth, WebhookSettings
from studioctl.suggest import did_you_mean

if TYPE_CHECKING:
    from studioctl.settings.rules import (
        AtLeastOne,
        AtLeastZero,
        CapacityGb,
        Groups,
        HeaderBytes,
        HeaderName,
        Host,
        LeaseSeconds,
        LimitsBackendName,
        Namespace,
        Origins,
        Port,
        PositiveInt,
        QueueDepth,
        RecipeDirs,
        RedisUrl,
        SchedulerPolicy,
        Seconds,
        SecondsOrZero,
        StoreBackend,
        StoreUrl,
        Token,
    )

REDACTED = "***"


@dataclass(frozen=True)
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
    max_header_bytes: HeaderBytes = 65536
    max_connections: AtLeastOne = 4096
    # On stop: seconds in-flight requests get to finish before they are ended (with an error
    # event for streams) and recorded.
    drain_timeout_s: SecondsOrZero = 30.0
    # On demand (issue 11): a request for a recipe that is not running loads it (a recipe's
    # on_demand overrides); requests wait for it in a per-model queue of queue_depth, each at
    # most queue_timeout_s (a recipe's queue_depth / queue_timeout_s override). With
    # queue_when_busy, a request over max_concurrent waits in the same way instead of 429.
    load_on_demand: bool = True
    queue_depth: QueueDepth = 64
    queue_timeout_s: Seconds = 300.0
    queue_when_busy: bool = False
    # The header a client may send its API key in instead of ``Authorization: Bearer``
    # (LMServ's clients send ``X-API-Key: KEY``); "" accepts Authorization only.
    api_key_header: HeaderName = "X-API-Key"


@dataclass(frozen=True)
class EngineSettings:
    host: Host = "127.0.0.1"
    port_min: Port = 18000
    port_max: Port = 18999


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class DaemonSettings:
    autostart: bool = True
    admin_token: Token = None
    # Crash handling: backoff doubles from restart_backoff_s up to restart_backoff_max_s;
    # crash_budget crashes within crash_window_s mark the instance failed.
    restart_backoff_s: Seconds = 10.0
    restart_backoff_max_s: Seconds = 300.0
    crash_budget: AtLeastOne = 5
    crash_window_s: Seconds = 600.0
    # Seconds between health probes of a ready instance (3 failures in a row: crashed).
    health_interval_s: Seconds = 2.0


@dataclass(frozen=True)
class SchedulerSettings:
    # A model with queued requests waits at most max_wait_s while the resident one is served
    # first; a model loaded or used within min_resident_s stays (an idle one at most as long
    # as its last load took, scheduler.policy.idle_hold_s).
    max_wait_s: Seconds = 30.0
    min_resident_s: SecondsOrZero = 10.0
    groups: Groups = ()
    # "fair": the scheduler above. "fifo": strict first in, first out, as a per-request
    # swapping proxy (llama-swap) serves: requests go in arrival order (a request for a ready
    # model waits behind an older one for another model) and the engine is swapped whenever
    # the next request names another model. A baseline to compare the scheduler with
    # (benchmarks), not a mode to serve with: it swaps at every change of model.
    policy: SchedulerPolicy = "fair"

    def group(self, name: str) -> Group | None:
        """The group called ``name``, or None."""
        return next((g for g in self.groups if g.name == name), None)

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]


@dataclass(frozen=True)
class HostSettings:
    # The memory (GiB) of the one pseudo GPU placement counts on a host without GPUs;
    # None: unlimited. Ignored where NVML reports GPUs.
    capacity_gb: CapacityGb = None


@dataclass(frozen=True)
class TenantsSettings:
    # The limits of a tenant created without a profile (the admin API's POST /tenants with
    # neither ``profile`` nor the field): the tenant gateway's DEFAULT_* values.
    default_max_concurrent: AtLeastOne = 4
    default_rpm_limit: AtLeastOne = 120
    default_tpm_limit: AtLeastOne = 120000
    default_max_context_tokens: AtLeastOne = 8192
    default_max_output_tokens: AtLeastOne = 512


@dataclass(frozen=True)
class LogSettings:
    max_bytes: PositiveInt = 50 * 1024 * 1024
    backups: AtLeastZero = 3
    retention_days: PositiveInt = 14


@dataclass(frozen=True)
class UsageSettings:
    # Request rows (and the minute rollups) older than retention_days are pruned in the
    # background; hour and day rollups stay longer, so long windows still answer.
    retention_days: PositiveInt = 90
    # Bodies stored for a recipe or tenant with log_bodies: each capped at body_max_bytes
    # (cut with a marker), all pruned after body_retention_days.
    body_max_bytes: PositiveInt = 65536
    body_retention_days: PositiveInt = 1


@dataclass(frozen=True)
class LimitsSettings:
    # Where tenant limits (concurrency slots, requests/min, tokens/min) live: "memory" (this
    # process alone) or "redis" (shared by every gateway replica using the same redis_url and
    # namespace). gateway.max_concurrent always stays per process.
    backend: LimitsBackendName = "memory"
    redis_url: RedisUrl = None  # redis://[:password@]host:port/db (rediss:// for TLS)
    # Redis unreachable: false answers 503 limits_unavailable; true admits with this
    # process's own in-memory limits until Redis is back.
    fail_open: bool = False
    # A request's concurrency slot is a lease renewed every lease_s/3 while it runs: a
    # replica that dies gives its slots back within lease_s.
    lease_s: LeaseSeconds = 30.0
    # Keys are studioctl:<namespace>:...; two deployments sharing one Redis use two names.
    namespace: Namespace = "default"


@dataclass(frozen=True)
class StoreSettings:
    # sqlite: a local file (one daemon). postgres: a database several daemons share
    # (tenants, keys, usage, events, bench results; each daemon's own instance rows).
    backend: StoreBackend = "sqlite"
    # postgresql://user:password@host:5432/database (use ${ENV} for the password).
    url: StoreUrl = None
    # When PostgreSQL is unreachable: false answers 503 store_unavailable where a request
    # needs the store; true serves what is cached (keys already checked) meanwhile.
    fail_open: bool = False
    # Usage rows held in memory while the store is unreachable (flushed when it is back;
    # beyond this the oldest are dropped and counted).
    buffer_rows: AtLeastOne = 100_000


#: Section name → its model, in file/display order.
SECTIONS: dict[str, type[Any]] = {
    "gateway": GatewaySettings,
    "engines": EngineSettings,
    "recipes": RecipeSettings,
    "daemon": DaemonSettings,
    "tenants": TenantsSettings,
    "logs": LogSettings,
    "scheduler": SchedulerSettings,
    "host": HostSettings,
    "usage": UsageSettings,
    "webhook": WebhookSettings,
    "mailbox": MailboxSettings,
    "limits": LimitsSettings,
    "store": StoreSettings,
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
    tenants: TenantsSettings = field(default_factory=TenantsSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    host: HostSettings = field(default_factory=HostSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    mailbox: MailboxSettings = field(default_factory=MailboxSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    #: ``"gateway.port"`` → ``"default"`` | ``"file:/path/studioctl.yaml:12"`` |
    #: ``"env:STUDIOCTL_GATEWAY_PORT"`` | ``"flag"``
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    #: The settings file that was read, if it exists.
    file: Path | None = None

    def get(self, dotted: str) -> Any:
        """``settings.get("gateway.port")`` → 8000. Unknown keys raise ``KeyError``."""
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
        # Written as in the file: group name -> its rules.
        out["scheduler"]["groups"] = {g.name: g.to_dict() for g in self.scheduler.groups}
        if redact and out["daemon"]["admin_token"] is not None:
            out["daemon"]["admin_token"] = REDACTED
        _webhook_dict(out["webhook"], self.webhook, redact)
        if redact and self.limits.redis_url is not None:
            out["limits"]["redis_url"] = redact_url(self.limits.redis_url)
        return out


def _webhook_dict(out: dict[str, Any], webhook: WebhookSettings, redact: bool) -> None:
    """The webhook section as written in the file, its secrets (and header values, which
    often hold one) redacted."""
    hide = REDACTED if redact else None
    out["headers"] = {k: hide or v for k, v in webhook.headers}
    out["auth"] = webhook.auth.to_dict(hide) if webhook.auth is not None else None
    if redact and webhook.signing_secret is not None:
        out["signing_secret"] = REDACTED


def redact_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: for messages and ``config show``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{REDACTED}@{hostpart}"


def section_keys(section: str) -> list[str]:
    """The keys of one section, in display order."""
    return [f.name for f in fields(SECTIONS[section])]


def all_keys() -> list[str]:
    """Every dotted key, in display order: ``["gateway.host", "gateway.port", …]``."""
    return [f"{s}.{k}" for s in SECTIONS for k in section_keys(s)]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, WebhookAuth):  # as written in the file, its secrets never shown
        return value.to_dict(REDACTED)
    return value
