"""Evict waits for the GPU memory of its processes to be released (a real supervisor and a
real stand-in engine in-process; the GPUs are the fake pynvml, listing the engine's pids)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon_helpers import alive
from fakes import fake_pynvml
from fakes.fake_pynvml import GIB
from standin.helpers import write_standin_recipe
from studioctl.gpu import Nvml
from studioctl.lifecycle.engine_http import EngineHttp
from studioctl.lifecycle.events import EventBus
from studioctl.lifecycle.hooks import NullHooks
from studioctl.lifecycle.supervisor import Supervisor
from studioctl.settings import load_settings
from studioctl.store import open_database
from studioctl.telemetry import GpuReader, Telemetry, VramWatch

pytestmark = pytest.mark.integration


class VramHooks(NullHooks):
    """The supervisor's hooks with the VRAM wait (as the daemon composes them)."""

    def __init__(self, vram: VramWatch) -> None:
        self.vram = vram

    async def vram_released(self, inst: Any, held: int | None) -> dict[str, Any] | None:
        return await self.vram.released(inst, held)


@pytest.fixture(autouse=True)
def _recipe() -> None:
    write_standin_recipe("tiny")


async def evict_with_gpu(*, free_after: float | None, timeout: float) -> tuple[Any, ...]:
    fake = fake_pynvml.two_gpus(procs0=[], procs1=[])
    db = open_database()
    http = EngineHttp()
    gpus = GpuReader(Nvml(module=fake))
    hooks = VramHooks(VramWatch(gpus, timeout_s=timeout))
    sup = Supervisor(
        settings=load_settings(), db=db, bus=EventBus(None), hooks=hooks, engine_http=http
    )
    await sup.start()
    seen: set[tuple[int, float]] = set()
    try:
        tel = Telemetry(sup, gpus=gpus, engine_http=http)
        inst = await sup.launch("tiny")
        seen.update(inst.tree.items())
        # The engine's processes hold memory on GPU 0 (as NVML would list them).
        fake.gpus[0].processes = [(pid, 8 * GIB) for pid in inst.tree]
        await tel.sample_gpus()
        held = inst.vram_bytes
        shown = inst.to_dict()["vram_bytes"]

        async def driver_frees_memory() -> None:
            if free_after is not None:
                await asyncio.sleep(free_after)
                fake.gpus[0].processes = []

        freer = asyncio.create_task(driver_frees_memory())
        report = (await sup.evict(inst.id, drain_timeout=1.0, grace=5.0)).to_dict()
        await freer
        return report, held, shown, len(inst.tree), seen
    finally:
        await sup.close(stop_engines=True)
        await http.close()
        db.close()


def test_evict_reports_the_vram_it_held_and_waits_for_its_release() -> None:
    report, held, shown, n, seen = asyncio.run(evict_with_gpu(free_after=0.8, timeout=5.0))
    assert not [p for p in seen if alive(*p)]
    assert held == shown == n * 8 * GIB and n >= 2  # the server and its engine core
    assert report["state"] == "stopped"
    assert report["vram_bytes"] == held
    assert report["vram_released"] is True
    assert 0.5 <= report["vram_wait_s"] < 4.0


def test_evict_gives_up_waiting_and_says_who_still_holds_memory() -> None:
    report, held, _, n, seen = asyncio.run(evict_with_gpu(free_after=None, timeout=0.6))
    assert not [p for p in seen if alive(*p)]
    assert report["state"] == "stopped"  # the processes are gone: the evict itself succeeded
    assert report["vram_released"] is False
    assert report["vram_still_held"] == held and len(report["vram_pids"]) == n
    assert report["vram_wait_s"] >= 0.6
