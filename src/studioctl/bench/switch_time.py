"""The switch benchmark (``bench --switch A B``): the time without service while the
daemon switches from A to B, and the first token on B. Requests go to A's engine back to
back from before the switch until one fails, then to B (at its engine, or through the
gateway) until one answers; the switch itself runs on its own control connection in a
thread. What the run launched, it evicts, also when it fails midway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from studioctl.bench.probe import (
    Access,
    Targets,
    evict_instance,
    follow,
    live,
    probe,
    probe_until_ok,
)
from studioctl.errors import OperationTimeout, UsageError

if TYPE_CHECKING:
    from studioctl.client import Client

_log = logging.getLogger("studioctl.bench")


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
