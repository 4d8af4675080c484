"""Telemetry in the daemon: GPUs, engine metrics, energy, peaks and lifetime figures.

One :class:`Telemetry` object per daemon, created after the supervisor. Two loops:

- every ``gpu_interval_s`` (1 s): an NVML snapshot (in a thread: NVML calls block), the energy
  meter, each instance's VRAM (its process tree's GPU memory), energy and power attributed to
  instances, uptime; then a compact ``telemetry`` event on the EventBus (live only, never
  stored) carrying :meth:`Telemetry.snapshot`;
- every ``scrape_interval_s`` (3 s): each ready (or draining) instance's ``/metrics``, through
  the supervisor's aiohttp session, mapped to studioctl names (``engine_metrics``), tokens/s
  from counter deltas, requests, and the peaks of that interval.

Energy attribution: a GPU's energy in an interval (from its energy counter, or integrated
power; see ``gpu.EnergyMeter``) is split between the processes on it in proportion to the
GPU memory each holds (NVML has no per-process power); an instance gets the shares of the
processes of its tree. Processes whose memory the driver does not report count equally; the
share of processes that are not studioctl's, and a GPU's idle energy (no process at all), is
counted as ``unattributed``. Power per instance is split the same way.

Lifetime totals (tokens, requests, energy, uptime) and peaks per recipe are kept in memory
as :class:`~studioctl.store.stats.StatsDelta` and added to SQLite every ``flush_interval_s``
(10 s) and at shutdown. A new instance's engine counters start at zero, so its first scrape
counts everything it did since it started; an instance adopted after a daemon restart is
counted from its first scrape (what it did while the daemon was down is not known).

Without an NVIDIA driver everything works: no GPU figures, VRAM ``None``, no energy, NVML
retried every 30 s, one ``studioctl_gpu_available 0`` line in Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl import gpu as gpu_mod
from studioctl.engine_metrics import (
    EngineMetrics,
    EngineMetricSnapshot,
    Parsed,
    Throughput,
    ThroughputTracker,
    combine,
    counter_delta,
    parse_prometheus,
)
from studioctl.errors import StudioError
from studioctl.states import ACTIVE, State
from studioctl.store.stats import StatsDelta

if TYPE_CHECKING:
    from starlette.routing import Route

    from studioctl.gpu import GpuSnapshot, HostGpus, Nvml
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.runtime import Instance
    from studioctl.store.db import Database
    from studioctl.store.stats import RecipeStats

log = logging.getLogger("studioctl.telemetry")

GPU_INTERVAL_S = 1.0
SCRAPE_INTERVAL_S = 3.0
FLUSH_INTERVAL_S = 10.0
NO_GPU_RECHECK_S = 30.0  # without a driver, NVML is tried again this often (not every second)
VRAM_RELEASE_TIMEOUT_S = 5.0
VRAM_POLL_S = 0.25
# A longer gap between two samples (a suspended host, a stalled loop) is not counted as uptime.
_MAX_UPTIME_STEP_S = 5.0

#: States in which an instance's /metrics is scraped.
SCRAPED_STATES = frozenset({State.READY, State.DRAINING})

#: Finished-request counters (not in engine_metrics' table, which has what `top` shows).
REQUEST_COUNTERS: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm:request_success_total",),
    "sglang": ("sglang:num_requests_total",),
}

#: Pseudo-instance of the energy nobody studioctl runs is charged for (idle GPUs, others).
UNATTRIBUTED = "__unattributed__"


# -- pure helpers -----------------------------------------------------------------------------


def energy_shares(gpu: GpuSnapshot, trees: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """Each instance's share (0–1) of a GPU: its processes' memory over all processes'.

    ``trees`` maps instance ids to the pids of their process trees. Instances with no process
    on the GPU are left out; the shares sum to less than 1 when other processes use the GPU,
    and the result is empty when nothing runs on it. Processes whose memory the driver does
    not report (``None``) weigh one each, if no process on the GPU has a memory figure.
    """
    procs = gpu.processes
    if not procs:
        return {}
    weights = [float(p.used_memory_bytes or 0) for p in procs]
    total = math.fsum(weights)
    if total <= 0:
        weights = [1.0] * len(procs)
        total = float(len(procs))
    pid_sets = {iid: frozenset(pids) for iid, pids in trees.items()}
    out: dict[str, float] = {}
    for p, w in zip(procs, weights, strict=True):
        for iid, pids in pid_sets.items():
            if p.pid in pids and w > 0:
                out[iid] = out.get(iid, 0.0) + w / total
    return out


def requests_total(backend: str, parsed: Parsed) -> float | None:
    """The engine's finished-request counter (summed over label sets), None when absent."""
    for name in REQUEST_COUNTERS.get(backend, ()):
        if name in parsed:
            return combine(parsed[name], "sum")
    return None


# -- state ------------------------------------------------------------------------------------


@dataclass
class InstanceTelemetry:
    """What telemetry knows of one instance (runtime only)."""

    id: str
    recipe_id: str
    backend: str
    state: str = ""
    vram_bytes: int | None = None
    vram_by_gpu: dict[int, int] = field(default_factory=dict)
    power_w: float | None = None
    energy_j: float = 0.0
    engine: EngineMetricSnapshot | None = None
    rate: Throughput | None = None
    scraped_at: float | None = None
    scrape_error: str | None = None
    tracker: ThroughputTracker = field(default_factory=ThroughputTracker)
    requests_seen: float | None = None  # last value of the engine's request counter

    def to_dict(self) -> dict[str, Any]:
        eng, rate = self.engine, self.rate
        return {
            "id": self.id,
            "recipe": self.recipe_id,
            "backend": self.backend,
            "state": self.state,
            "vram_bytes": self.vram_bytes,
            "vram_by_gpu": {str(k): v for k, v in sorted(self.vram_by_gpu.items())},
            "power_w": _round(self.power_w, 1),
            "energy_j": round(self.energy_j, 3),
            "requests_running": eng.requests_running if eng else None,
            "requests_waiting": eng.requests_waiting if eng else None,
            "kv_cache_usage": eng.kv_cache_usage if eng else None,
            "prompt_tokens_per_s": _round(rate.prompt_tokens_per_s if rate else None, 2),
            "generation_tokens_per_s": _round(rate.generation_tokens_per_s if rate else None, 2),
            "ttft_s": _round(rate.ttft_mean_s if rate else None, 4),
            "scraped_at": self.scraped_at,
            "scrape_error": self.scrape_error,
        }


@dataclass
class _GatewayRate:
    ts: float
    requests_total: float


GatewaySource = Callable[[], dict[str, Any]]
SessionSource = Callable[[], Any]


class Telemetry:
    """The daemon's sampler (see the module docstring).

    ``sup`` is the Supervisor (only ``instances`` is read: ``id``, ``recipe``, ``state``,
    ``tree``, ``base_url``, ``adopted``, ``ready_at``, and ``vram_bytes`` is written);
    ``session`` returns the aiohttp session to scrape with (the supervisor's); ``nvml`` is
    an ``gpu.Nvml`` (default ``gpu.make_nvml()``, the test seam). ``gateway`` (set after the
    gateway is built) returns the gateway's counters for ``top``.

    Tests drive it step by step with :meth:`sample_gpus`, :meth:`scrape_engines` and
    :meth:`flush`; the daemon calls :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        sup: Any,
        *,
        db: Database | None = None,
        bus: EventBus | None = None,
        nvml: Nvml | None = None,
        session: SessionSource | None = None,
        gateway: GatewaySource | None = None,
        gpu_interval_s: float = GPU_INTERVAL_S,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        vram_timeout_s: float = VRAM_RELEASE_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from studioctl.store.stats import StatsRepo

        self.sup = sup
        self.bus = bus
        self.stats = StatsRepo(db) if db is not None else None
        self.nvml = nvml if nvml is not None else gpu_mod.make_nvml()
        self._session = session or (lambda: None)
        self.gateway = gateway
        self.gpu_interval_s = gpu_interval_s
        self.scrape_interval_s = scrape_interval_s
        self.flush_interval_s = flush_interval_s
        self.vram_timeout_s = vram_timeout_s
        self._clock = clock
        self.meter = gpu_mod.EnergyMeter()
        self.host: HostGpus | None = None
        self.instances: dict[str, InstanceTelemetry] = {}
        self.unattributed_j = 0.0
        self._gpu_joules: dict[int, float] = {}  # meter reading at the last sample, per GPU
        self._gpu_checked_at: float | None = None  # when NVML was last asked (monotonic)
        self._last_sample: float | None = None
        self._pending: dict[str, StatsDelta] = {}
        self._gateway_rate: _GatewayRate | None = None
        self._gateway_snapshot: dict[str, Any] | None = None
        self._nvml_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(self.sample_gpus, self.gpu_interval_s), name="gpus"),
            asyncio.create_task(
                self._loop(self.scrape_engines, self.scrape_interval_s), name="scrape"
            ),
            asyncio.create_task(self._loop(self._flush_async, self.flush_interval_s), name="flush"),
        ]

    async def stop(self) -> None:
        """Stop the loops (before the supervisor closes the session they scrape with)."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def close(self) -> None:
        """Stop the loops, add what is pending to the store, shut NVML down."""
        await self.stop()
        try:
            self.flush()
        except StudioError as exc:
            log.error("telemetry: final flush failed: %s", exc.message)
        async with self._nvml_lock:
            await asyncio.to_thread(self.nvml.close)

    async def _loop(self, step: Callable[[], Awaitable[None]], interval: float) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # telemetry must never take the daemon down
                log.exception("telemetry step %s failed", getattr(step, "__name__", step))
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - t0)))

    # -- GPUs ----------------------------------------------------------------------------------

    async def read_gpus(self, *, fresh: bool = False) -> HostGpus:
        """An NVML snapshot (in a thread). Without a driver, the last answer is reused for
        ``NO_GPU_RECHECK_S`` unless ``fresh``."""
        mono = time.monotonic()
        last = self.host
        if (
            not fresh
            and last is not None
            and not last.available
            and self._gpu_checked_at is not None
            and mono - self._gpu_checked_at < NO_GPU_RECHECK_S
        ):
            return last
        async with self._nvml_lock:
            host = await asyncio.to_thread(self.nvml.snapshot)
        self._gpu_checked_at = mono
        return host

    def _active(self) -> list[Instance]:
        return [i for i in self.sup.instances.values() if i.state in ACTIVE]

    def _tel(self, inst: Instance) -> InstanceTelemetry:
        it = self.instances.get(inst.id)
        if it is None:
            it = self.instances[inst.id] = InstanceTelemetry(
                inst.id, inst.recipe.id, inst.recipe.backend
            )
            if not getattr(inst, "adopted", False):
                # Started by this daemon: its engine counted from zero, so the first scrape
                # counts everything it did (the baseline is zero at the time it became ready).
                zero = EngineMetricSnapshot(
                    backend=inst.recipe.backend,
                    prompt_tokens_total=0.0,
                    generation_tokens_total=0.0,
                    ttft_sum=0.0,
                    ttft_count=0.0,
                )
                it.tracker.update(zero, inst.ready_at or inst.started_at or self._clock())
                it.requests_seen = 0.0
        it.state = str(inst.state)
        return it

    def _delta(self, recipe_id: str) -> StatsDelta:
        d = self._pending.get(recipe_id)
        if d is None:
            d = self._pending[recipe_id] = StatsDelta(recipe_id)
        return d

    async def sample_gpus(self) -> None:
        """One GPU step: NVML, energy, VRAM and power per instance, uptime, the event."""
        host = await self.read_gpus()
        now = self._clock()
        self.host = host
        dt = 0.0 if self._last_sample is None else max(0.0, now - self._last_sample)
        self._last_sample = now

        active = self._active()
        trees = {i.id: list(i.tree) for i in active}
        tels = {i.id: self._tel(i) for i in active}
        # Instances that ended: their figures go (a relaunch gets a new id); a crashed one
        # keeps them for its restart. Neither holds a measured VRAM figure any more.
        for resting in self.sup.instances.values():
            if resting.state not in ACTIVE:
                with contextlib.suppress(AttributeError):
                    resting.vram_bytes = None
        for iid in [k for k in self.instances if k not in tels]:
            inst = self.sup.instances.get(iid)
            if inst is None or inst.state in (State.STOPPED, State.FAILED):
                del self.instances[iid]
            else:
                self.instances[iid].state = str(inst.state)

        if host.available:
            self.meter.update(host)
            vram = gpu_mod.map_processes(host, trees)
        else:
            vram = {}
        power: dict[str, float] = {}
        for g in host.gpus:
            joules = self.meter.joules(g.index)
            dj = joules - self._gpu_joules.get(g.index, joules)
            self._gpu_joules[g.index] = joules
            shares = energy_shares(g, trees)
            for iid, share in shares.items():
                it = tels[iid]
                it.energy_j += dj * share
                self._delta(it.recipe_id).energy_j += dj * share
                if g.power_w is not None:
                    power[iid] = power.get(iid, 0.0) + g.power_w * share
            self.unattributed_j += dj * max(0.0, 1.0 - math.fsum(shares.values()))

        by_recipe_power: dict[str, tuple[float, str]] = {}
        for inst in active:
            it = tels[inst.id]
            if host.available:
                per_gpu = vram.get(inst.id, {})
                it.vram_by_gpu = dict(per_gpu)
                it.vram_bytes = sum(per_gpu.values())
                # No share of any GPU: it draws nothing (0 W), if the GPUs report power at all.
                reported = any(g.power_w is not None for g in host.gpus)
                it.power_w = power.get(inst.id, 0.0 if reported else None)
            else:
                it.vram_by_gpu, it.vram_bytes, it.power_w = {}, None, None
            with contextlib.suppress(AttributeError):  # a test's stand-in object may refuse
                inst.vram_bytes = it.vram_bytes
            if inst.state == State.READY and dt:
                self._delta(it.recipe_id).uptime_s += min(dt, _MAX_UPTIME_STEP_S)
            if it.power_w:
                total, _ = by_recipe_power.get(it.recipe_id, (0.0, inst.id))
                by_recipe_power[it.recipe_id] = (total + it.power_w, inst.id)
        for recipe_id, (watts, iid) in by_recipe_power.items():
            self._delta(recipe_id).offer("power_w", watts, now, iid)

        self._sample_gateway(now)
        if self.bus is not None:
            snap = self.snapshot()
            n_gpu, n_inst = len(snap["gpus"]), len(snap["instances"])
            self.bus.publish(
                "telemetry",
                f"{n_gpu} GPU{'s' if n_gpu != 1 else ''}, {n_inst} "
                f"instance{'s' if n_inst != 1 else ''}",
                data=snap,
                persist=False,
            )

    def _sample_gateway(self, now: float) -> None:
        if self.gateway is None:
            self._gateway_snapshot = None
            return
        try:
            g = dict(self.gateway())
        except Exception:
            log.exception("gateway snapshot failed")
            return
        total = float(g.get("requests_total") or 0.0)
        prev = self._gateway_rate
        rate: float | None = None
        if prev is not None and now > prev.ts:
            rate = max(0.0, total - prev.requests_total) / (now - prev.ts)
        self._gateway_rate = _GatewayRate(now, total)
        g["requests_per_s"] = _round(rate, 2)
        self._gateway_snapshot = g

    # -- engines -------------------------------------------------------------------------------

    async def scrape_engines(self) -> None:
        """One scrape step: every ready or draining instance's /metrics, concurrently."""
        session = self._session()
        if session is None or getattr(session, "closed", False):
            return
        targets = [i for i in self.sup.instances.values() if i.state in SCRAPED_STATES]
        await asyncio.gather(*(self._scrape(session, i) for i in targets))

    async def _scrape(self, session: Any, inst: Instance) -> None:
        from studioctl.lifecycle.readiness import fetch_text

        url = inst.base_url + "/metrics"
        text = await fetch_text(session, url, headers=getattr(inst, "auth_headers", None))
        self.observe_metrics(inst, text, source=url)

    def observe_metrics(self, inst: Instance, text: str | None, *, source: str) -> None:
        """Take one /metrics body (None: no answer) of ``inst``: rates, totals, peaks."""
        now = self._clock()
        it = self._tel(inst)
        if text is None:
            it.scrape_error = f"no answer from {source}"
            return
        try:
            parsed = parse_prometheus(text, source=source)
            snap = EngineMetrics(inst.recipe.backend).extract(parsed)
        except StudioError as exc:
            it.scrape_error = exc.message
            return
        rate = it.tracker.update(snap, now)
        it.engine, it.rate, it.scraped_at, it.scrape_error = snap, rate, now, None
        requests = requests_total(inst.recipe.backend, parsed)
        if requests is None and snap.ttft_count is not None:
            requests = snap.ttft_count  # requests that got a first token: the next best count
        d = self._delta(it.recipe_id)
        dreq = counter_delta(it.requests_seen, requests)
        if requests is not None:
            it.requests_seen = requests
        d.requests += dreq or 0.0
        d.prompt_tokens += rate.prompt_tokens_delta or 0.0
        d.generation_tokens += rate.generation_tokens_delta or 0.0
        d.offer("prefill_tps", rate.prompt_tokens_per_s, now, inst.id)
        d.offer("generation_tps", rate.generation_tokens_per_s, now, inst.id)
        d.offer("ttft_best_s", rate.ttft_mean_s, now, inst.id)
        d.offer("concurrent", snap.requests_running, now, inst.id)
        d.offer("kv_cache", snap.kv_cache_usage, now, inst.id)

    # -- stats ---------------------------------------------------------------------------------

    def flush(self) -> int:
        """Add the pending deltas to the store (one transaction); returns rows written."""
        if self.stats is None:
            return 0
        pending, self._pending = self._pending, {}
        try:
            n = self.stats.add(pending.values(), ts=self._clock())
        except BaseException:
            for rid, d in pending.items():  # keep them for the next try
                self._delta(rid).merge(d)
            raise
        return n

    async def _flush_async(self) -> None:
        self.flush()

    def recipe_stats(self, recipe_id: str | None = None) -> list[RecipeStats]:
        """Lifetime figures, stored plus pending (all recipes, or one: NotFoundError if the
        store knows nothing of it)."""
        from studioctl.errors import NotFoundError
        from studioctl.store.stats import RecipeStats

        if self.stats is None:
            return []
        now = self._clock()
        stored = {s.recipe_id: s for s in self.stats.list()}
        ids = sorted(set(stored) | {r for r, d in self._pending.items() if not d.is_empty()})
        if recipe_id is not None:
            if recipe_id not in ids:
                raise NotFoundError(
                    f"no statistics for recipe {recipe_id!r} yet",
                    hint="figures appear once an instance of it has run; see `studioctl stats`",
                )
            ids = [recipe_id]
        return [
            stored.get(r, RecipeStats.empty(r, now)).plus(self._pending.get(r), now) for r in ids
        ]

    # -- views ---------------------------------------------------------------------------------

    def vram_bytes(self, instance_id: str) -> int | None:
        it = self.instances.get(instance_id)
        return it.vram_bytes if it else None

    def snapshot(self) -> dict[str, Any]:
        """The current figures, JSON-ready (``GET /telemetry``, the ``telemetry`` event)."""
        host = self.host
        gpus = []
        if host is not None:
            for g in host.gpus:
                gpus.append(
                    {
                        "index": g.index,
                        "name": g.name,
                        "uuid": g.uuid,
                        "lost": g.lost,
                        "error": g.error,
                        "util_pct": g.util_gpu_pct,
                        "mem_util_pct": g.util_mem_pct,
                        "mem_used_bytes": g.mem_used_bytes,
                        "mem_total_bytes": g.mem_total_bytes,
                        "temperature_c": g.temperature_c,
                        "power_w": g.power_w,
                        "power_limit_w": g.power_limit_w,
                        "energy_j": round(self.meter.joules(g.index), 3),
                        "energy_method": self.meter.method(g.index),
                        "processes": len(g.processes),
                    }
                )
        order = {iid: n for n, iid in enumerate(self._instance_order())}
        insts = sorted(
            (it for it in self.instances.values() if it.id in order), key=lambda it: order[it.id]
        )
        return {
            "ts": self._last_sample or self._clock(),
            "gpu": {
                "available": bool(host and host.available),
                "reason": host.reason if host else "not sampled yet",
                "driver_version": host.driver_version if host else None,
                "cuda_version": host.cuda_version if host else None,
            },
            "gpus": gpus,
            "instances": [it.to_dict() for it in insts],
            "unattributed_energy_j": round(self.unattributed_j, 3),
            "gateway": self._gateway_snapshot,
        }

    def _instance_order(self) -> list[str]:
        listed = sorted(
            (i for i in self.sup.instances.values() if i.state != State.STOPPED),
            key=lambda i: getattr(i, "created_at", 0.0),
        )
        return [i.id for i in listed]

    # -- eviction --------------------------------------------------------------------------------

    async def vram_released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        """After an evict: wait (up to ``vram_timeout_s``) until no process of ``inst``'s tree
        holds GPU memory. None without GPUs (nothing to wait for); else a report:
        ``vram_bytes`` (``held``: what it held before), ``vram_released``, ``vram_wait_s``."""
        if self.host is not None and not self.host.available:
            return None
        pids = frozenset(inst.tree)
        t0 = time.monotonic()
        while True:
            host = await self.read_gpus(fresh=True)
            if not host.available:
                return None
            still = [(g.index, p) for g in host.gpus for p in g.processes if p.pid in pids]
            waited = round(time.monotonic() - t0, 3)
            if not still:
                return {"vram_bytes": held, "vram_released": True, "vram_wait_s": waited}
            if waited >= self.vram_timeout_s:
                return {
                    "vram_bytes": held,
                    "vram_released": False,
                    "vram_wait_s": waited,
                    "vram_still_held": sum(p.used_memory_bytes or 0 for _, p in still),
                    "vram_pids": sorted({p.pid for _, p in still}),
                }
            await asyncio.sleep(VRAM_POLL_S)

    # -- Prometheus ----------------------------------------------------------------------------

    def prometheus_lines(self) -> str:
        """The daemon's telemetry families in the Prometheus text format (for /metrics)."""
        out: list[str] = []
        host = self.host
        available = bool(host and host.available)
        _family(
            out,
            "studioctl_gpu_available",
            "gauge",
            "1 when NVML answers (an NVIDIA driver is loaded), else 0.",
            [({}, 1.0 if available else 0.0)],
        )
        if host is not None and available:
            gpus = host.gpus
            lbl = [{"gpu": str(g.index)} for g in gpus]
            _family(
                out,
                "studioctl_gpu_info",
                "gauge",
                "GPU identity (always 1).",
                [
                    ({"gpu": str(g.index), "name": g.name or "", "uuid": g.uuid or ""}, 1.0)
                    for g in gpus
                ],
            )
            _family(
                out,
                "studioctl_gpu_lost",
                "gauge",
                "1 when the GPU fell off the bus.",
                [(lb, 1.0 if g.lost else 0.0) for lb, g in zip(lbl, gpus, strict=True)],
            )
            for name, help_text, attr, scale in (
                ("utilization_ratio", "GPU utilisation (0-1).", "util_gpu_pct", 0.01),
                (
                    "memory_utilization_ratio",
                    "GPU memory bandwidth utilisation (0-1).",
                    "util_mem_pct",
                    0.01,
                ),
                ("memory_used_bytes", "GPU memory in use.", "mem_used_bytes", 1.0),
                ("memory_total_bytes", "GPU memory in total.", "mem_total_bytes", 1.0),
                ("temperature_celsius", "GPU temperature.", "temperature_c", 1.0),
                ("power_watts", "GPU power draw.", "power_w", 1.0),
                ("power_limit_watts", "GPU enforced power limit.", "power_limit_w", 1.0),
            ):
                samples = []
                for lb, g in zip(lbl, gpus, strict=True):
                    v = getattr(g, attr)
                    if v is not None:
                        samples.append((lb, float(v) * scale))
                _family(out, "studioctl_gpu_" + name, "gauge", help_text, samples)
            _family(
                out,
                "studioctl_gpu_energy_method",
                "gauge",
                "How the GPU's energy is measured: counter (NVML energy counter), power "
                "(integrated power draw) or none.",
                [
                    ({"gpu": str(i), "method": self.meter.method(i)}, 1.0)
                    for i in self.meter.indices()
                ],
            )
        insts = [self.instances[i] for i in self._instance_order() if i in self.instances]
        energy: list[tuple[dict[str, str], float]] = []
        if available:
            energy += [({"gpu": str(i)}, self.meter.joules(i)) for i in self.meter.indices()]
            energy += [({"instance": it.id, "recipe": it.recipe_id}, it.energy_j) for it in insts]
            energy.append(({"instance": UNATTRIBUTED, "recipe": ""}, self.unattributed_j))
        _family(
            out,
            "studioctl_energy_joules_total",
            "counter",
            "Energy since the daemon started: per GPU (gpu label) and attributed to instances "
            "by their share of the GPU's process memory (instance label). Sum one kind only.",
            energy,
        )
        if not insts:
            return "\n".join(out) + "\n"
        states = [str(s) for s in State]
        _family(
            out,
            "studioctl_instance_state",
            "gauge",
            "1 for the instance's current lifecycle state, 0 for the others.",
            [
                (
                    {"instance": it.id, "recipe": it.recipe_id, "state": s},
                    1.0 if s == it.state else 0.0,
                )
                for it in insts
                for s in states
            ],
        )

        def per_instance(get: Callable[[InstanceTelemetry], float | None]) -> list[Any]:
            rows = []
            for it in insts:
                v = get(it)
                if v is not None and not math.isnan(v):
                    rows.append(({"instance": it.id, "recipe": it.recipe_id}, float(v)))
            return rows

        for name, help_text, getter in (
            (
                "requests_running",
                "Requests the engine is running (its own metric).",
                lambda it: it.engine.requests_running if it.engine else None,
            ),
            (
                "requests_waiting",
                "Requests queued in the engine.",
                lambda it: it.engine.requests_waiting if it.engine else None,
            ),
            (
                "kv_cache_usage_ratio",
                "KV cache in use (0-1).",
                lambda it: it.engine.kv_cache_usage if it.engine else None,
            ),
            (
                "prompt_tokens_per_second",
                "Prompt (prefill) tokens per second over the last scrape interval.",
                lambda it: it.rate.prompt_tokens_per_s if it.rate else None,
            ),
            (
                "generation_tokens_per_second",
                "Generated tokens per second over the last scrape interval.",
                lambda it: it.rate.generation_tokens_per_s if it.rate else None,
            ),
            (
                "time_to_first_token_seconds",
                "Mean time to first token of the requests of the last scrape interval.",
                lambda it: it.rate.ttft_mean_s if it.rate else None,
            ),
            (
                "vram_bytes",
                "GPU memory held by the instance's processes (all its GPUs).",
                lambda it: it.vram_bytes,
            ),
            (
                "power_watts",
                "GPU power attributed to the instance.",
                lambda it: it.power_w,
            ),
        ):
            _family(out, "studioctl_instance_" + name, "gauge", help_text, per_instance(getter))
        return "\n".join(out) + "\n"


# -- Prometheus text helpers ------------------------------------------------------------------


def _family(
    out: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: list[tuple[dict[str, str], float]],
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lbl = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{lbl}}} {_num(value)}" if lbl else f"{name} {_num(value)}")


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- control API ------------------------------------------------------------------------------


def control_routes(tel: Telemetry) -> list[Route]:
    """``GET /telemetry`` (the current snapshot) and ``GET /stats[?recipe=ID]`` (lifetime
    figures and peaks per recipe), for ``build_control_app(extra_routes=...)``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from studioctl import API_VERSION

    headers = {"X-Studioctl-Api": str(API_VERSION)}

    async def telemetry(_: Request) -> Response:
        return JSONResponse(tel.snapshot(), headers=headers)

    async def stats(request: Request) -> Response:
        recipe = request.query_params.get("recipe") or None
        rows = tel.recipe_stats(recipe)
        return JSONResponse({"recipes": [s.to_dict() for s in rows]}, headers=headers)

    return [Route("/telemetry", telemetry), Route("/stats", stats)]
