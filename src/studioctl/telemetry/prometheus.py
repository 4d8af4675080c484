"""Telemetry's families in the Prometheus text format (appended to the gateway's /metrics).

GPU families only when NVML answers (``studioctl_gpu_available 0`` otherwise); energy per GPU,
per instance and unattributed; per-instance state and engine figures. An instance the engine
has not reported a figure for has no sample (absent, not zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from studioctl import promtext
from studioctl.gpu import EnergyMeter, GpuSnapshot, HostGpus
from studioctl.promtext import Sample
from studioctl.states import State
from studioctl.telemetry.energy import UNATTRIBUTED
from studioctl.telemetry.figures import InstanceTelemetry

#: Per-GPU gauges: family suffix, help, GpuSnapshot attribute, scale.
GPU_GAUGES: tuple[tuple[str, str, str, float], ...] = (
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
)

#: Per-instance gauges: family suffix, help, getter (None: no sample).
INSTANCE_GAUGES: tuple[tuple[str, str, Callable[[InstanceTelemetry], float | None]], ...] = (
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
)


def render(
    host: HostGpus | None,
    meter: EnergyMeter,
    insts: Sequence[InstanceTelemetry],
    unattributed_j: float,
) -> str:
    """The families, in order: GPU availability and figures, energy, then per instance
    (``insts`` in the order shown; none: no instance families at all)."""
    out: list[str] = []
    available = bool(host and host.available)
    promtext.family(
        out,
        "studioctl_gpu_available",
        "gauge",
        "1 when NVML answers (an NVIDIA driver is loaded), else 0.",
        [({}, 1.0 if available else 0.0)],
    )
    if host is not None and available:
        _gpu_families(out, host.gpus, meter)
    energy: list[Sample] = []
    if available:
        energy += [({"gpu": str(i)}, meter.joules(i)) for i in meter.indices()]
        energy += [({"instance": it.id, "recipe": it.recipe_id}, it.energy_j) for it in insts]
        energy.append(({"instance": UNATTRIBUTED, "recipe": ""}, unattributed_j))
    promtext.family(
        out,
        "studioctl_energy_joules_total",
        "counter",
        "Energy since the daemon started: per GPU (gpu label) and attributed to instances "
        "by their share of the GPU's process memory (instance label). Sum one kind only.",
        energy,
    )
    if insts:
        _instance_families(out, insts)
    return "\n".join(out) + "\n"


def _gpu_families(out: list[str], gpus: Sequence[GpuSnapshot], meter: EnergyMeter) -> None:
    lbl = [{"gpu": str(g.index)} for g in gpus]
    promtext.family(
        out,
        "studioctl_gpu_info",
        "gauge",
        "GPU identity (always 1).",
        [({"gpu": str(g.index), "name": g.name or "", "uuid": g.uuid or ""}, 1.0) for g in gpus],
    )
    promtext.family(
        out,
        "studioctl_gpu_lost",
        "gauge",
        "1 when the GPU fell off the bus.",
        [(lb, 1.0 if g.lost else 0.0) for lb, g in zip(lbl, gpus, strict=True)],
    )
    for name, help_text, attr, scale in GPU_GAUGES:
        samples: list[Sample] = []
        for lb, g in zip(lbl, gpus, strict=True):
            v = getattr(g, attr)
            if v is not None:
                samples.append((lb, float(v) * scale))
        promtext.family(out, "studioctl_gpu_" + name, "gauge", help_text, samples)
    promtext.family(
        out,
        "studioctl_gpu_energy_method",
        "gauge",
        "How the GPU's energy is measured: counter (NVML energy counter), power "
        "(integrated power draw) or none.",
        [({"gpu": str(i), "method": meter.method(i)}, 1.0) for i in meter.indices()],
    )


def _instance_families(out: list[str], insts: Sequence[InstanceTelemetry]) -> None:
    states = [str(s) for s in State]
    promtext.family(
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
    for name, help_text, get in INSTANCE_GAUGES:
        rows: list[Sample] = []
        for it in insts:
            v = get(it)
            if v is not None and not math.isnan(v):
                rows.append(({"instance": it.id, "recipe": it.recipe_id}, float(v)))
        promtext.family(out, "studioctl_instance_" + name, "gauge", help_text, rows)
