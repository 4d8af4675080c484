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
    tenants:
      default_rpm_limit: 120             # a tenant created without a profile
    logs:
      retention_days: 14
    scheduler:
      groups:                            # after llama-swap's groups (settings.groups)
        big: {members: [llama-70b, qwen-72b], swap: true, exclusive: true}
      policy: fair                       # fifo: strict FIFO, a baseline for benchmarks
    host:
      capacity_gb: 64                    # the pseudo GPU of a host without GPUs
    limits:
      backend: redis                     # shared by every gateway replica (default memory)
      redis_url: redis://:${REDIS_PASSWORD}@10.0.0.5:6379/0

Each key ``section.key`` can also be set with the environment variable
``STUDIOCTL_<SECTION>_<KEY>`` (``STUDIOCTL_GATEWAY_PORT=9000``; lists: ``recipes.dirs`` is
``os.pathsep``-separated, ``gateway.cors_origins`` comma-separated; ``scheduler.groups`` is JSON;
booleans take ``true/false/1/0/yes/no/on/off``; an empty value counts as unset).
``STUDIOCTL_ADMIN_TOKEN`` is a short alias for ``STUDIOCTL_DAEMON_ADMIN_TOKEN``.
``STUDIOCTL_HOME`` and
``STUDIOCTL_CONFIG`` pick folders and files; they are not settings.

Unknown sections and keys, wrong types and out-of-range values are ``ConfigError``\\ s naming
the file, the line and the key (or the environment variable). Nothing is read at import time:
``load_settings()`` reads the file and the environment when called.

- ``schema``: the sections as pydantic models (types, bounds) and the ``Settings`` result;
- ``groups``: ``Group``, one entry of ``scheduler.groups``;
- ``load``: the three sources, each value validated where it is read.
"""

from __future__ import annotations

from studioctl.settings.groups import GROUP_KEYS, Group
from studioctl.settings.load import (
    ENV_ALIASES,
    ENV_PREFIX,
    NOT_SETTINGS,
    env_var,
    load_settings,
    settings_path,
    validate_settings_file,
)
from studioctl.settings.schema import (
    REDACTED,
    SECTIONS,
    DaemonSettings,
    EngineSettings,
    GatewaySettings,
    HostSettings,
    LimitsSettings,
    LogSettings,
    RecipeSettings,
    SchedulerSettings,
    Settings,
    TenantsSettings,
    UsageSettings,
    all_keys,
    redact_url,
    section_keys,
)
from studioctl.settings.webhook import MailboxSettings, WebhookAuth, WebhookSettings

__all__ = [
    "ENV_ALIASES",
    "ENV_PREFIX",
    "GROUP_KEYS",
    "NOT_SETTINGS",
    "REDACTED",
    "SECTIONS",
    "DaemonSettings",
    "EngineSettings",
    "GatewaySettings",
    "Group",
    "HostSettings",
    "LimitsSettings",
    "LogSettings",
    "MailboxSettings",
    "RecipeSettings",
    "SchedulerSettings",
    "Settings",
    "TenantsSettings",
    "UsageSettings",
    "WebhookAuth",
    "WebhookSettings",
    "all_keys",
    "env_var",
    "load_settings",
    "redact_url",
    "section_keys",
    "settings_path",
    "validate_settings_file",
]
