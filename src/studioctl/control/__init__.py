"""The control API: the daemon's routes for lifecycle, events, logs, telemetry and tenants.

Served on the Unix socket (the file system is the authentication: mode 0600) and, behind
``X-Admin-Token``, on the gateway's TCP port under ``/admin/``. Every answer carries
``X-Studioctl-Api`` so the CLI can refuse a daemon of another API version. Errors are the
OpenAI envelope ``{"error": {...}}`` with the StudioError's status and code; request bodies
are the models of ``studioctl.api.models``.

    app        DaemonInfo, build_control_app; /version, /status, /daemon/shutdown
    http       the version header, JSON answers, the error envelope, reading bodies
    instances  /instances (list, show, launch, evict), /switch, /adopt; NDJSON progress
    serving    /models/unload, /models/preload; queued requests per model (ps)
    recipes    a recipe by id, by path, or as a sent file
    logs       /instances/{id}/logs, /events
    tenants    /tenants, /keys, /usage, /limits/profiles (the admin routes)
    gpus       /telemetry, /stats
"""

from studioctl.control.app import DaemonInfo, ExtraStatus, build_control_app
from studioctl.control.serving import Serving

__all__ = ["DaemonInfo", "ExtraStatus", "Serving", "build_control_app"]
