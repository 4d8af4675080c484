"""What ``studioctl bench`` measures: a URL, or an instance or recipe of the daemon's.

A recipe that is not running is launched first (through the control client, as
``studioctl launch`` does) and evicted afterwards unless ``keep``. An instance or recipe is
measured at its engine directly, with the engine's own API key (which the daemon gives out
on its control socket only: ``client.engine_key``), or through the gateway with a tenant key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from studioctl.bench.report import TargetInfo
from studioctl.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from studioctl.api.types import InstanceInfo
    from studioctl.client import Client

# Instances in these states serve (or will once loaded): measured as they are, not launched.
_LIVE = ("starting", "loading", "ready")


def from_url(url: str, model: str | None) -> TargetInfo:
    if not model:
        raise UsageError("--url needs --model (the name the server serves)")
    return TargetInfo(kind="url", url=base_url(url), model=model)


def base_url(url: str) -> str:
    """A server's URL as the report names it: without a trailing ``/`` or ``/v1``."""
    return url.rstrip("/").removesuffix("/v1")


def _gateway_url(client: Client) -> str:
    url = client.status().get("gateway", {}).get("url")
    if not url:
        raise UsageError("the daemon's gateway is not serving: no URL to send requests to")
    return base_url(str(url))


def _live(client: Client, name: str) -> InstanceInfo | None:
    try:
        info = client.instance(name)
    except NotFoundError:
        return None
    return info if info.get("state") in _LIVE else None


@contextlib.contextmanager
def resolved(
    client: Client,
    name: str,
    *,
    through_gateway: bool,
    model: str | None,
    keep: bool,
    launch_timeout: float | None = None,
) -> Iterator[TargetInfo]:
    """The running instance ``name`` (an instance id or a recipe id), launching the recipe
    when nothing of it runs; evicted on the way out when launched here and not ``keep``."""
    from studioctl.api.models import EvictRequest, LaunchRequest

    info = _live(client, name)
    launched = info is None
    if info is None:
        info = client.launch(LaunchRequest(recipe=name, wait=True, timeout=launch_timeout))
    target = TargetInfo(
        kind="recipe" if launched or info.get("recipe") == name else "instance",
        url=_gateway_url(client) if through_gateway else "",
        model=model or info.get("served_name") or info.get("model") or name,
        name=name,
        instance_id=info.get("id"),
        through_gateway=through_gateway,
        launched=launched,
    )
    evict = launched and not keep
    try:
        if not through_gateway:
            target = direct(client, target)
        yield target
    finally:
        if evict and target.instance_id:
            client.evict(target.instance_id, EvictRequest())


def direct(client: Client, target: TargetInfo) -> TargetInfo:
    """``target`` measured at its engine: the engine's URL and its own API key."""
    from studioctl.client import engine_key

    assert target.instance_id is not None
    key = engine_key(client, target.instance_id)
    return replace(target, url=base_url(key["url"]), through_gateway=False, api_key=key["api_key"])


def evicted(target: TargetInfo, keep: bool) -> TargetInfo:
    """The target as the report states it after the run."""
    return replace(target, evicted=target.launched and not keep)
