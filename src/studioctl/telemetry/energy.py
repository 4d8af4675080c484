"""Energy math: a GPU's energy split between the instances on it.

A GPU's energy in an interval (from its energy counter, or integrated power; see
``gpu.EnergyMeter``) is split between the processes on it in proportion to the GPU memory
each holds (NVML has no per-process power); an instance gets the shares of the processes of
its tree. Processes whose memory the driver does not report count equally; the share of
processes that are not studioctl's, and a GPU's idle energy (no process at all), is counted
as ``unattributed``. Power per instance is split the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from studioctl import gpu as gpu_mod
from studioctl.gpu import GpuSnapshot, HostGpus

#: Pseudo-instance of the energy nobody studioctl runs is charged for (idle GPUs, others).
UNATTRIBUTED = "__unattributed__"


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


@dataclass
class EnergySplit:
    """One interval's split: ``energy`` as (instance id, joules) per GPU share, in GPU order
    (added up in that order, so totals do not depend on how they are grouped), ``power_w``
    per instance now, ``unattributed_j`` per GPU."""

    energy: list[tuple[str, float]] = field(default_factory=list)
    power_w: dict[str, float] = field(default_factory=dict)
    unattributed_j: list[float] = field(default_factory=list)


class EnergyLedger:
    """GPU energy since the daemon started (``meter``) and its split per sampling interval."""

    def __init__(self) -> None:
        self.meter = gpu_mod.EnergyMeter()
        self._gpu_joules: dict[int, float] = {}  # meter reading at the last sample, per GPU

    def step(self, host: HostGpus, trees: Mapping[str, Iterable[int]]) -> EnergySplit:
        """Take a snapshot: each GPU's energy since the last one, split by memory share."""
        if host.available:
            self.meter.update(host)
        out = EnergySplit()
        for g in host.gpus:
            joules = self.meter.joules(g.index)
            dj = joules - self._gpu_joules.get(g.index, joules)
            self._gpu_joules[g.index] = joules
            shares = energy_shares(g, trees)
            for iid, share in shares.items():
                out.energy.append((iid, dj * share))
                if g.power_w is not None:
                    out.power_w[iid] = out.power_w.get(iid, 0.0) + g.power_w * share
            out.unattributed_j.append(dj * max(0.0, 1.0 - math.fsum(shares.values())))
        return out
