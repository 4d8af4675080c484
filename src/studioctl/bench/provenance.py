"""Where a benchmark ran: the document's ``environment`` (recipe and its hash, engine and its
version, GPU names and driver), so saved runs can be told apart and compared fairly.

Every reading is best effort: what cannot be read is null, and nothing here fails a run.

- A daemon's instance or recipe: the recipe, engine (backend) and GPUs from the control
  API (the instance and the daemon's telemetry snapshot: its NVML reading), the recipe's
  hash from the instance's stored row, the engine's version from its own ``GET /version``
  (vLLM; answered without its API key).
- ``--url``: the server's ``GET /version`` when it answers one; this host's GPUs (NVML,
  read here) only when the URL is a loopback address — a remote server's GPUs are unknown.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from studioctl.bench.report import ENVIRONMENT, TargetInfo
from studioctl.errors import StudioError

if TYPE_CHECKING:
    from studioctl.client import Client

_VERSION_TIMEOUT_S = 2.0
_MAX_ANSWER = 64 * 1024
_MAX_TEXT = 200
_BEST_EFFORT = (StudioError, OSError, ValueError, KeyError, TypeError)


def gpu_reading(
    available: bool, driver: Any, gpus: Iterable[Mapping[str, Any]], only: Iterable[int] = ()
) -> tuple[list[str] | None, str | None]:
    """(GPU names, driver) of an NVML reading (``studioctl gpus --json`` or the telemetry
    snapshot's ``gpus``): the GPUs ``only`` names when given, else all; (None, None)
    without a driver or without GPUs."""
    if not available:
        return None, None
    wanted = set(only)
    names = [
        str(g.get("name") or "unknown")[:_MAX_TEXT]
        for g in gpus
        if not wanted or g.get("index") in wanted
    ]
    if not names:
        return None, None
    return names, None if driver is None else str(driver)[:_MAX_TEXT]


def from_telemetry(
    snapshot: Mapping[str, Any], only: Iterable[int] = ()
) -> tuple[list[str] | None, str | None]:
    """(GPU names, driver) of the daemon's telemetry snapshot (``GET /telemetry``)."""
    host = snapshot.get("gpu") or {}
    return gpu_reading(
        bool(host.get("available")), host.get("driver_version"), snapshot.get("gpus") or [], only
    )


def local_gpus() -> tuple[list[str] | None, str | None]:
    """(GPU names, driver) of this host, read with NVML here."""
    from studioctl import gpu

    host = gpu.snapshot().to_dict()
    return gpu_reading(host["available"], host["driver_version"], host["gpus"])


def engine_version(url: str, *, timeout: float = _VERSION_TIMEOUT_S) -> str | None:
    """The ``version`` of the server's ``GET {url}/version``, or None. studioctl's own
    ``/version`` (a gateway's: it carries ``api_version``) is not an engine's."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/version", timeout=timeout) as resp:
            data = json.loads(resp.read(_MAX_ANSWER))
    except _BEST_EFFORT:
        return None
    if not isinstance(data, dict) or "api_version" in data:
        return None
    version = data.get("version")
    return str(version)[:_MAX_TEXT] if isinstance(version, str | int | float) else None


def _recipe_hash(instance_id: str) -> str | None:
    from studioctl.store import InstanceRepo
    from studioctl.store.bench import open_existing

    db = open_existing()
    if db is None:
        return None
    try:
        row = InstanceRepo(db).get(instance_id)
        return (row.recipe_hash or None) if row is not None else None
    finally:
        db.close()


def environment(client: Client | None, target: TargetInfo) -> dict[str, Any]:
    """The document's ``environment`` for ``target`` (``client``: the daemon's, for an
    instance or recipe; None with ``--url``)."""
    env: dict[str, Any] = dict.fromkeys(ENVIRONMENT)
    if client is None or target.instance_id is None:
        env["engine_version"] = engine_version(target.url)
        host = urlsplit(target.url).hostname or ""
        from studioctl.netaddr import is_loopback

        if is_loopback(host):
            with contextlib.suppress(*_BEST_EFFORT):
                env["gpu_names"], env["gpu_driver"] = local_gpus()
        return env
    try:
        info = client.instance(target.instance_id)
        env["recipe_id"], env["engine"] = info.get("recipe"), info.get("backend")
        if info.get("url"):
            env["engine_version"] = engine_version(str(info["url"]))
        env["gpu_names"], env["gpu_driver"] = from_telemetry(
            client.telemetry(), info.get("gpus") or ()
        )
        env["recipe_hash"] = _recipe_hash(target.instance_id)
    except _BEST_EFFORT:
        pass
    return env
