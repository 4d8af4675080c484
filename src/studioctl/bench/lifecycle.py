"""Lifecycle benchmarks, through the control client: a cold start (launch → each launch
stage → ready → first token), a switch (time without service, first token on the new
model), an evict (until every process is gone and, on a GPU, its VRAM is free) and an
on-demand cold request (first token of a request for a model that is not running).

Times are wall-clock (``time.time``) because they are laid beside the daemon's own
timestamps (an instance's ``started_at``, ``ready_at``): both ends run on one host, so one
clock. A first token is asked for with one small streamed ``/v1/completions`` request
(``probe``), at the engine itself with its own key (``client.engine_key``, control socket
only) or through the gateway with a tenant key. Each benchmark returns a result whose
``to_dict()`` is one run of the ``"kind": "lifecycle"`` document (docs/bench.md).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from studioctl.bench.probe import (
    Access,
    Targets,
    evict_instance,
    follow,
    live,
    probe,
    probe_until_ok,
)
from studioctl.errors import EngineFailed, UsageError

if TYPE_CHECKING:
    from studioctl.api.types import InstanceInfo, StreamMessage
    from studioctl.bench.thresholds import Verdict
    from studioctl.client import Client

_log = logging.getLogger("studioctl.bench")

KINDS = ("cold-start", "switch", "evict", "cold-request")
#: The flat metric names of each benchmark (``lifecycle.metrics``, ``--fail-if``): seconds.
METRICS: dict[str, tuple[str, ...]] = {
    "cold-start": ("cold_start_s", "ready_s", "ttft_s"),
    "switch": ("gap_s", "ttft_s", "switch_s"),
    "evict": ("evict_s", "processes_gone_s", "vram_free_s"),
    "cold-request": ("ttft_s", "e2e_s", "queue_s"),
}


# --------------------------------------------------------------------------- cold start


@dataclass(frozen=True)
class Stage:
    """One step of a cold start: ``start_s`` after the launch was asked for."""

    name: str
    label: str
    start_s: float
    duration_s: float


@dataclass(frozen=True)
class ColdStart:
    recipe: str
    instance_id: str
    cold_start_s: float  # launch asked → first token
    ready_s: float  # launch asked → the launch's answer (ready)
    ttft_s: float  # the first request's own time to first token
    stages: list[Stage]
    evicted: bool

    def metrics(self) -> dict[str, float | None]:
        return {"cold_start_s": self.cold_start_s, "ready_s": self.ready_s, "ttft_s": self.ttft_s}

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": "cold-start", **asdict(self)}


def stages_of(
    t0: float, info: Mapping[str, Any], labels: Mapping[str, str], first_token: float
) -> list[Stage]:
    """The launch's steps, each from the end of the one before: before the process
    (locks, placement, spawn), each stage the engine's log showed (the daemon's times after
    the process started), then ready → first token. They add up to first_token − t0."""
    started = float(info.get("started_at") or t0)
    out = [Stage("spawn", "locks, placement, spawn", 0.0, started - t0)]
    prev = 0.0
    for name, t in sorted((info.get("stages") or {}).items(), key=lambda kv: kv[1]):
        if name == "started":
            continue
        out.append(Stage(name, labels.get(name, name), started - t0 + prev, float(t) - prev))
        prev = float(t)
    at = started - t0 + prev
    out.append(Stage("first_token", "ready → first token", at, first_token - t0 - at))
    return out


def cold_start(
    client: Client,
    recipe: str,
    *,
    api_key: str | None = None,
    keep: bool = False,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> ColdStart:
    """Launch ``recipe`` (which must not be running), time each stage and the first token
    of one request; evict it after unless ``keep``."""
    from studioctl.api.models import LaunchRequest

    if (running := live(client, recipe)) is not None:
        raise UsageError(
            f"{recipe[:200]} is already running ({running.get('id')}): a cold start launches it",
            hint=f"studioctl evict {running.get('id')}",
        )
    labels: dict[str, str] = {}

    def on_event(msg: StreamMessage) -> None:
        data = msg.get("data")
        if msg.get("kind") == "stage" and isinstance(data, dict):
            labels[str(data.get("stage"))] = str(data.get("label"))

    t0 = clock()
    req = LaunchRequest(recipe=recipe, wait=True, timeout=timeout_s)
    info: InstanceInfo = follow(client.launch_stream(req), on_event)
    t_ready = clock()
    iid = info.get("id") or ""
    try:
        where = Targets(client, api_key).of(info)
        deadline = t_ready + (timeout_s or 600.0)
        first = probe_until_ok(lambda: where, deadline, f"{recipe} after its launch", clock)
    finally:
        if not keep:
            evict_instance(client, iid)
    assert first.first_token is not None and first.ttft is not None
    return ColdStart(
        recipe=recipe,
        instance_id=iid,
        cold_start_s=first.first_token - t0,
        ready_s=t_ready - t0,
        ttft_s=first.ttft,
        stages=stages_of(t0, info, labels, first.first_token),
        evicted=not keep,
    )


# ------------------------------------------------------------------------- cold request


@dataclass(frozen=True)
class ColdRequest:
    """One request through the gateway for a model with nothing running: the gateway
    loads it on demand and holds the request meanwhile. ``queue_s``: the time the gateway
    accounted as waited (its usage row's ``queue_ms``; None when its store is not readable
    from here)."""

    model: str
    instance_id: str | None  # what the gateway loaded
    ttft_s: float
    e2e_s: float
    queue_s: float | None
    evicted: bool

    def metrics(self) -> dict[str, float | None]:
        return {"ttft_s": self.ttft_s, "e2e_s": self.e2e_s, "queue_s": self.queue_s}

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": "cold-request", **asdict(self)}


def _serving(client: Client, model: str) -> InstanceInfo | None:
    for i in client.instances()["instances"]:
        names = {i.get("recipe"), i.get("served_name"), *(i.get("model_names") or [])}
        if i.get("state") in ("starting", "loading", "ready") and model in names:
            return i
    return None


def cold_request(
    client: Client,
    model: str,
    *,
    api_key: str | None,
    keep: bool = False,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> ColdRequest:
    """Time one request for ``model`` (not running) through the gateway; evict what it
    loaded after unless ``keep``."""
    if not api_key:
        raise UsageError(
            "a cold request goes through the gateway: it needs a tenant key (--api-key)",
            hint="studioctl tenant key add TENANT",
        )
    if (running := _serving(client, model)) is not None:
        raise UsageError(
            f"{model[:200]} is already running ({running.get('id')}): a cold request needs it cold",
            hint=f"studioctl evict {running.get('id')}",
        )
    gateway = Targets(client, api_key).gateway_url()
    p = probe(Access(gateway, model, api_key), timeout_s or 600.0, clock)
    loaded = _serving(client, model)
    iid = loaded.get("id") if loaded else None
    if iid and not keep:
        _after_the_want(p.start, clock)
        evict_instance(client, iid)
    if not p.ok:
        raise EngineFailed(f"the cold request for {model[:200]} failed: {p.error}")
    assert p.ttft is not None
    return ColdRequest(
        model, iid, p.ttft, p.end - p.start, _queue_s(model, p.start, clock), not keep
    )


def _after_the_want(asked: float, clock: Callable[[], float]) -> None:
    """Wait until the on-demand orchestrator no longer counts the request as wanting its
    model (``WANTED_S`` after it arrived): evicted sooner, the model would be loaded again
    for a request already answered."""
    from studioctl.lifecycle.ondemand import WANTED_S

    time.sleep(max(0.0, asked + WANTED_S + 0.25 - clock()))


def _queue_s(model: str, since: float, clock: Callable[[], float]) -> float | None:
    """The gateway's usage row of the request: its ``queue_ms`` in seconds. Rows are
    written in batches (every few tens of milliseconds): looked for up to 3 s."""
    from studioctl import paths
    from studioctl.store import open_database
    from studioctl.store.usage import UsageRepo

    path = paths.database_file()
    if not path.is_file():
        return None
    db = open_database(path, migrate=False)
    try:
        deadline = clock() + 3.0
        while clock() < deadline:
            rows = [
                r for r in UsageRepo(db).rows(since=since - 1.0, model=model) if r.status == 200
            ]
            if rows:
                return rows[0].queue_ms / 1000.0
            time.sleep(0.05)
        return None
    finally:
        db.close()


# ------------------------------------------------------------------------- the document


class Result(Protocol):
    """What every lifecycle benchmark returns: its flat metrics, and one run's dict."""

    def metrics(self) -> dict[str, float | None]: ...

    def to_dict(self) -> dict[str, Any]: ...


def run_one(
    client: Client,
    kind: str,
    args: tuple[str, ...],
    *,
    api_key: str | None,
    timeout_s: float | None,
) -> Result:
    """One run of benchmark ``kind`` (``KINDS``) on ``args``; what it launched, it evicts."""
    if kind == "cold-start":
        return cold_start(client, args[0], api_key=api_key, timeout_s=timeout_s)
    if kind == "switch":
        from studioctl.bench.switch_time import switch

        return switch(client, args[0], args[1], api_key=api_key, timeout_s=timeout_s)
    if kind == "evict":
        from studioctl.bench.evict_time import evict

        return evict(client, args[0], timeout_s=timeout_s)
    if kind == "cold-request":
        return cold_request(client, args[0], api_key=api_key, timeout_s=timeout_s)
    raise UsageError(f"unknown lifecycle benchmark {kind[:50]!r} (one of: {', '.join(KINDS)})")


def summary(kind: str, runs: Sequence[Result]) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Each metric's mean over the runs (what ``--fail-if`` checks), and its spread."""
    means: dict[str, float | None] = {}
    spread: dict[str, Any] = {}
    for name in METRICS[kind]:
        values = [v for r in runs if (v := r.metrics().get(name)) is not None]
        means[name] = statistics.fmean(values) if values else None
        spread[name] = (
            {"min": min(values), "max": max(values), "std": statistics.pstdev(values)}
            if values
            else None
        )
    return means, spread


def document(
    kind: str,
    args: Sequence[str],
    runs: Sequence[Result],
    *,
    through_gateway: bool,
    verdicts: Sequence[Verdict],
    started_at: float,
    duration_s: float,
) -> dict[str, Any]:
    """The ``"kind": "lifecycle"`` variant of the studioctl.bench/1 document."""
    from studioctl import __version__
    from studioctl.bench.report import SCHEMA, thresholds_json

    means, spread = summary(kind, runs)
    return {
        "schema": SCHEMA,
        "kind": "lifecycle",
        "studioctl_version": __version__,
        "started_at": started_at,
        "duration_s": duration_s,
        "lifecycle": {
            "benchmark": kind,
            "args": list(args),
            "through_gateway": through_gateway,
            "repeat": len(runs),
            "metrics": means,
            "spread": spread,
            "runs": [r.to_dict() for r in runs],
        },
        "thresholds": thresholds_json(verdicts),
        "passed": not any(v.crossed for v in verdicts),
    }
