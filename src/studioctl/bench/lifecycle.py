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
import threading
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
from studioctl.errors import EngineFailed, OperationTimeout, UsageError

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


# ------------------------------------------------------------------------------- switch


@dataclass(frozen=True)
class Switch:
    """``gap_s``: from the end of A's last answered request to B's first token: requests
    go to A's engine back to back from before the switch until one fails, then to B (at
    its engine, or through the gateway) until one answers (so its resolution is one
    request's length)."""

    from_recipe: str
    to_recipe: str
    from_id: str
    to_id: str | None
    from_launched: bool
    gap_s: float
    ttft_s: float  # of B's first answered request
    switch_s: float  # switch asked → its report
    from_last_ok_s: float  # after the switch was asked (negative: A's last answer came before)
    from_refused_s: float  # A's first failed request, its start
    to_first_token_s: float
    report: dict[str, Any]  # the daemon's own figures: order, evict_s, launch_s, gap_s, seconds
    evicted: bool  # B evicted after the run

    def metrics(self) -> dict[str, float | None]:
        return {"gap_s": self.gap_s, "ttft_s": self.ttft_s, "switch_s": self.switch_s}

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": "switch", **asdict(self)}


class _Background:
    """The switch, on its own connection in a thread, while this one sends requests."""

    def __init__(self, client: Client, body: Mapping[str, Any], clock: Callable[[], float]):
        self.socket_path = client.socket_path
        self.body = body
        self.clock = clock
        self.result: Any = None
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="bench-switch", daemon=True)

    def _run(self) -> None:
        from studioctl.api.models import SwitchRequest
        from studioctl.client import Client

        try:
            with Client(self.socket_path) as c:
                req = SwitchRequest.model_validate(self.body)
                self.result = follow(c.switch_stream(req), lambda _: None)
        except BaseException as exc:  # raised again in the measuring thread
            self.error = exc
        finally:
            self.done_at = self.clock()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def switch(
    client: Client,
    a: str,
    b: str,
    *,
    api_key: str | None = None,
    keep: bool = False,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> Switch:
    """Switch from A (an instance or recipe; a recipe not running is launched first) to
    recipe B, sending requests throughout; evict B after unless ``keep``."""
    from studioctl.api.models import LaunchRequest

    limit = timeout_s or 600.0
    info_a = live(client, a)
    launched = info_a is None
    if info_a is None:
        info_a = client.launch(LaunchRequest(recipe=a, wait=True, timeout=timeout_s))
    if (running := live(client, b)) is not None:
        raise UsageError(
            f"{b[:200]} is already running ({running.get('id')}): nothing to switch to"
        )
    targets = Targets(client, api_key)
    # A at its engine, whatever the mode: when A stops answering is what is measured, and
    # the gateway would hold a request for it (or load it again, on demand).
    to_a = Targets(client, None).of(info_a)
    before = probe_until_ok(lambda: to_a, clock() + limit, f"{a} before the switch", clock)
    bg = _Background(client, {"from": info_a.get("id"), "to": b, "timeout": timeout_s}, clock)
    t0 = clock()
    bg.thread.start()
    measured = False
    try:
        last_ok, refused = _until_refused(to_a, before.end, bg, t0 + limit, clock)
        to_b = _access_b(client, targets, b)
        first = probe_until_ok(to_b, t0 + limit, f"{b} after the switch", clock)
        bg.thread.join(max(0.0, t0 + limit - clock()))
        bg.check()
        if bg.done_at is None:
            raise OperationTimeout(f"the switch to {b[:200]} did not end in {limit:g}s")
        measured = True
    finally:
        bg.thread.join(0 if bg.done_at is None else None)
        if not measured and not keep:
            _abandon(client, b, bg, t0 + limit, clock)
    report = dict(bg.result or {})
    new = report.pop("instance", None) or {}
    report.pop("evict", None)
    if not keep and new.get("id"):
        evict_instance(client, new["id"])
    assert first.first_token is not None and first.ttft is not None
    return Switch(
        from_recipe=str(info_a.get("recipe") or a),
        to_recipe=b,
        from_id=str(info_a.get("id")),
        to_id=new.get("id"),
        from_launched=launched,
        gap_s=first.first_token - last_ok,
        ttft_s=first.ttft,
        switch_s=bg.done_at - t0,
        from_last_ok_s=last_ok - t0,
        from_refused_s=refused - t0,
        to_first_token_s=first.first_token - t0,
        report=report,
        evicted=not keep,
    )


def _abandon(
    client: Client, b: str, bg: _Background, deadline: float, clock: Callable[[], float]
) -> None:
    """A switch benchmark that failed midway: B (not running before, so this switch's)
    evicted once the switch itself has ended, so that a failed run leaves nothing behind.
    Best effort: the run's own error is what the user must see, so a failure here is only
    logged."""
    bg.thread.join(max(0.0, deadline - clock()))
    try:
        if (running := live(client, b)) is not None:
            evict_instance(client, str(running.get("id")))
    except Exception:
        _log.warning("could not evict %s after the failed switch", b[:200], exc_info=True)


def _until_refused(
    to_a: Access, last_ok: float, bg: _Background, deadline: float, clock: Callable[[], float]
) -> tuple[float, float]:
    """Requests to A back to back until one fails: (end of the last answered, failed start)."""
    while clock() < deadline:
        p = probe(to_a, max(1.0, deadline - clock()), clock)
        if not p.ok:
            return last_ok, p.start
        last_ok = p.end
        bg.check()
    raise OperationTimeout(f"{to_a.model} still answered {deadline:g}s into the switch")


def _access_b(client: Client, targets: Targets, b: str) -> Callable[[], Access | None]:
    """Where B's requests go, once the daemon lists B's instance (not before: a request
    for a model with nothing running may make the gateway load it on demand, racing the
    switch): through the gateway at once (it holds requests while B loads), or at B's
    engine once it is ready."""

    def reach() -> Access | None:
        info = live(client, b)
        if info is None or not (targets.through_gateway or info.get("state") == "ready"):
            return None
        return targets.of(info)

    return reach


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
