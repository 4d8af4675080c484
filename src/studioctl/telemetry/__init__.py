"""Telemetry in the daemon: GPUs, engine metrics, energy, peaks and lifetime figures.

The composition root builds, in order: a :class:`GpuReader` (cached NVML snapshots, shared)
and a :class:`VramWatch` over it (the supervisor's wait for an evicted instance's GPU memory);
later one :class:`Telemetry` (the sampler) with the supervisor, the store, the event bus, the
engine-HTTP object and the gateway's counters, all given to its constructor.

- ``energy``: a GPU's energy split between the instances on it (by process memory share);
- ``gpus``: the GPU reader and the VRAM-release wait;
- ``sampler``: the loops (GPU samples, engine scrapes, flushes to the store) and the views;
- ``prometheus``: the sampler's figures as Prometheus families (``/metrics``);
- ``ports``: what telemetry needs of the rest of the daemon, as protocols.

Without an NVIDIA driver everything works: no GPU figures, VRAM ``None``, no energy, NVML
retried every 30 s, one ``studioctl_gpu_available 0`` line in Prometheus. The HTTP routes
(``GET /telemetry``, ``GET /stats``) live with the control API (``control.gpus.telemetry_routes``).
"""

from __future__ import annotations

from studioctl.telemetry.energy import UNATTRIBUTED, energy_shares
from studioctl.telemetry.figures import InstanceTelemetry
from studioctl.telemetry.gpus import GpuReader, VramWatch
from studioctl.telemetry.ports import EngineHttp, EngineReply, InstanceSource
from studioctl.telemetry.sampler import Telemetry

__all__ = [
    "UNATTRIBUTED",
    "EngineHttp",
    "EngineReply",
    "GpuReader",
    "InstanceSource",
    "InstanceTelemetry",
    "Telemetry",
    "VramWatch",
    "energy_shares",
]
