"""A fake ``pynvml`` module: the NVML functions ``studioctl.gpu`` calls, over scripted GPUs.

It is a real module object (``types.ModuleType``) carrying the REAL exception classes
(``NVMLError``, ``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``, ...), the real ``NVML_*``
constants and the real ctypes structures of the installed ``pynvml``, so the production code
cannot tell it is faked. Inject it with ``Nvml(module=fake)`` or put it in
``sys.modules["pynvml"]``.

Scenarios (functions at the bottom): :func:`no_driver`, :func:`driver_not_loaded`,
:func:`no_gpus`, :func:`two_gpus` (with processes), :func:`unsupported_metrics`; a GPU lost
mid-run is ``fake.lose(index)``; an energy counter wrap or reset is setting
``fake.gpus[i].energy_mj``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

# Every device query the fake knows, by pynvml function name. A name in
# FakeGpu.unsupported makes that query raise NVMLError_NotSupported.
DEVICE_QUERIES = (
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetFanSpeed",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetComputeRunningProcesses",
)

GIB = 1024**3


@dataclass
class FakeGpu:
    """One scripted GPU. Units as NVML reports them (mW, MHz, KB/s, mJ, bytes)."""

    name: str = "NVIDIA A100-SXM4-80GB"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    util_gpu: int = 0
    util_mem: int = 0
    mem_total: int = 80 * GIB
    mem_used: int = 0
    temperature: int = 30
    fan: int = 0
    power_mw: int = 60_000
    power_limit_mw: int = 400_000
    sm_clock: int = 1410
    mem_clock: int = 1593
    pcie_tx: int = 0
    pcie_rx: int = 0
    ecc_uncorrected: int = 0
    energy_mj: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False
    handle_error: int | None = None  # an NVML_ERROR_* code nvmlDeviceGetHandleByIndex raises


@dataclass(frozen=True)
class _Handle:
    index: int


class FakePynvml(types.ModuleType):
    """A module object that behaves like ``pynvml`` over :attr:`gpus`."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: int | None = None,
        driver_version: str = "550.54.15",
        cuda_version: int = 12040,
    ) -> None:
        super().__init__("pynvml")
        # The real exception classes and constants, so `except pynvml.NVMLError_…` matches.
        for attr in dir(_real):
            if attr.startswith(("NVML_", "NVMLError", "c_nvml")):
                setattr(self, attr, getattr(_real, attr))
        self.gpus: list[FakeGpu] = list(gpus or [])
        self.init_error = init_error
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.init_calls = 0
        self.shutdown_calls = 0
        self.initialized = False

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def error(code: int) -> Exception:
        """The real pynvml exception for an NVML_ERROR_* code (a subclass of NVMLError)."""
        err: Exception = _real.NVMLError(code)
        return err

    def lose(self, index: int) -> None:
        """The GPU falls off the bus: from now on its queries raise NVMLError_GpuIsLost."""
        self.gpus[index].lost = True

    def _require_init(self) -> None:
        if not self.initialized:
            raise self.error(_real.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: _Handle, query: str) -> FakeGpu:
        self._require_init()
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise self.error(_real.NVML_ERROR_GPU_IS_LOST)
        if query in gpu.unsupported:
            raise self.error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    # -- init ------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.error(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._require_init()
        self.shutdown_calls += 1
        self.initialized = False

    # -- system ----------------------------------------------------------------------------

    def nvmlSystemGetDriverVersion(self) -> str:
        self._require_init()
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._require_init()
        return self.cuda_version

    def nvmlDeviceGetCount(self) -> int:
        self._require_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._require_init()
        if not 0 <= index < len(self.gpus):
            raise self.error(_real.NVML_ERROR_INVALID_ARGUMENT)
        code = self.gpus[index].handle_error
        if code is not None:
            raise self.error(code)
        return _Handle(index)

    # -- device ----------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        g = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return _real.c_nvmlUtilization_t(gpu=g.util_gpu, memory=g.util_mem)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> Any:
        g = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return _real.c_nvmlMemory_t(
            total=g.mem_total, free=g.mem_total - g.mem_used, used=g.mem_used
        )

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        g = self._gpu(handle, "nvmlDeviceGetTemperature")
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise self.error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return g.temperature

    def nvmlDeviceGetFanSpeed(self, handle: _Handle) -> int:
        return self._gpu(handle, "nvmlDeviceGetFanSpeed").fan

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock_type: int) -> int:
        g = self._gpu(handle, "nvmlDeviceGetClockInfo")
        clocks = {_real.NVML_CLOCK_SM: g.sm_clock, _real.NVML_CLOCK_MEM: g.mem_clock}
        if clock_type not in clocks:
            raise self.error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return clocks[clock_type]

    def nvmlDeviceGetPcieThroughput(self, handle: _Handle, counter: int) -> int:
        g = self._gpu(handle, "nvmlDeviceGetPcieThroughput")
        values = {
            _real.NVML_PCIE_UTIL_TX_BYTES: g.pcie_tx,
            _real.NVML_PCIE_UTIL_RX_BYTES: g.pcie_rx,
        }
        if counter not in values:
            raise self.error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return values[counter]

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, error_type: int, counter: int) -> int:
        g = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        if error_type != _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return 0
        return g.ecc_uncorrected

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        g = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        # As pynvml builds them: friendly objects; usedGpuMemory None when not available.
        return [
            _real.nvmlFriendlyObject(
                {
                    "pid": pid,
                    "usedGpuMemory": used,
                    "gpuInstanceId": 0xFFFFFFFF,
                    "computeInstanceId": 0xFFFFFFFF,
                }
            )
            for pid, used in g.processes
        ]


# -- scenarios --------------------------------------------------------------------------------


def no_driver() -> FakePynvml:
    """No NVIDIA driver: nvmlInit raises NVMLError_LibraryNotFound (as on this machine)."""
    return FakePynvml(init_error=_real.NVML_ERROR_LIBRARY_NOT_FOUND)


def driver_not_loaded() -> FakePynvml:
    return FakePynvml(init_error=_real.NVML_ERROR_DRIVER_NOT_LOADED)


def no_gpus() -> FakePynvml:
    """A driver, but zero GPUs."""
    return FakePynvml([])


def two_gpus(
    procs0: list[tuple[int, int | None]] | None = None,
    procs1: list[tuple[int, int | None]] | None = None,
) -> FakePynvml:
    """Two busy H100s with compute processes (pid, bytes) on each."""
    return FakePynvml(
        [
            FakeGpu(
                name="NVIDIA H100 80GB HBM3",
                uuid="GPU-1d3c9c1e-0000-4000-8000-000000000000",
                util_gpu=87,
                util_mem=41,
                mem_total=80 * GIB,
                mem_used=71 * GIB,
                temperature=64,
                fan=0,
                power_mw=612_345,
                power_limit_mw=700_000,
                sm_clock=1980,
                mem_clock=2619,
                pcie_tx=1200,
                pcie_rx=5400,
                ecc_uncorrected=0,
                energy_mj=9_000_000,
                processes=list(procs0 if procs0 is not None else [(4242, 70 * GIB)]),
            ),
            FakeGpu(
                name="NVIDIA H100 80GB HBM3",
                uuid="GPU-1d3c9c1e-0000-4000-8000-000000000001",
                util_gpu=3,
                util_mem=0,
                mem_total=80 * GIB,
                mem_used=2 * GIB,
                temperature=38,
                fan=30,
                power_mw=71_000,
                power_limit_mw=700_000,
                sm_clock=345,
                mem_clock=2619,
                energy_mj=5_000_000,
                processes=list(procs1 if procs1 is not None else [(4243, 1 * GIB)]),
            ),
        ]
    )


def unsupported_metrics() -> FakePynvml:
    """A GPU (a consumer card) on which everything but name, UUID and memory is unsupported."""
    keep = {"nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetMemoryInfo"}
    return FakePynvml(
        [
            FakeGpu(
                name="NVIDIA GeForce GTX 1080",
                uuid="GPU-aaaaaaaa-0000-4000-8000-000000000000",
                mem_total=8 * GIB,
                mem_used=1 * GIB,
                unsupported=set(DEVICE_QUERIES) - keep,
            )
        ]
    )


def gpus(n: int) -> FakePynvml:
    """``n`` idle A100s, no processes (placement only needs them to exist)."""
    return FakePynvml([FakeGpu(uuid=f"GPU-00000000-0000-4000-8000-{i:012d}") for i in range(n)])
