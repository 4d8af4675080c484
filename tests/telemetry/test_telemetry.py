"""The telemetry sampler against the fake pynvml, in-process, step by step.

GPU processes are real child processes' pids, mapped to instances by their process trees;
energy comes from the (scripted) NVML energy counter or integrated power; the Prometheus
output is parsed back with prometheus_client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import fake_pynvml
from fakes.fake_pynvml import GIB, FakePynvml
from studioctl import gpu
from studioctl.errors import NotFoundError
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.routing import RouteTable
from studioctl.gpu import GpuProcess, GpuSnapshot, Nvml
from studioctl.lifecycle.events import Event, EventBus
from studioctl.states import State
from studioctl.store import open_database
from studioctl.store.stats import StatsRepo
from studioctl.telemetry import UNATTRIBUTED, GpuReader, Telemetry, VramWatch, energy_shares

from .conftest import Clock, FakeInstance, FakeRecipe, FakeSup

# -- helpers ----------------------------------------------------------------------------------


def make(sup: FakeSup, fake: FakePynvml, clock: Clock, **kw: Any) -> Telemetry:
    return Telemetry(sup, gpus=GpuReader(Nvml(module=fake, clock=clock)), clock=clock, **kw)


def watch(tel: Telemetry, **kw: Any) -> VramWatch:
    """The evict's VRAM wait over the same GPU reader as the sampler (as the daemon builds)."""
    return VramWatch(tel.gpus, **kw)


def metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text → {sample name: [(labels, value)]}, through prometheus_client."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(
    parsed: dict[str, list[tuple[dict[str, str], float]]], metric: str, /, **labels: str
) -> float:
    found = [
        v for lb, v in parsed.get(metric, []) if all(lb.get(k) == x for k, x in labels.items())
    ]
    assert len(found) == 1, f"{metric}{labels}: {parsed.get(metric)}"
    return found[0]


def vllm_text(
    *,
    prompt: float,
    gen: float,
    running: float = 0,
    waiting: float = 0,
    kv: float = 0.0,
    success: float = 0,
    ttft_sum: float | None = None,
    ttft_count: float | None = None,
) -> str:
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}',
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}',
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}',
        f'vllm:prompt_tokens_total{{engine="0",model_name="m"}} {prompt}',
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen}',
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="m"}} '
        f"{success}",
    ]
    if ttft_sum is not None:
        lines += [
            f'vllm:time_to_first_token_seconds_bucket{{le="+Inf",model_name="m"}} {ttft_count}',
            f'vllm:time_to_first_token_seconds_sum{{model_name="m"}} {ttft_sum}',
            f'vllm:time_to_first_token_seconds_count{{model_name="m"}} {ttft_count}',
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def two(children: list[int]) -> tuple[FakeSup, FakePynvml, list[FakeInstance]]:
    """Instance a (pid 0) holds 60 GiB of GPU 0, next to a process that is not studioctl's
    (pid 2, 20 GiB); instance b (pid 1) holds 10 GiB, alone on GPU 1."""
    p0, p1, p2 = children
    fake = fake_pynvml.two_gpus(procs0=[(p0, 60 * GIB), (p2, 20 * GIB)], procs1=[(p1, 10 * GIB)])
    sup = FakeSup()
    a = sup.add(FakeInstance("a-1", FakeRecipe("a"), tree={p0: 0.0}))
    b = sup.add(FakeInstance("b-1", FakeRecipe("b", "sglang"), tree={p1: 0.0}))
    return sup, fake, [a, b]


# -- energy shares (pure) ---------------------------------------------------------------------


def test_energy_shares_follow_process_memory() -> None:
    g = GpuSnapshot(
        index=0, processes=(GpuProcess(10, 30 * GIB), GpuProcess(11, 10 * GIB), GpuProcess(12, 0))
    )
    shares = energy_shares(g, {"x": [10, 99], "y": [11], "z": [12], "idle": [50]})
    assert shares == pytest.approx({"x": 0.75, "y": 0.25})  # z holds nothing: no share


def test_energy_shares_without_memory_figures_count_processes() -> None:
    g = GpuSnapshot(index=0, processes=(GpuProcess(10, None), GpuProcess(11, None)))
    assert energy_shares(g, {"x": [10]}) == pytest.approx({"x": 0.5})  # 11 is someone else's
    assert energy_shares(GpuSnapshot(index=1), {"x": [10]}) == {}  # nothing runs: idle


# -- GPU sampling -----------------------------------------------------------------------------


def test_energy_vram_and_power_are_attributed_by_memory_share(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, (a, b) = two
    tel = make(sup, fake, clock)

    async def run() -> None:
        await tel.sample_gpus()  # baseline of the energy counters
        fake.gpus[0].energy_mj += 8_000  # 8 J on GPU 0
        fake.gpus[1].energy_mj += 5_000  # 5 J on GPU 1
        clock.advance(1.0)
        await tel.sample_gpus()

    asyncio.run(run())
    ta, tb = tel.instances["a-1"], tel.instances["b-1"]
    assert ta.energy_j == pytest.approx(6.0)  # 60 of the 80 GiB of process memory
    assert tb.energy_j == pytest.approx(5.0)  # alone on its GPU
    assert tel.unattributed_j == pytest.approx(2.0)  # the other process's quarter
    assert tel.meter.joules(0) == pytest.approx(8.0) and tel.meter.method(0) == "counter"
    assert (a.vram_bytes, b.vram_bytes) == (60 * GIB, 10 * GIB)  # recorded with the supervisor
    assert ta.vram_by_gpu == {0: 60 * GIB}
    assert ta.power_w == pytest.approx(612.345 * 0.75)
    assert tb.power_w == pytest.approx(71.0)
    pending = tel._pending
    assert pending["a"].energy_j == pytest.approx(6.0)
    assert pending["a"].uptime_s == pytest.approx(1.0) and pending["b"].uptime_s == 1.0
    assert pending["a"].peaks["power_w"].value == pytest.approx(612.345 * 0.75)

    snap = tel.snapshot()
    assert snap["gpu"]["available"] is True and snap["gpu"]["driver_version"] == "550.54.15"
    assert [g["util_pct"] for g in snap["gpus"]] == [87.0, 3.0]
    assert snap["gpus"][0]["energy_method"] == "counter"
    assert [i["id"] for i in snap["instances"]] == ["a-1", "b-1"]
    assert snap["instances"][0]["vram_by_gpu"] == {"0": 60 * GIB}
    assert snap["unattributed_energy_j"] == pytest.approx(2.0)


def test_instance_on_two_gpus_sums_its_memory(children: list[int], clock: Clock) -> None:
    p0, p1, _ = children
    fake = fake_pynvml.two_gpus(procs0=[(p0, 30 * GIB)], procs1=[(p1, 30 * GIB)])
    sup = FakeSup()
    tp = sup.add(FakeInstance("tp-1", FakeRecipe("tp"), tree={p0: 0.0, p1: 0.0}))
    tel = make(sup, fake, clock)
    asyncio.run(tel.sample_gpus())
    assert tp.vram_bytes == 60 * GIB
    assert tel.instances["tp-1"].vram_by_gpu == {0: 30 * GIB, 1: 30 * GIB}
    assert tel.instances["tp-1"].power_w == pytest.approx(612.345 + 71.0)


def test_energy_falls_back_to_integrated_power(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, _ = two
    fake.gpus[0].unsupported.add("nvmlDeviceGetTotalEnergyConsumption")
    tel = make(sup, fake, clock)

    async def run() -> None:
        await tel.sample_gpus()
        clock.advance(2.0)
        await tel.sample_gpus()

    asyncio.run(run())
    assert tel.meter.method(0) == "power" and tel.meter.method(1) == "counter"
    assert tel.meter.joules(0) == pytest.approx(612.345 * 2)
    assert tel.instances["a-1"].energy_j == pytest.approx(612.345 * 2 * 0.75)
    parsed = metrics(tel.prometheus_lines())
    assert value(parsed, "studioctl_gpu_energy_method", gpu="0", method="power") == 1.0
    assert value(parsed, "studioctl_gpu_energy_method", gpu="1", method="counter") == 1.0


def test_energy_counter_wrap_counts_the_small_step(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, _ = two
    fake.gpus[1].energy_mj = 2**64 - 1_000
    tel = make(sup, fake, clock)

    async def run() -> None:
        await tel.sample_gpus()
        fake.gpus[1].energy_mj = 500  # wrapped past 2**64 mJ
        clock.advance(1.0)
        await tel.sample_gpus()

    asyncio.run(run())
    assert tel.meter.joules(1) == pytest.approx(1.5)
    assert tel.instances["b-1"].energy_j == pytest.approx(1.5)


def test_gpu_lost_mid_run_is_reported_not_raised(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, (_, b) = two
    tel = make(sup, fake, clock)

    async def run() -> None:
        await tel.sample_gpus()
        fake.lose(1)
        fake.gpus[1].energy_mj += 9_000  # not readable any more: not counted
        clock.advance(1.0)
        await tel.sample_gpus()

    asyncio.run(run())
    lost = tel.snapshot()["gpus"][1]
    assert lost["lost"] is True and lost["name"] == "NVIDIA H100 80GB HBM3"
    assert tel.meter.joules(1) == 0.0
    assert b.vram_bytes == 0  # its GPU no longer lists it
    parsed = metrics(tel.prometheus_lines())
    assert value(parsed, "studioctl_gpu_lost", gpu="1") == 1.0
    assert value(parsed, "studioctl_gpu_lost", gpu="0") == 0.0
    assert not [lb for lb, _ in parsed["studioctl_gpu_power_watts"] if lb["gpu"] == "1"]


def test_host_without_driver(children: list[int], clock: Clock) -> None:
    fake = fake_pynvml.no_driver()
    sup = FakeSup()
    inst = sup.add(FakeInstance("a-1", FakeRecipe("a"), tree={children[0]: 0.0}, vram_bytes=7))
    tel = make(sup, fake, clock)

    async def run() -> None:
        for _ in range(3):
            await tel.sample_gpus()
            clock.advance(1.0)

    asyncio.run(run())
    assert fake.init_calls == 1  # asked once, not every second (retried after 30 s)
    assert inst.vram_bytes is None
    snap = tel.snapshot()
    assert snap["gpu"] == {
        "available": False,
        "reason": gpu.NO_DRIVER,
        "driver_version": None,
        "cuda_version": None,
    }
    assert snap["gpus"] == [] and snap["instances"][0]["vram_bytes"] is None
    text = tel.prometheus_lines()
    parsed = metrics(text)
    assert parsed["studioctl_gpu_available"] == [({}, 0.0)]
    gpu_series = [n for n in parsed if n.startswith("studioctl_gpu_")]
    assert gpu_series == ["studioctl_gpu_available"]
    assert "studioctl_energy_joules_total" not in parsed  # no energy measured at all
    assert value(parsed, "studioctl_instance_state", instance="a-1", state="ready") == 1.0
    assert tel._pending["a"].uptime_s == pytest.approx(2.0)  # uptime needs no GPU


def test_stopped_instances_are_dropped_and_uptime_counts_ready_only(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, (a, b) = two
    b.state = State.LOADING
    tel = make(sup, fake, clock)

    async def run() -> None:
        await tel.sample_gpus()
        clock.advance(1.0)
        await tel.sample_gpus()
        clock.advance(60.0)  # a stalled loop / suspended host: capped, not an hour of uptime
        await tel.sample_gpus()
        a.state = State.STOPPED
        await tel.sample_gpus()

    asyncio.run(run())
    assert tel._pending["a"].uptime_s == pytest.approx(1.0 + 5.0)
    assert "b" not in tel._pending or tel._pending["b"].uptime_s == 0.0
    assert "a-1" not in tel.instances and "b-1" in tel.instances
    assert a.vram_bytes is None and b.vram_bytes == 10 * GIB  # no stale figure once stopped
    assert [i["id"] for i in tel.snapshot()["instances"]] == ["b-1"]


# -- Prometheus -------------------------------------------------------------------------------


def test_prometheus_lines_parse_back_with_the_gateway_families(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, (a, _) = two
    tel = make(sup, fake, clock)

    async def run() -> None:
        await tel.sample_gpus()
        fake.gpus[0].energy_mj += 4_000
        clock.advance(2.0)
        tel.observe_metrics(a, vllm_text(prompt=0, gen=0), source="t")  # type: ignore[arg-type]
        await tel.sample_gpus()
        clock.advance(2.0)
        text = vllm_text(prompt=400, gen=200, running=5, waiting=2, kv=0.25, success=3)
        tel.observe_metrics(a, text, source="t")  # type: ignore[arg-type]

    asyncio.run(run())
    # The whole /metrics answer: the gateway's families, the route table's, telemetry's.
    body = GatewayMetrics().render(RouteTable().metrics_lines() + tel.prometheus_lines())
    families = [f.name for f in text_string_to_metric_families(body)]
    assert len(families) == len(set(families)), "a family is rendered twice"
    parsed = metrics(body)
    assert value(parsed, "studioctl_gpu_available") == 1.0
    assert value(parsed, "studioctl_gpu_utilization_ratio", gpu="0") == pytest.approx(0.87)
    assert value(parsed, "studioctl_gpu_memory_used_bytes", gpu="0") == 71 * GIB
    assert value(parsed, "studioctl_gpu_memory_total_bytes", gpu="1") == 80 * GIB
    assert value(parsed, "studioctl_gpu_temperature_celsius", gpu="0") == 64.0
    assert value(parsed, "studioctl_gpu_power_watts", gpu="0") == pytest.approx(612.345)
    assert value(parsed, "studioctl_gpu_power_limit_watts", gpu="0") == 700.0
    info = value(
        parsed,
        "studioctl_gpu_info",
        gpu="1",
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-1d3c9c1e-0000-4000-8000-000000000001",
    )
    assert info == 1.0
    assert value(parsed, "studioctl_energy_joules_total", gpu="0") == pytest.approx(4.0)
    assert value(parsed, "studioctl_energy_joules_total", instance="a-1") == pytest.approx(3.0)
    assert value(parsed, "studioctl_energy_joules_total", instance=UNATTRIBUTED) == 1.0
    states = {
        lb["state"]: v for lb, v in parsed["studioctl_instance_state"] if lb["instance"] == "a-1"
    }
    assert states["ready"] == 1.0 and sum(states.values()) == 1.0 and len(states) == 8
    assert value(parsed, "studioctl_instance_requests_running", instance="a-1") == 5.0
    assert value(parsed, "studioctl_instance_requests_waiting", instance="a-1", recipe="a") == 2.0
    assert value(parsed, "studioctl_instance_kv_cache_usage_ratio", instance="a-1") == 0.25
    assert value(parsed, "studioctl_instance_prompt_tokens_per_second", instance="a-1") == 200.0
    assert value(parsed, "studioctl_instance_generation_tokens_per_second", instance="a-1") == 100.0
    assert value(parsed, "studioctl_instance_vram_bytes", instance="a-1") == 60 * GIB
    assert value(parsed, "studioctl_instance_vram_bytes", instance="b-1") == 10 * GIB
    # b was never scraped: no engine series for it (absent, not zero).
    assert not [
        lb for lb, _ in parsed["studioctl_instance_requests_running"] if lb["instance"] == "b-1"
    ]


# -- engine scrapes -------------------------------------------------------------------------


def test_engine_scrapes_give_rates_totals_and_peaks(clock: Clock) -> None:
    sup = FakeSup()
    inst = sup.add(FakeInstance("m-1", FakeRecipe("m"), ready_at=clock.t - 10.0))
    tel = make(sup, fake_pynvml.no_driver(), clock, db=open_database())
    # Started by this daemon: the first scrape counts everything since it became ready.
    tel.observe_metrics(
        inst,  # type: ignore[arg-type]
        vllm_text(prompt=100, gen=400, running=3, kv=0.5, success=4, ttft_sum=1.0, ttft_count=4),
        source="s",
    )
    rate = tel.instances["m-1"].rate
    assert rate is not None
    assert rate.prompt_tokens_per_s == pytest.approx(10.0)
    assert rate.generation_tokens_per_s == pytest.approx(40.0)
    clock.advance(2.0)
    tel.observe_metrics(
        inst,  # type: ignore[arg-type]
        vllm_text(prompt=300, gen=600, running=7, kv=0.25, success=6, ttft_sum=1.2, ttft_count=6),
        source="s",
    )
    d = tel._pending["m"]
    assert (d.prompt_tokens, d.generation_tokens, d.requests) == (300, 600, 6)
    assert d.peaks["prefill_tps"].value == pytest.approx(100.0)
    assert d.peaks["generation_tps"].value == pytest.approx(100.0)
    assert d.peaks["ttft_best_s"].value == pytest.approx(0.1)  # (1.2-1.0)/(6-4)
    assert d.peaks["concurrent"].value == 7.0
    assert d.peaks["kv_cache"].value == 0.5 and d.peaks["kv_cache"].instance_id == "m-1"
    snap = tel.snapshot()["instances"][0]
    assert snap["requests_running"] == 7.0 and snap["ttft_s"] == pytest.approx(0.1)

    # Stored, then seen together with what is pending; unknown recipes are a clear error.
    assert tel.flush() == 1
    clock.advance(3.0)
    tel.observe_metrics(inst, vllm_text(prompt=310, gen=600), source="s")  # type: ignore[arg-type]
    (stats,) = tel.recipe_stats("m")
    assert stats.prompt_tokens == 310 and stats.requests == 6
    assert stats.peaks["generation_tps"].value == pytest.approx(100.0)
    assert [s.recipe_id for s in tel.recipe_stats()] == ["m"]
    with pytest.raises(NotFoundError, match="no statistics for recipe 'nope'"):
        tel.recipe_stats("nope")


def test_adopted_instance_counts_from_its_first_scrape(clock: Clock) -> None:
    sup = FakeSup()
    inst = sup.add(FakeInstance("m-1", FakeRecipe("m"), adopted=True, ready_at=clock.t - 99))
    tel = make(sup, fake_pynvml.no_driver(), clock)
    tel.observe_metrics(inst, vllm_text(prompt=1000, gen=5000, success=9), source="s")  # type: ignore[arg-type]
    assert "m" not in tel._pending or tel._pending["m"].is_empty()  # counted by the last daemon
    clock.advance(1.0)
    tel.observe_metrics(inst, vllm_text(prompt=1050, gen=5100, success=10), source="s")  # type: ignore[arg-type]
    d = tel._pending["m"]
    assert (d.prompt_tokens, d.generation_tokens, d.requests) == (50, 100, 1)


def test_engine_restart_counts_from_zero_again(clock: Clock) -> None:
    sup = FakeSup()
    inst = sup.add(FakeInstance("m-1", FakeRecipe("m"), adopted=True))
    tel = make(sup, fake_pynvml.no_driver(), clock)
    tel.observe_metrics(inst, vllm_text(prompt=500, gen=500), source="s")  # type: ignore[arg-type]
    clock.advance(3.0)
    tel.observe_metrics(inst, vllm_text(prompt=30, gen=60), source="s")  # type: ignore[arg-type]
    assert tel._pending["m"].prompt_tokens == 30 and tel._pending["m"].generation_tokens == 60
    assert tel.instances["m-1"].rate is not None and tel.instances["m-1"].rate.reset


def test_bad_or_missing_metrics_are_reported_per_instance(clock: Clock) -> None:
    sup = FakeSup()
    inst = sup.add(FakeInstance("m-1", FakeRecipe("m")))
    tel = make(sup, fake_pynvml.no_driver(), clock)
    tel.observe_metrics(inst, None, source="http://x/metrics")  # type: ignore[arg-type]
    assert tel.instances["m-1"].scrape_error == "no answer from http://x/metrics"
    tel.observe_metrics(inst, "vllm:num_requests_running{ 3\n", source="http://x/metrics")  # type: ignore[arg-type]
    err = tel.instances["m-1"].scrape_error
    assert err is not None and "expected a label name" in err
    assert tel.instances["m-1"].engine is None


# -- events, gateway, loops -------------------------------------------------------------------


class _NoStore:
    def append(self, *args: Any, **kwargs: Any) -> int:
        raise AssertionError("telemetry events must not be stored")


def test_each_sample_publishes_a_live_only_event(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, _ = two
    totals = iter([100.0, 130.0])
    gw = {"inflight": 2, "rejections": {"limit_rpm": 1.0}, "tenants_inflight": {"acme": 2}}

    async def run() -> list[Event]:
        bus = EventBus(_NoStore())  # type: ignore[arg-type]
        q = bus.subscribe()
        tel = make(
            sup,
            fake,
            clock,
            bus=bus,
            gateway_snapshot=lambda: {**gw, "requests_total": next(totals)},
        )
        await tel.sample_gpus()
        clock.advance(2.0)
        await tel.sample_gpus()
        return [q.get_nowait() for _ in range(q.qsize())]

    events = asyncio.run(run())
    assert [e.kind for e in events] == ["telemetry", "telemetry"]
    assert all(e.id < 0 for e in events)  # live only
    assert events[0].message == "2 GPUs, 2 instances"
    data = events[1].data
    assert data is not None
    assert data["gateway"]["requests_per_s"] == pytest.approx(15.0)
    assert data["gateway"]["tenants_inflight"] == {"acme": 2}
    assert [i["id"] for i in data["instances"]] == ["a-1", "b-1"]
    assert data["gpus"][0]["mem_used_bytes"] == 71 * GIB


def test_loops_run_flush_and_close_nvml(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, _ = two
    db = open_database()

    async def run() -> int:
        bus = EventBus(None)
        q = bus.subscribe()
        gpus = GpuReader(Nvml(module=fake))
        tel = Telemetry(
            sup,
            db=db,
            bus=bus,
            gpus=gpus,
            gpu_interval_s=0.05,
            scrape_interval_s=0.05,
            flush_interval_s=0.1,
        )
        await tel.start()
        await asyncio.sleep(0.5)
        await tel.close()
        await gpus.close()  # its owner (the daemon) closes NVML after telemetry
        return q.qsize()

    assert asyncio.run(run()) >= 3
    assert fake.shutdown_calls == 1 and not fake.initialized
    stats = StatsRepo(db).get("a")
    assert stats is not None and 0.2 < stats.uptime_s < 1.0
    assert stats.peaks["power_w"].value == pytest.approx(612.345 * 0.75)
    db.close()


# -- evict: waiting for the GPU memory to be freed --------------------------------------------


def test_vram_release_waits_until_nvml_no_longer_lists_the_processes(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, (a, _) = two
    tel = make(sup, fake, clock)

    async def run() -> dict[str, Any] | None:
        await tel.sample_gpus()

        async def free_later() -> None:
            await asyncio.sleep(0.4)
            fake.gpus[0].processes = [p for p in fake.gpus[0].processes if p[0] not in a.tree]

        freer = asyncio.create_task(free_later())
        out = await watch(tel).released(a, a.vram_bytes)  # type: ignore[arg-type]
        await freer
        return out

    out = asyncio.run(run())
    assert out is not None
    assert out["vram_released"] is True and out["vram_bytes"] == 60 * GIB
    assert 0.3 <= out["vram_wait_s"] < 3.0


def test_vram_release_gives_up_after_the_timeout(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, (a, _) = two
    tel = make(sup, fake, clock)
    t0 = time.monotonic()
    out = asyncio.run(watch(tel, timeout_s=0.5).released(a, 60 * GIB))  # type: ignore[arg-type]
    assert out is not None and out["vram_released"] is False
    assert out["vram_pids"] == list(a.tree) and out["vram_still_held"] == 60 * GIB
    assert 0.5 <= time.monotonic() - t0 < 3.0


def test_vram_release_is_a_no_op_without_gpus(clock: Clock) -> None:
    sup = FakeSup()
    inst = sup.add(FakeInstance("a-1", FakeRecipe("a"), tree={12345: 0.0}))
    tel = make(sup, fake_pynvml.no_driver(), clock)
    t0 = time.monotonic()
    assert asyncio.run(watch(tel).released(inst, None)) is None  # type: ignore[arg-type]
    asyncio.run(tel.sample_gpus())
    assert asyncio.run(watch(tel).released(inst, None)) is None  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 2.0


# -- seams: the supervisor records VRAM, engines are asked through the engine-HTTP object ----


def test_vram_is_recorded_through_the_supervisor_not_written_on_instances(
    two: tuple[FakeSup, FakePynvml, list[FakeInstance]], clock: Clock
) -> None:
    sup, fake, (a, b) = two
    recorded: list[tuple[str, int | None]] = []

    class RecordingSup:
        instances = sup.instances

        def record_vram(self, instance_id: str, vram_bytes: int | None) -> None:
            recorded.append((instance_id, vram_bytes))

    tel = Telemetry(RecordingSup(), gpus=GpuReader(Nvml(module=fake, clock=clock)), clock=clock)
    asyncio.run(tel.sample_gpus())
    assert recorded == [("a-1", 60 * GIB), ("b-1", 10 * GIB)]
    assert a.vram_bytes is None and b.vram_bytes is None  # the instances were not touched
    assert (tel.vram_bytes("a-1"), tel.vram_bytes("b-1"), tel.vram_bytes("x")) == (
        60 * GIB,
        10 * GIB,
        None,
    )


def test_scrapes_go_through_the_engine_http_object_with_the_instance_key(clock: Clock) -> None:
    sup = FakeSup()
    ok = sup.add(FakeInstance("ok-1", FakeRecipe("ok"), base_url="http://e1", api_key="sce-k"))
    sup.add(FakeInstance("denied-1", FakeRecipe("denied"), base_url="http://e2"))
    sup.add(FakeInstance("down-1", FakeRecipe("down"), base_url="http://e3"))
    sup.add(FakeInstance("idle-1", FakeRecipe("idle"), base_url="http://e4", state=State.LOADING))
    asked: list[tuple[str, str | None, float]] = []

    class Answer:
        def __init__(self, status: int, body: bytes) -> None:
            self.status, self.body = status, body

    class Engines:
        async def get(self, url: str, *, api_key: str | None = None, timeout_s: float) -> Answer:
            asked.append((url, api_key, timeout_s))
            if url.startswith("http://e3"):
                raise ConnectionRefusedError(url)
            if url.startswith("http://e2"):
                return Answer(401, b"unauthorized")
            return Answer(200, vllm_text(prompt=5, gen=7, running=1).encode())

    tel = make(sup, fake_pynvml.no_driver(), clock, engine_http=Engines())
    asyncio.run(tel.scrape_engines())
    assert sorted(asked) == [
        ("http://e1/metrics", "sce-k", 3.0),
        ("http://e2/metrics", None, 3.0),
        ("http://e3/metrics", None, 3.0),
    ]  # a loading instance is not scraped
    engine = tel.instances[ok.id].engine
    assert engine is not None and engine.requests_running == 1.0
    assert tel.instances["denied-1"].scrape_error == "no answer from http://e2/metrics"
    assert tel.instances["down-1"].scrape_error == "no answer from http://e3/metrics"
