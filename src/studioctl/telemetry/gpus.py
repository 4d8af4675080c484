"""GPUs as the daemon reads them: cached NVML host snapshots, and the wait for an evicted
instance's GPU memory to be freed.

NVML calls block, so every read runs in a thread, one at a time (the NVML handle is shared
by the sampler, the evict wait and shutdown). Without a driver the last answer is reused for
``NO_GPU_RECHECK_S`` instead of asking NVML every second.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from studioctl import gpu as gpu_mod

if TYPE_CHECKING:
    from studioctl.gpu import HostGpus, Nvml
    from studioctl.lifecycle.runtime import Instance

NO_GPU_RECHECK_S = 30.0  # without a driver, NVML is tried again this often (not every second)
VRAM_RELEASE_TIMEOUT_S = 5.0
VRAM_POLL_S = 0.25


class GpuReader:
    """Cached NVML host snapshots. ``nvml`` is a ``gpu.Nvml`` (default ``gpu.make_nvml()``;
    tests pass one over the fake pynvml)."""

    def __init__(self, nvml: Nvml | None = None, *, recheck_s: float = NO_GPU_RECHECK_S) -> None:
        self.nvml = nvml if nvml is not None else gpu_mod.make_nvml()
        self.recheck_s = recheck_s
        self._last: HostGpus | None = None
        self._checked_at: float | None = None  # when NVML was last asked (monotonic)
        self._lock = asyncio.Lock()

    @property
    def last(self) -> HostGpus | None:
        """The last snapshot read (None before the first read)."""
        return self._last

    async def read(self, *, fresh: bool = False) -> HostGpus:
        """An NVML snapshot. Without a driver, the last answer is reused for ``recheck_s``
        unless ``fresh``."""
        mono = time.monotonic()
        last = self._last
        if (
            not fresh
            and last is not None
            and not last.available
            and self._checked_at is not None
            and mono - self._checked_at < self.recheck_s
        ):
            return last
        async with self._lock:
            host = await asyncio.to_thread(self.nvml.snapshot)
        self._last, self._checked_at = host, mono
        return host

    async def close(self) -> None:
        """Shut NVML down (after the last read: the sampler and evicts are over)."""
        async with self._lock:
            await asyncio.to_thread(self.nvml.close)


class VramWatch:
    """After an evict, waits until NVML no longer lists the instance's processes (the
    supervisor's VRAM-release hook)."""

    def __init__(
        self,
        gpus: GpuReader,
        *,
        timeout_s: float = VRAM_RELEASE_TIMEOUT_S,
        poll_s: float = VRAM_POLL_S,
    ) -> None:
        self.gpus = gpus
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    async def released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        """Wait (up to ``timeout_s``) until no process of ``inst``'s tree holds GPU memory.
        None without GPUs (nothing to wait for); else a report: ``vram_bytes`` (``held``: what
        it held before), ``vram_released``, ``vram_wait_s``, and when it gave up
        ``vram_still_held`` and ``vram_pids``."""
        last = self.gpus.last
        if last is not None and not last.available:
            return None
        pids = frozenset(inst.tree)
        t0 = time.monotonic()
        while True:
            host = await self.gpus.read(fresh=True)
            if not host.available:
                return None
            still = [p for g in host.gpus for p in g.processes if p.pid in pids]
            waited = round(time.monotonic() - t0, 3)
            if not still:
                return {"vram_bytes": held, "vram_released": True, "vram_wait_s": waited}
            if waited >= self.timeout_s:
                return {
                    "vram_bytes": held,
                    "vram_released": False,
                    "vram_wait_s": waited,
                    "vram_still_held": sum(p.used_memory_bytes or 0 for p in still),
                    "vram_pids": sorted({p.pid for p in still}),
                }
            await asyncio.sleep(self.poll_s)
