"""Telemetry's own per-instance figures, and their JSON views (``GET /telemetry``, ``top``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from studioctl.engines.metrics import EngineMetricSnapshot, Throughput, ThroughputTracker
from studioctl.gpu import EnergyMeter, GpuSnapshot, HostGpus


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
            "power_w": round_or_none(self.power_w, 1),
            "energy_j": round(self.energy_j, 3),
            "requests_running": eng.requests_running if eng else None,
            "requests_waiting": eng.requests_waiting if eng else None,
            "kv_cache_usage": eng.kv_cache_usage if eng else None,
            "prompt_tokens_per_s": round_or_none(rate.prompt_tokens_per_s if rate else None, 2),
            "generation_tokens_per_s": round_or_none(
                rate.generation_tokens_per_s if rate else None, 2
            ),
            "ttft_s": round_or_none(rate.ttft_mean_s if rate else None, 4),
            "scraped_at": self.scraped_at,
            "scrape_error": self.scrape_error,
        }


@dataclass
class GatewayRate:
    """The gateway's request counter at the last sample (for requests per second)."""

    ts: float
    requests_total: float


def gpu_dict(g: GpuSnapshot, meter: EnergyMeter) -> dict[str, Any]:
    """One GPU in the snapshot."""
    return {
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
        "energy_j": round(meter.joules(g.index), 3),
        "energy_method": meter.method(g.index),
        "processes": len(g.processes),
    }


def host_dict(host: HostGpus | None) -> dict[str, Any]:
    """Whether NVML answers, and the driver (the snapshot's ``gpu``)."""
    return {
        "available": bool(host and host.available),
        "reason": host.reason if host else "not sampled yet",
        "driver_version": host.driver_version if host else None,
        "cuda_version": host.cuda_version if host else None,
    }


def round_or_none(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
