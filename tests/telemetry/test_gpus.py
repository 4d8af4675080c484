"""The GPU reader and the VRAM-release wait on their own, over the fake pynvml (the pids on the
GPUs are real child processes', as the supervisor's process trees would hold)."""

from __future__ import annotations

import asyncio
import time

from fakes import fake_pynvml
from fakes.fake_pynvml import GIB
from studioctl.gpu import Nvml
from studioctl.telemetry import GpuReader, VramWatch

from .conftest import FakeInstance, FakeRecipe


def test_reader_without_a_driver_asks_again_only_after_the_recheck_time() -> None:
    fake = fake_pynvml.no_driver()
    gpus = GpuReader(Nvml(module=fake), recheck_s=0.3)

    async def run() -> list[int]:
        calls = []
        assert gpus.last is None
        first = await gpus.read()
        assert not first.available and gpus.last is first
        calls.append(fake.init_calls)
        assert await gpus.read() is first  # within recheck_s: the same answer, NVML not asked
        calls.append(fake.init_calls)
        await gpus.read(fresh=True)  # a fresh read always asks
        calls.append(fake.init_calls)
        await asyncio.sleep(0.35)
        await gpus.read()  # recheck_s has passed
        calls.append(fake.init_calls)
        return calls

    assert asyncio.run(run()) == [1, 1, 2, 3]


def test_reader_with_gpus_reads_every_time_and_closes_nvml(children: list[int]) -> None:
    fake = fake_pynvml.two_gpus(procs0=[(children[0], 4 * GIB)], procs1=[])
    gpus = GpuReader(Nvml(module=fake))

    async def run() -> tuple[int, int]:
        before = await gpus.read()
        fake.gpus[0].processes = []
        after = await gpus.read()  # not cached: GPUs change every second
        assert gpus.last is after
        await gpus.close()
        return len(before.gpus[0].processes), len(after.gpus[0].processes)

    assert asyncio.run(run()) == (1, 0)
    assert fake.shutdown_calls == 1 and not fake.initialized


def test_vram_watch_reports_the_release(children: list[int]) -> None:
    p0, p1, other = children
    fake = fake_pynvml.two_gpus(procs0=[(p0, 30 * GIB), (other, 5 * GIB)], procs1=[(p1, 30 * GIB)])
    inst = FakeInstance("tp-1", FakeRecipe("tp"), tree={p0: 0.0, p1: 0.0})
    watch = VramWatch(GpuReader(Nvml(module=fake)), timeout_s=5.0, poll_s=0.05)

    async def run() -> dict[str, object] | None:
        async def driver_frees_memory() -> None:
            await asyncio.sleep(0.3)
            fake.gpus[0].processes = [(other, 5 * GIB)]  # the other process stays
            await asyncio.sleep(0.2)
            fake.gpus[1].processes = []

        freer = asyncio.create_task(driver_frees_memory())
        out = await watch.released(inst, 60 * GIB)  # type: ignore[arg-type]
        await freer
        return out

    out = asyncio.run(run())
    assert out is not None
    assert out["vram_released"] is True and out["vram_bytes"] == 60 * GIB
    assert 0.45 <= out["vram_wait_s"] < 3.0  # type: ignore[operator]
    assert "vram_pids" not in out


def test_vram_watch_gives_up_naming_who_still_holds_memory(children: list[int]) -> None:
    p0, p1, _ = children
    fake = fake_pynvml.two_gpus(procs0=[(p0, 30 * GIB)], procs1=[(p1, 2 * GIB)])
    inst = FakeInstance("tp-1", FakeRecipe("tp"), tree={p0: 0.0, p1: 0.0})
    watch = VramWatch(GpuReader(Nvml(module=fake)), timeout_s=0.4, poll_s=0.05)
    t0 = time.monotonic()
    out = asyncio.run(watch.released(inst, None))  # type: ignore[arg-type]
    assert out is not None and out["vram_released"] is False
    assert out["vram_bytes"] is None  # what it held was not measured: said as such
    assert out["vram_still_held"] == 32 * GIB and out["vram_pids"] == sorted([p0, p1])
    assert 0.4 <= time.monotonic() - t0 < 3.0


def test_vram_watch_without_gpus_does_not_wait() -> None:
    fake = fake_pynvml.no_driver()
    gpus = GpuReader(Nvml(module=fake))
    watch = VramWatch(gpus, timeout_s=5.0)
    inst = FakeInstance("a-1", FakeRecipe("a"), tree={12345: 0.0})

    async def run() -> None:
        t0 = time.monotonic()
        assert await watch.released(inst, None) is None  # type: ignore[arg-type]
        assert fake.init_calls == 1  # asked once (nothing known yet)
        assert await watch.released(inst, None) is None  # type: ignore[arg-type]
        assert fake.init_calls == 1  # the reader already knows there is no driver
        assert time.monotonic() - t0 < 2.0

    asyncio.run(run())
