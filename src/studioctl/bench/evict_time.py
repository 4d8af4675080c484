"""The evict benchmark: evict asked → its report, → every process of the instance's tree
gone (watched from here by pid and start time while the evict runs on its own
connection), → on a GPU, its memory free in the daemon's GPU telemetry. On a host without
GPUs (or NVML) there is no VRAM to wait for: ``gpu`` says "no GPU" and ``vram_free_s`` is
None."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from studioctl.bench.probe import POLL_S, evict_instance, live

if TYPE_CHECKING:
    from studioctl.api.types import InstanceInfo
    from studioctl.client import Client


@dataclass(frozen=True)
class Evict:
    """``processes_gone_s``: evict asked → no process of the instance's tree alive (seen
    from here, by pid and start time); ``vram_free_s``: → the daemon's GPU telemetry shows
    the memory the instance held released on its GPUs (None without a GPU: ``gpu``)."""

    target: str
    recipe: str
    instance_id: str
    launched: bool  # launched first, not measured
    evict_s: float  # evict asked → its report
    processes_gone_s: float | None
    processes: int
    vram_free_s: float | None
    gpu: str
    report: dict[str, Any]  # the daemon's own figures: drain_s, seconds, vram_*

    def metrics(self) -> dict[str, float | None]:
        return {
            "evict_s": self.evict_s,
            "processes_gone_s": self.processes_gone_s,
            "vram_free_s": self.vram_free_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": "evict", **asdict(self)}


def evict(
    client: Client,
    target: str,
    *,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> Evict:
    """Evict ``target`` (an instance or recipe; a recipe not running is launched first)."""
    from studioctl.api.models import LaunchRequest

    info = live(client, target)
    launched = info is None
    if info is None:
        info = client.launch(LaunchRequest(recipe=target, wait=True, timeout=timeout_s))
    iid = str(info.get("id"))
    procs = [(int(p["pid"]), float(p["create_time"])) for p in info.get("processes") or []]  # type: ignore[arg-type]
    vram = VramWatch(client, info)
    done: dict[str, Any] = {}

    def run() -> None:
        from studioctl.client import Client as Fresh

        try:
            with Fresh(client.socket_path) as c:
                done["report"] = evict_instance(c, iid)
        except BaseException as exc:  # raised again below
            done["error"] = exc
        done["at"] = clock()

    t0 = clock()
    thread = threading.Thread(target=run, name="bench-evict", daemon=True)
    thread.start()
    # A failed evict leaves the processes running: the watch stops with it.
    gone = _processes_gone(procs, t0 + (timeout_s or 600.0), clock, lambda: "error" in done)
    thread.join()
    if "error" in done:
        raise done["error"]
    return Evict(
        target=target,
        recipe=str(info.get("recipe") or target),
        instance_id=iid,
        launched=launched,
        evict_s=done["at"] - t0,
        processes_gone_s=None if gone is None else gone - t0,
        processes=len(procs),
        vram_free_s=vram.wait_free(t0, clock),
        gpu=vram.gpu,
        report=done["report"],
    )


def _processes_gone(
    procs: list[tuple[int, float]],
    deadline: float,
    clock: Callable[[], float],
    failed: Callable[[], bool],
) -> float | None:
    """When the last of ``procs`` (pid, create time) ended; None when none was seen here
    (another host's daemon), at the deadline, or once ``failed``."""
    import psutil

    def alive(pid: int, created: float) -> bool:
        try:
            p = psutil.Process(pid)
            return abs(p.create_time() - created) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    left = [p for p in procs if alive(*p)]
    if not left:
        return None
    while clock() < deadline and not failed():
        left = [p for p in left if alive(*p)]
        if not left:
            return clock()
        time.sleep(POLL_S)
    return None


class VramWatch:
    """The instance's GPUs' used memory before the evict (the daemon's telemetry); after,
    when it fell by what the instance held (90% of it: other processes move too)."""

    def __init__(self, client: Client, info: InstanceInfo) -> None:
        self.client = client
        snap = client.telemetry()
        gpu = snap.get("gpu")
        available = isinstance(gpu, dict) and bool(gpu.get("available"))
        self.indexes = set(info.get("gpus") or []) if available else set()
        self.held = info.get("vram_bytes")
        self.before = self._used(snap)
        gpus = snap.get("gpus") if isinstance(snap.get("gpus"), list) else []
        names = [str(g.get("name")) for g in gpus or [] if isinstance(g, dict)]  # type: ignore[union-attr]
        self.gpu = ", ".join(names) if self.indexes and names else "no GPU"

    def _used(self, snap: Mapping[str, Any]) -> int:
        return sum(
            int(g.get("mem_used_bytes") or 0)
            for g in snap.get("gpus") or []
            if isinstance(g, dict) and g.get("index") in self.indexes
        )

    def wait_free(
        self, t0: float, clock: Callable[[], float], limit_s: float = 60.0
    ) -> float | None:
        if not self.indexes or not self.held:
            return None
        while clock() < t0 + limit_s:
            if self._used(self.client.telemetry()) <= self.before - 0.9 * self.held:
                return clock() - t0
            time.sleep(0.05)
        return None
