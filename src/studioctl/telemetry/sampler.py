"""The daemon's sampler: :class:`Telemetry` and its periodic loops.

- every ``gpu_interval_s`` (1 s): a GPU snapshot (``GpuReader``), the energy split, each
  instance's VRAM (its process tree's GPU memory, recorded with the supervisor), energy and
  power, uptime; then a compact ``telemetry`` event on the EventBus (live only, never stored)
  carrying :meth:`Telemetry.snapshot`;
- every ``scrape_interval_s`` (3 s): each ready (or draining) instance's ``/metrics``, through
  the daemon's engine-HTTP object, mapped to studioctl names (``engines.metrics``, with the
  engine description's names), tokens/s from counter deltas, requests, and the peaks of that
  interval;
- every ``flush_interval_s`` (10 s) and at shutdown: lifetime totals and peaks per recipe,
  kept in memory as :class:`~studioctl.store.stats.StatsDelta`, added to SQLite.

A new instance's engine counters start at zero, so its first scrape counts everything it did
since it started; an instance adopted after a daemon restart is counted from its first scrape
(what it did while the daemon was down is not known).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from studioctl import gpu as gpu_mod
from studioctl.engines.metrics import (
    EngineMetrics,
    EngineMetricSnapshot,
    counter_delta,
    parse_prometheus,
)
from studioctl.errors import StudioError
from studioctl.states import ACTIVE, State
from studioctl.store.stats import StatsDelta
from studioctl.store.vram import VramPeak
from studioctl.telemetry import prometheus
from studioctl.telemetry.energy import EnergyLedger, EnergySplit
from studioctl.telemetry.figures import (
    GatewayRate,
    InstanceTelemetry,
    gpu_dict,
    host_dict,
    round_or_none,
)

if TYPE_CHECKING:
    from studioctl.gpu import EnergyMeter, HostGpus
    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.runtime import Instance
    from studioctl.store.db import Database
    from studioctl.store.stats import RecipeStats
    from studioctl.telemetry.gpus import GpuReader
    from studioctl.telemetry.ports import EngineHttp, InstanceSource

log = logging.getLogger("studioctl.telemetry")

GPU_INTERVAL_S = 1.0
SCRAPE_INTERVAL_S = 3.0
FLUSH_INTERVAL_S = 10.0
SCRAPE_TIMEOUT_S = 3.0
# A longer gap between two samples (a suspended host, a stalled loop) is not counted as uptime.
_MAX_UPTIME_STEP_S = 5.0

#: States in which an instance's /metrics is scraped.
SCRAPED_STATES = frozenset({State.READY, State.DRAINING})

GatewaySnapshot = Callable[[], dict[str, Any]]


class Telemetry:
    """The daemon's sampler (see the module docstring).

    ``sup`` gives the instances (``id``, ``recipe``, ``state``, ``tree``, ``base_url``,
    ``api_key``, ``adopted``, ``ready_at``) and records each one's measured VRAM;
    ``engine_http`` scrapes engines (None: no scrapes); ``gpus`` reads NVML (its owner closes
    it); ``gateway_snapshot`` returns the gateway's counters for ``top`` (None: no gateway).

    Tests drive it step by step with :meth:`sample_gpus`, :meth:`scrape_engines` and
    :meth:`flush`; the daemon calls :meth:`start`, :meth:`stop` and :meth:`close`.
    """

    def __init__(
        self,
        sup: InstanceSource,
        *,
        gpus: GpuReader,
        db: Database | None = None,
        bus: EventBus | None = None,
        engine_http: EngineHttp | None = None,
        gateway_snapshot: GatewaySnapshot | None = None,
        gpu_interval_s: float = GPU_INTERVAL_S,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from studioctl.store.stats import StatsRepo
        from studioctl.store.vram import VramRepo

        self.sup = sup
        self.gpus = gpus
        self.bus = bus
        self.stats = StatsRepo(db) if db is not None else None
        self.vram = VramRepo(db) if db is not None else None
        self.engine_http = engine_http
        self.gateway_snapshot = gateway_snapshot
        self.gpu_interval_s = gpu_interval_s
        self.scrape_interval_s = scrape_interval_s
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self.energy = EnergyLedger()
        self.host: HostGpus | None = None  # the last sampled snapshot
        self.instances: dict[str, InstanceTelemetry] = {}
        self.unattributed_j = 0.0
        self._last_sample: float | None = None
        self._pending: dict[str, StatsDelta] = {}
        # Each ready instance's most VRAM so far (its run's peak): placement's learned need.
        self._vram_peaks: dict[str, VramPeak] = {}
        self._vram_dirty: set[str] = set()
        self._gateway_rate: GatewayRate | None = None
        self._gateway: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def meter(self) -> EnergyMeter:
        """Energy per GPU since the daemon started."""
        return self.energy.meter

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
        """Stop the loops (before the engine-HTTP session they scrape with is closed)."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def close(self) -> None:
        """Stop the loops and add what is pending to the store."""
        await self.stop()
        try:
            self.flush()
        except StudioError as exc:
            log.error("telemetry: final flush failed: %s", exc.message)

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
        host = await self.gpus.read()
        now = self._clock()
        self.host = host
        dt = 0.0 if self._last_sample is None else max(0.0, now - self._last_sample)
        self._last_sample = now

        active = self._active()
        trees = {i.id: list(i.tree) for i in active}
        tels = {i.id: self._tel(i) for i in active}
        self._forget_ended(tels)
        split = self.energy.step(host, trees)
        self._add_energy(split, tels)
        vram = gpu_mod.map_processes(host, trees) if host.available else {}
        self._update_instances(active, tels, host, vram, split.power_w, dt, now)
        self._sample_gateway(now)
        self._publish()

    def _forget_ended(self, tels: dict[str, InstanceTelemetry]) -> None:
        """Instances that ended: their figures go (a relaunch gets a new id); a crashed one
        keeps them for its restart. Neither holds a measured VRAM figure any more."""
        for resting in self.sup.instances.values():
            if resting.state not in ACTIVE:
                self.sup.record_vram(resting.id, None)
        for iid in [k for k in self.instances if k not in tels]:
            inst = self.sup.instances.get(iid)
            if inst is None or inst.state in (State.STOPPED, State.FAILED):
                del self.instances[iid]
            else:
                self.instances[iid].state = str(inst.state)

    def _add_energy(self, split: EnergySplit, tels: dict[str, InstanceTelemetry]) -> None:
        for iid, joules in split.energy:
            it = tels[iid]
            it.energy_j += joules
            self._delta(it.recipe_id).energy_j += joules
        for joules in split.unattributed_j:
            self.unattributed_j += joules

    def _update_instances(
        self,
        active: Sequence[Instance],
        tels: dict[str, InstanceTelemetry],
        host: HostGpus,
        vram: dict[str, dict[int, int]],
        power: dict[str, float],
        dt: float,
        now: float,
    ) -> None:
        """VRAM and power per instance (recorded with the supervisor), uptime, power peaks."""
        # No share of any GPU: it draws nothing (0 W), if the GPUs report power at all.
        reported = any(g.power_w is not None for g in host.gpus)
        by_recipe_power: dict[str, tuple[float, str]] = {}
        for inst in active:
            it = tels[inst.id]
            if host.available:
                per_gpu = vram.get(inst.id, {})
                it.vram_by_gpu = dict(per_gpu)
                it.vram_bytes = sum(per_gpu.values())
                it.power_w = power.get(inst.id, 0.0 if reported else None)
            else:
                it.vram_by_gpu, it.vram_bytes, it.power_w = {}, None, None
            self.sup.record_vram(inst.id, it.vram_bytes)
            self._offer_vram(inst, it.vram_bytes, now)
            if inst.state == State.READY and dt:
                self._delta(it.recipe_id).uptime_s += min(dt, _MAX_UPTIME_STEP_S)
            if it.power_w:
                total, _ = by_recipe_power.get(it.recipe_id, (0.0, inst.id))
                by_recipe_power[it.recipe_id] = (total + it.power_w, inst.id)
        for recipe_id, (watts, iid) in by_recipe_power.items():
            self._delta(recipe_id).offer("power_w", watts, now, iid)

    def _offer_vram(self, inst: Instance, vram_bytes: int | None, now: float) -> None:
        """Keep the instance's run peak; only once ready (a loading engine holds less)."""
        if not vram_bytes or inst.state not in SCRAPED_STATES:
            return
        held = self._vram_peaks.get(inst.id)
        if held is None:
            held = VramPeak(inst.recipe.id, inst.recipe.content_hash(), inst.id, 0, now)
        if vram_bytes > held.vram_bytes:
            self._vram_peaks[inst.id] = VramPeak(
                held.recipe_id, held.recipe_hash, inst.id, vram_bytes, now
            )
            self._vram_dirty.add(inst.id)

    def _publish(self) -> None:
        if self.bus is None:
            return
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
        if self.gateway_snapshot is None:
            self._gateway = None
            return
        try:
            g = dict(self.gateway_snapshot())
        except Exception:
            log.exception("gateway snapshot failed")
            return
        total = float(g.get("requests_total") or 0.0)
        prev = self._gateway_rate
        rate: float | None = None
        if prev is not None and now > prev.ts:
            rate = max(0.0, total - prev.requests_total) / (now - prev.ts)
        self._gateway_rate = GatewayRate(now, total)
        g["requests_per_s"] = round_or_none(rate, 2)
        self._gateway = g

    # -- engines -------------------------------------------------------------------------------

    async def scrape_engines(self) -> None:
        """One scrape step: every ready or draining instance's /metrics, concurrently."""
        if self.engine_http is None:
            return
        targets = [i for i in self.sup.instances.values() if i.state in SCRAPED_STATES]
        await asyncio.gather(*(self._scrape(self.engine_http, i) for i in targets))

    async def _scrape(self, http: EngineHttp, inst: Instance) -> None:
        url = inst.base_url + "/metrics"
        text: str | None = None
        try:
            answer = await http.get(url, api_key=inst.api_key, timeout_s=SCRAPE_TIMEOUT_S)
        except OSError:
            pass  # no answer: reported on the instance
        else:
            if answer.status == 200:
                text = answer.body.decode("utf-8", errors="replace")
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
        requests = snap.requests_total  # finished requests, from the engine's own counter
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
        self._flush_vram()
        pending, self._pending = self._pending, {}
        try:
            n = self.stats.add(pending.values(), ts=self._clock())
        except BaseException:
            for rid, d in pending.items():  # keep them for the next try
                self._delta(rid).merge(d)
            raise
        return n

    def _flush_vram(self) -> None:
        """Record the run peaks that grew since the last flush; ended instances' go."""
        if self.vram is None:
            return
        dirty, self._vram_dirty = self._vram_dirty, set()
        try:
            self.vram.record(self._vram_peaks[i] for i in sorted(dirty) if i in self._vram_peaks)
        except BaseException:
            self._vram_dirty |= dirty  # kept for the next try
            raise
        for iid in [i for i in self._vram_peaks if i not in self.sup.instances]:
            del self._vram_peaks[iid]

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
        """GPU memory of the instance's processes at the last sample (None: not measured)."""
        it = self.instances.get(instance_id)
        return it.vram_bytes if it else None

    def snapshot(self) -> dict[str, Any]:
        """The current figures, JSON-ready (``GET /telemetry``, the ``telemetry`` event)."""
        host = self.host
        return {
            "ts": self._last_sample or self._clock(),
            "gpu": host_dict(host),
            "gpus": [gpu_dict(g, self.meter) for g in host.gpus] if host is not None else [],
            "instances": [it.to_dict() for it in self._shown()],
            "unattributed_energy_j": round(self.unattributed_j, 3),
            "gateway": self._gateway,
        }

    def prometheus_lines(self) -> str:
        """The daemon's telemetry families in the Prometheus text format (for /metrics)."""
        return prometheus.render(self.host, self.meter, self._shown(), self.unattributed_j)

    def _shown(self) -> list[InstanceTelemetry]:
        """The instances with figures, in the order ``status`` lists them (oldest first)."""
        listed = sorted(
            (i for i in self.sup.instances.values() if i.state != State.STOPPED),
            key=lambda i: getattr(i, "created_at", 0.0),
        )
        return [self.instances[i.id] for i in listed if i.id in self.instances]
