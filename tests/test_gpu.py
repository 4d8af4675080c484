"""studioctl.gpu over a fake pynvml module (and once over the real one: this host has no GPU)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pynvml
import pytest

from fakes import fake_pynvml
from fakes.fake_pynvml import GIB, FakeGpu, FakePynvml
from studioctl import gpu
from studioctl.gpu import EnergyMeter, GpuProcess, GpuSnapshot, HostGpus, Nvml


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))


# -- fake fidelity ----------------------------------------------------------------------------


def test_fake_raises_the_real_pynvml_exception_classes() -> None:
    fake = fake_pynvml.unsupported_metrics()
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetPowerUsage(handle)
    assert fake.NVMLError is pynvml.NVMLError
    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost


# -- no driver / no GPU -----------------------------------------------------------------------


def test_real_pynvml_on_this_host_reports_no_driver() -> None:
    # This machine has no NVIDIA driver: the real bindings fail at nvmlInit.
    with Nvml() as nvml:
        host = nvml.snapshot()
    assert host.available is False
    assert host.reason == gpu.NO_DRIVER
    assert host.gpus == ()


def test_no_driver_is_unavailable_with_a_reason_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_pynvml.no_driver()
    nvml = Nvml(module=fake)
    with caplog.at_level(logging.INFO, logger="studioctl.gpu"):
        first = nvml.snapshot()
        second = nvml.snapshot()
    assert first.available is False and second.available is False
    assert first.reason == "NVIDIA driver not found (libnvidia-ml.so.1)"
    assert first.driver_version is None and first.gpus == ()
    said = [r for r in caplog.records if "no GPU telemetry" in r.getMessage()]
    assert len(said) == 1
    assert fake.init_calls == 2  # a driver loaded later is picked up
    nvml.close()
    assert fake.shutdown_calls == 0  # never initialised, nothing to shut down


def test_driver_not_loaded_reason() -> None:
    host = Nvml(module=fake_pynvml.driver_not_loaded()).snapshot()
    assert (host.available, host.reason) == (False, gpu.DRIVER_NOT_LOADED)


def test_missing_bindings_is_a_reason_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` → ImportError
    host = Nvml().snapshot()
    assert host.available is False
    assert host.reason == gpu.NO_BINDINGS


def test_zero_gpus() -> None:
    with Nvml(module=fake_pynvml.no_gpus()) as nvml:
        host = nvml.snapshot()
    assert host.available is True and host.reason is None
    assert host.gpus == ()
    assert host.driver_version == "550.54.15"
    assert host.cuda_version == "12.4"


# -- readings ---------------------------------------------------------------------------------


def test_two_gpus_with_processes_all_readings_converted() -> None:
    fake = fake_pynvml.two_gpus(procs0=[(101, 40 * GIB), (102, None)], procs1=[])
    nvml = Nvml(module=fake, clock=lambda: 1234.5)
    host = nvml.snapshot()
    assert host.available and host.ts == 1234.5
    assert [g.index for g in host.gpus] == [0, 1]
    g0 = host.gpus[0]
    assert g0 == GpuSnapshot(
        index=0,
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-1d3c9c1e-0000-4000-8000-000000000000",
        lost=False,
        util_gpu_pct=87.0,
        util_mem_pct=41.0,
        mem_total_bytes=80 * GIB,
        mem_used_bytes=71 * GIB,
        mem_free_bytes=9 * GIB,
        temperature_c=64.0,
        fan_pct=0.0,
        power_w=612.345,
        power_limit_w=700.0,
        sm_clock_mhz=1980,
        mem_clock_mhz=2619,
        pcie_tx_kbps=1200,
        pcie_rx_kbps=5400,
        ecc_errors_uncorrected=0,
        energy_mj=9_000_000,
        processes=(GpuProcess(101, 40 * GIB), GpuProcess(102, None)),
    )
    assert host.gpus[1].processes == ()
    assert host.gpu(1) is host.gpus[1] and host.gpu(7) is None
    # JSON shape
    d = host.to_dict()
    assert d["available"] is True
    assert d["gpus"][0]["processes"][0] == {"pid": 101, "used_memory_bytes": 40 * GIB}


def test_init_once_across_snapshots_and_close_shuts_down() -> None:
    fake = fake_pynvml.two_gpus()
    nvml = Nvml(module=fake)
    nvml.snapshot()
    nvml.snapshot()
    assert fake.init_calls == 1
    nvml.close()
    nvml.close()
    assert fake.shutdown_calls == 1


def test_unsupported_metrics_are_none_never_an_exception() -> None:
    host = Nvml(module=fake_pynvml.unsupported_metrics()).snapshot()
    (g,) = host.gpus
    assert g.name == "NVIDIA GeForce GTX 1080" and g.uuid is not None
    assert g.mem_used_bytes == 1 * GIB and g.mem_free_bytes == 7 * GIB
    unsupported = [
        "util_gpu_pct",
        "util_mem_pct",
        "temperature_c",
        "fan_pct",
        "power_w",
        "power_limit_w",
        "sm_clock_mhz",
        "mem_clock_mhz",
        "pcie_tx_kbps",
        "pcie_rx_kbps",
        "ecc_errors_uncorrected",
        "energy_mj",
    ]
    assert {k: getattr(g, k) for k in unsupported} == dict.fromkeys(unsupported)
    assert g.processes == () and g.lost is False and g.error is None


def test_gpu_lost_mid_run() -> None:
    fake = fake_pynvml.two_gpus()
    nvml = Nvml(module=fake)
    before = nvml.snapshot()
    assert not any(g.lost for g in before.gpus)
    fake.lose(1)
    after = nvml.snapshot()
    assert after.available is True
    assert after.gpus[0].lost is False and after.gpus[0].power_w == pytest.approx(612.345)
    lost = after.gpus[1]
    assert lost.lost is True
    assert lost.error == "GPU is lost"
    assert lost.power_w is None and lost.processes == ()
    # Still named: NVML cannot say any more, the earlier snapshot could.
    assert (lost.name, lost.uuid) == (before.gpus[1].name, before.gpus[1].uuid)
    # A fresh Nvml never saw it: lost, unnamed.
    fresh = Nvml(module=fake).snapshot().gpus[1]
    assert fresh.lost is True and fresh.name is None and fresh.uuid is None


def test_gpu_lost_after_name_keeps_name() -> None:
    fake = fake_pynvml.two_gpus()
    nvml = Nvml(module=fake)

    # Lose the GPU between the name query and the rest.
    real_name = fake.nvmlDeviceGetName

    def name_then_lose(handle: object) -> str:
        out = real_name(handle)  # type: ignore[arg-type]
        fake.lose(0)
        return out

    fake.nvmlDeviceGetName = name_then_lose  # type: ignore[method-assign]
    g = nvml.snapshot().gpus[0]
    assert g.lost is True and g.name == "NVIDIA H100 80GB HBM3" and g.uuid is None


def test_handle_failure_other_than_lost_is_an_error_entry() -> None:
    fake = fake_pynvml.two_gpus()
    fake.gpus[0].handle_error = pynvml.NVML_ERROR_NO_PERMISSION
    fake.gpus[1].handle_error = pynvml.NVML_ERROR_GPU_IS_LOST
    g0, g1 = Nvml(module=fake).snapshot().gpus
    assert (g0.lost, g0.error) == (False, "Insufficient Permissions")
    assert (g1.lost, g1.error) == (True, "GPU is lost")


def test_bytes_from_older_bindings_are_decoded() -> None:
    fake = fake_pynvml.two_gpus()
    fake.driver_version = b"535.104.05"  # type: ignore[assignment]
    fake.gpus[0].name = b"Tesla T4"  # type: ignore[assignment]
    host = Nvml(module=fake).snapshot()
    assert host.driver_version == "535.104.05" and host.gpus[0].name == "Tesla T4"


def test_module_level_snapshot_uses_sys_modules_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml.two_gpus()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    host = gpu.snapshot()
    assert host.available and len(host.gpus) == 2
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)  # one-shot: init and shut down


def test_make_nvml_is_the_seam_snapshot_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml.no_gpus()
    monkeypatch.setattr(gpu, "make_nvml", lambda: Nvml(module=fake))
    assert gpu.snapshot().available is True
    assert fake.init_calls == 1


# -- processes → instances (real child processes) ---------------------------------------------


@pytest.fixture
def process_trees() -> Iterator[dict[str, list[int]]]:
    """Two real process trees: each a shell (its own session) with two `sleep` children."""
    parents = [
        subprocess.Popen(
            ["sh", "-c", "sleep 60 & sleep 60 & wait"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        trees: dict[str, list[int]] = {}
        for name, parent in zip(("inst-a", "inst-b"), parents, strict=True):
            proc = psutil.Process(parent.pid)
            children: list[psutil.Process] = []
            for _ in range(200):  # the shell forks its children right away
                children = proc.children(recursive=True)
                if len(children) == 2:
                    break
                psutil.wait_procs([], timeout=0.01)
            assert len(children) == 2, "sleep children did not start"
            trees[name] = [parent.pid, *(c.pid for c in children)]
        yield trees
    finally:
        for parent in parents:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(parent.pid, signal.SIGKILL)  # the group we created: only our children
            parent.wait(timeout=10)


def test_map_processes_with_real_child_pids(process_trees: dict[str, list[int]]) -> None:
    a_parent, a1, a2 = process_trees["inst-a"]
    _b_parent, b1, b2 = process_trees["inst-b"]
    stranger = os.getpid()  # on a GPU, but in no instance's tree
    fake = fake_pynvml.two_gpus(
        procs0=[(a1, 30 * GIB), (a2, 10 * GIB), (b1, 5 * GIB), (stranger, 1 * GIB)],
        procs1=[(a2, 20 * GIB), (b2, None)],
    )
    host = Nvml(module=fake).snapshot()
    # The trees as the daemon would walk them: psutil from each instance's root pid.
    trees = {
        name: [pids[0], *(c.pid for c in psutil.Process(pids[0]).children(recursive=True))]
        for name, pids in process_trees.items()
    }
    trees["inst-idle"] = [a_parent + 10_000_000]  # an instance with nothing on a GPU
    got = gpu.map_processes(host, trees)
    assert got == {
        "inst-a": {0: 40 * GIB, 1: 20 * GIB},
        "inst-b": {0: 5 * GIB, 1: 0},  # memory unknown on GPU 1, still listed there
        "inst-idle": {},
    }


def test_map_processes_ignores_lost_gpus_and_no_driver() -> None:
    assert gpu.map_processes(HostGpus(False, "x", None, None, (), 0.0), {"a": [1]}) == {"a": {}}
    lost = HostGpus(True, None, None, None, (GpuSnapshot(index=0, lost=True),), 0.0)
    assert gpu.map_processes(lost, {"a": [1]}) == {"a": {}}


# -- energy -----------------------------------------------------------------------------------


def _host(ts: float, *gpus: GpuSnapshot) -> HostGpus:
    return HostGpus(True, None, "550", "12.4", gpus, ts)


def _g(
    energy_mj: int | None = None,
    power_w: float | None = None,
    *,
    index: int = 0,
    uuid: str = "GPU-a",
    lost: bool = False,
) -> GpuSnapshot:
    return GpuSnapshot(index=index, uuid=uuid, energy_mj=energy_mj, power_w=power_w, lost=lost)


def test_energy_from_counter_deltas() -> None:
    m = EnergyMeter()
    assert m.method(0) == "none" and m.joules(0) == 0.0
    m.update(_host(0.0, _g(1_000_000, 100.0)))
    assert m.joules(0) == 0.0  # the first reading is the baseline
    assert m.method(0) == "counter"
    m.update(_host(10.0, _g(1_500_000, 100.0)))
    m.update(_host(20.0, _g(3_100_000, 100.0)))
    # Counter wins over power: 2100 J, not 100 W × 20 s = 2000 J.
    assert m.joules(0) == pytest.approx(2100.0)
    assert m.wh(0) == pytest.approx(2100.0 / 3600.0)
    assert m.indices() == [0] and m.resets(0) == 0


def test_energy_counter_reset_counts_energy_since_restart() -> None:
    m = EnergyMeter()
    m.update(_host(0.0, _g(50_000_000)))
    m.update(_host(10.0, _g(51_000_000)))  # +1000 J
    m.update(_host(20.0, _g(400_000)))  # driver reloaded: counter restarted at 0, now 400 J
    m.update(_host(30.0, _g(900_000)))  # +500 J
    assert m.joules(0) == pytest.approx(1000.0 + 400.0 + 500.0)
    assert m.resets(0) == 1


def test_energy_counter_wrap_through_fake() -> None:
    fake = fake_pynvml.two_gpus()
    nvml = Nvml(module=fake)
    m = EnergyMeter()
    fake.gpus[0].energy_mj = 2**64 - 300_000  # 300 J before the 64-bit counter wraps
    m.update(nvml.snapshot())
    fake.gpus[0].energy_mj = 200_000  # wrapped: 300 J + 200 J later
    m.update(nvml.snapshot())
    assert m.joules(0) == pytest.approx(500.0)
    assert m.method(0) == "counter" and m.resets(0) == 1


def test_energy_falls_back_to_power_integration() -> None:
    m = EnergyMeter()
    m.update(_host(0.0, _g(None, 100.0)))
    m.update(_host(10.0, _g(None, 300.0)))  # trapezoid: (100 + 300) / 2 × 10 = 2000 J
    m.update(_host(12.0, _g(None, None)))  # no power sample: nothing counted, baseline dropped
    m.update(_host(14.0, _g(None, 50.0)))
    m.update(_host(16.0, _g(None, 50.0)))  # + 100 J
    assert m.joules(0) == pytest.approx(2100.0)
    assert m.method(0) == "power"


def test_energy_method_per_gpu_and_switching_does_not_double_count() -> None:
    m = EnergyMeter()
    m.update(_host(0.0, _g(1_000_000, 100.0, index=0), _g(None, 200.0, index=1, uuid="GPU-b")))
    m.update(_host(10.0, _g(2_000_000, 100.0, index=0), _g(None, 200.0, index=1, uuid="GPU-b")))
    assert (m.method(0), m.method(1)) == ("counter", "power")
    assert m.joules(0) == pytest.approx(1000.0)
    assert m.joules(1) == pytest.approx(2000.0)
    # GPU 0's counter disappears for one interval (power used), then comes back.
    m.update(_host(20.0, _g(None, 100.0, index=0)))
    assert m.method(0) == "power"
    assert m.joules(0) == pytest.approx(2000.0)  # + 100 W × 10 s
    m.update(_host(30.0, _g(9_000_000, 100.0, index=0)))  # new baseline, not +7000 J
    m.update(_host(40.0, _g(9_500_000, 100.0, index=0)))
    assert m.joules(0) == pytest.approx(2500.0)
    assert m.method(0) == "counter"


def test_energy_lost_gpu_and_replaced_board_restart_the_baseline() -> None:
    m = EnergyMeter()
    m.update(_host(0.0, _g(1_000_000)))
    m.update(_host(10.0, _g(2_000_000)))  # +1000 J
    m.update(_host(20.0, _g(lost=True)))
    m.update(_host(30.0, _g(7_000_000)))  # back: new baseline
    m.update(_host(40.0, _g(7_100_000)))  # +100 J
    m.update(_host(50.0, _g(1_000, uuid="GPU-new")))  # another board at index 0: baseline
    m.update(_host(60.0, _g(11_000, uuid="GPU-new")))  # +10 J
    assert m.joules(0) == pytest.approx(1110.0)
    assert m.resets(0) == 0


def test_energy_meter_over_fake_snapshots() -> None:
    fake = fake_pynvml.FakePynvml([FakeGpu(energy_mj=0), FakeGpu(uuid="GPU-x", energy_mj=0)])
    fake.gpus[1].unsupported = {"nvmlDeviceGetTotalEnergyConsumption"}
    clock = iter([100.0, 110.0])
    nvml = Nvml(module=fake, clock=lambda: next(clock))
    m = EnergyMeter()
    m.update(nvml.snapshot())
    fake.gpus[0].energy_mj = 600_000
    m.update(nvml.snapshot())
    assert m.method(0) == "counter" and m.joules(0) == pytest.approx(600.0)
    assert m.method(1) == "power" and m.joules(1) == pytest.approx(600.0)  # 60 W × 10 s


def test_fake_is_not_the_real_module() -> None:
    # Guard against a test accidentally mutating the real pynvml through the fake.
    fake = FakePynvml()
    assert fake is not pynvml and not hasattr(pynvml, "gpus")
