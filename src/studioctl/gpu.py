"""GPU telemetry through NVML: the only module that imports ``pynvml`` (nvidia-ml-py).

Three rules, after gpustat's ``nvml.py``:

- every NVML query that fails (``NVMLError`` and its subclasses, such as
  ``NVMLError_NotSupported``) becomes ``None``, never an exception;
- a GPU that fell off the bus (``NVMLError_GpuIsLost``) becomes an entry with ``lost=True``;
- a host without an NVIDIA driver gives ``HostGpus(available=False, reason=...)``, logged once,
  never a traceback (the machines this project is developed on are such hosts).

The seam for tests is :func:`make_nvml` (what :func:`snapshot` and ``studioctl gpus`` use) and
the ``module`` argument of :class:`Nvml`: tests pass a fake pynvml module object, so the code
here cannot tell it is faked.

Energy (:class:`EnergyMeter`) comes from the driver's total-energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver was loaded); where a GPU
does not support it, from integrating sampled power draw.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Reasons given when NVML cannot start (HostGpus.reason).
NO_DRIVER = "NVIDIA driver not found (libnvidia-ml.so.1)"
DRIVER_NOT_LOADED = "NVIDIA driver not loaded"
NO_BINDINGS = "the NVML Python bindings (nvidia-ml-py) are not installed"

# The energy counter is an unsigned 64-bit count of millijoules.
_ENERGY_COUNTER_WRAP_MJ = 2**64


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU. ``used_memory_bytes`` is None where the driver cannot tell."""

    pid: int
    used_memory_bytes: int | None


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU at one moment. Every reading is None when the GPU or driver does not support it.

    ``lost`` is True when the GPU fell off the bus (NVML says "GPU is lost"); ``error`` says
    why a GPU has no readings at all (lost, or its handle could not be opened).
    """

    index: int
    name: str | None = None
    uuid: str | None = None
    lost: bool = False
    util_gpu_pct: float | None = None
    util_mem_pct: float | None = None
    mem_total_bytes: int | None = None
    mem_used_bytes: int | None = None
    mem_free_bytes: int | None = None
    temperature_c: float | None = None
    fan_pct: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    pcie_tx_kbps: int | None = None  # KB/s, as NVML reports PCIe throughput
    pcie_rx_kbps: int | None = None
    ecc_errors_uncorrected: int | None = None  # volatile: since the driver was loaded
    energy_mj: int | None = None  # total energy counter, millijoules since driver load
    processes: tuple[GpuProcess, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HostGpus:
    """Every GPU of the host at one moment (``ts``: wall clock, seconds)."""

    available: bool
    reason: str | None
    driver_version: str | None
    cuda_version: str | None
    gpus: tuple[GpuSnapshot, ...]
    ts: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape of ``studioctl gpus --json``)."""
        return dataclasses.asdict(self)

    def gpu(self, index: int) -> GpuSnapshot | None:
        return next((g for g in self.gpus if g.index == index), None)


class _GpuLost(Exception):
    """Raised inside :meth:`Nvml._read_gpu` when a query says the GPU is lost."""


class Nvml:
    """Owns NVML init/shutdown; :meth:`snapshot` reads every GPU.

    ``module`` is the pynvml module to use; None imports ``pynvml`` when first needed. NVML is
    initialised on the first snapshot and kept until :meth:`close` (a watch loop or the daemon
    keeps one ``Nvml`` for its lifetime). When NVML cannot start, each snapshot tries again
    (a driver may be loaded later) but the reason is logged only once.
    """

    def __init__(self, module: Any | None = None, *, clock: Callable[[], float] = time.time):
        self._module = module
        self._clock = clock
        self._initialized = False
        self._logged_reason: str | None = None
        # index → (name, uuid) last read: a GPU lost mid-run is still named in later snapshots
        self._known: dict[int, tuple[str | None, str | None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _load(self) -> Any:
        if self._module is None:
            import pynvml  # the official nvidia-ml-py bindings; loads no library until nvmlInit

            self._module = pynvml
        return self._module

    def _start(self) -> tuple[Any, str | None]:
        """Initialise NVML if needed. Returns (module, reason it is unavailable or None)."""
        try:
            m = self._load()
        except ImportError:
            return None, NO_BINDINGS
        if self._initialized:
            return m, None
        try:
            m.nvmlInit()
        except m.NVMLError as exc:
            return m, _init_failure_reason(m, exc)
        except OSError as exc:  # a broken libnvidia-ml, as the dynamic loader saw it
            return m, f"NVML could not be loaded: {exc}"
        self._initialized = True
        self._logged_reason = None
        return m, None

    def close(self) -> None:
        """Shut NVML down (if this object started it). Safe to call more than once."""
        if not self._initialized:
            return
        self._initialized = False
        m: Any = self._module
        try:
            m.nvmlShutdown()
        except m.NVMLError as exc:
            log.debug("nvmlShutdown failed: %s", exc)

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> HostGpus:
        """Read every GPU. Never raises for unsupported metrics, a missing driver or a lost GPU."""
        m, reason = self._start()
        if reason is not None:
            if reason != self._logged_reason:
                log.info("no GPU telemetry: %s", reason)
                self._logged_reason = reason
            return HostGpus(False, reason, None, None, (), self._clock())
        driver = _text(_query(m, m.nvmlSystemGetDriverVersion))
        cuda = _cuda_version(_query(m, m.nvmlSystemGetCudaDriverVersion))
        try:
            count = int(m.nvmlDeviceGetCount())
        except m.NVMLError as exc:
            return HostGpus(
                False, f"NVML could not count GPUs: {exc}", driver, cuda, (), self._clock()
            )
        gpus = tuple(self._read_gpu(m, i) for i in range(count))
        return HostGpus(True, None, driver, cuda, gpus, self._clock())

    def device_count(self) -> int:
        """How many GPUs NVML sees; 0 without a driver (or when it cannot count them)."""
        m, reason = self._start()
        if reason is not None:
            return 0
        try:
            return max(0, int(m.nvmlDeviceGetCount()))
        except m.NVMLError:
            return 0

    def _read_gpu(self, m: Any, index: int) -> GpuSnapshot:
        known_name, known_uuid = self._known.get(index, (None, None))
        try:
            handle = m.nvmlDeviceGetHandleByIndex(index)
        except m.NVMLError as exc:
            lost = _is_lost(m, exc)
            return GpuSnapshot(
                index=index, name=known_name, uuid=known_uuid, lost=lost, error=str(exc)
            )
        name: str | None = None
        uuid: str | None = None
        try:
            name = _text(_query(m, m.nvmlDeviceGetName, handle, lost_raises=True))
            uuid = _text(_query(m, m.nvmlDeviceGetUUID, handle, lost_raises=True))
            snap = self._read_metrics(m, index, handle, name, uuid)
        except _GpuLost as exc:
            # A GPU that fell off the bus mid-run: still named (from an earlier read when the
            # driver can no longer say), no readings.
            return GpuSnapshot(
                index=index,
                name=name or known_name,
                uuid=uuid or known_uuid,
                lost=True,
                error=str(exc),
            )
        self._known[index] = (name, uuid)
        return snap

    def _read_metrics(
        self, m: Any, index: int, handle: Any, name: str | None, uuid: str | None
    ) -> GpuSnapshot:
        def q(fn: Callable[..., Any], *args: Any) -> Any:
            return _query(m, fn, handle, *args, lost_raises=True)

        util = q(m.nvmlDeviceGetUtilizationRates)
        mem = q(m.nvmlDeviceGetMemoryInfo)
        procs = q(m.nvmlDeviceGetComputeRunningProcesses)
        return GpuSnapshot(
            index=index,
            name=name,
            uuid=uuid,
            lost=False,
            util_gpu_pct=_num(getattr(util, "gpu", None)),
            util_mem_pct=_num(getattr(util, "memory", None)),
            mem_total_bytes=_int(getattr(mem, "total", None)),
            mem_used_bytes=_int(getattr(mem, "used", None)),
            mem_free_bytes=_int(getattr(mem, "free", None)),
            temperature_c=_num(q(m.nvmlDeviceGetTemperature, m.NVML_TEMPERATURE_GPU)),
            fan_pct=_num(q(m.nvmlDeviceGetFanSpeed)),
            power_w=_milli(q(m.nvmlDeviceGetPowerUsage)),  # NVML: milliwatts
            power_limit_w=_milli(q(m.nvmlDeviceGetEnforcedPowerLimit)),
            sm_clock_mhz=_int(q(m.nvmlDeviceGetClockInfo, m.NVML_CLOCK_SM)),
            mem_clock_mhz=_int(q(m.nvmlDeviceGetClockInfo, m.NVML_CLOCK_MEM)),
            pcie_tx_kbps=_int(q(m.nvmlDeviceGetPcieThroughput, m.NVML_PCIE_UTIL_TX_BYTES)),
            pcie_rx_kbps=_int(q(m.nvmlDeviceGetPcieThroughput, m.NVML_PCIE_UTIL_RX_BYTES)),
            ecc_errors_uncorrected=_int(
                q(
                    m.nvmlDeviceGetTotalEccErrors,
                    m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                    m.NVML_VOLATILE_ECC,
                )
            ),
            energy_mj=_int(q(m.nvmlDeviceGetTotalEnergyConsumption)),
            processes=tuple(
                GpuProcess(int(p.pid), _int(getattr(p, "usedGpuMemory", None)))
                for p in (procs or ())
            ),
        )


def make_nvml() -> Nvml:
    """The :class:`Nvml` that :func:`snapshot` and ``studioctl gpus`` use.

    This is the test seam: tests monkeypatch it to return ``Nvml(module=fake_pynvml)``.
    """
    return Nvml()


def snapshot() -> HostGpus:
    """One-shot read of every GPU (initialises and shuts NVML down around it)."""
    with make_nvml() as nvml:
        return nvml.snapshot()


def device_count() -> int:
    """How many GPUs this host has (NVML's count; 0 without a driver). Placement uses it: a
    recipe without ``gpus`` runs on every one of them."""
    with make_nvml() as nvml:
        return nvml.device_count()


def map_processes(host: HostGpus, trees: Mapping[str, Iterable[int]]) -> dict[str, dict[int, int]]:
    """GPU memory per instance: instance id → {gpu index: bytes}.

    ``trees`` maps each instance id to the pids of its process tree (the engine process and its
    descendants, recorded at launch or walked with psutil). Every instance appears in the
    result; a GPU appears under an instance when one of its pids runs there. A process whose
    memory the driver cannot report counts as 0 bytes (it is still shown on that GPU).
    """
    pid_sets = {inst: frozenset(pids) for inst, pids in trees.items()}
    out: dict[str, dict[int, int]] = {inst: {} for inst in pid_sets}
    for gpu in host.gpus:
        for proc in gpu.processes:
            for inst, pids in pid_sets.items():
                if proc.pid in pids:
                    per_gpu = out[inst]
                    per_gpu[gpu.index] = per_gpu.get(gpu.index, 0) + (proc.used_memory_bytes or 0)
    return out


# -- energy -----------------------------------------------------------------------------------

METHOD_COUNTER = "counter"  # deltas of nvmlDeviceGetTotalEnergyConsumption
METHOD_POWER = "power"  # trapezoid integration of sampled power draw
METHOD_NONE = "none"  # no energy reading yet


@dataclass
class _EnergyState:
    joules: float = 0.0
    method: str = METHOD_NONE
    uuid: str | None = None
    counter_mj: int | None = None  # last counter reading (the baseline for the next delta)
    power: tuple[float, float] | None = None  # last (ts, watts) sample
    resets: int = 0


class EnergyMeter:
    """Energy per GPU from successive :class:`HostGpus` snapshots.

    Per GPU and interval: with the energy counter at both ends, the delta (a counter that went
    down means the driver was reloaded and the counter restarted at zero, so the new reading is
    the energy since then; a reading just past 2**64 mJ is a wrap); otherwise, with power draw at
    both ends, the trapezoid of the two samples over the interval. :meth:`method` says which was
    used for the latest interval. A lost GPU, or a different GPU (UUID) at the same index,
    starts a fresh baseline; energy already counted is kept.
    """

    def __init__(self) -> None:
        self._gpus: dict[int, _EnergyState] = {}

    def update(self, host: HostGpus) -> None:
        for gpu in host.gpus:
            st = self._gpus.setdefault(gpu.index, _EnergyState())
            if gpu.uuid is not None and st.uuid is not None and gpu.uuid != st.uuid:
                st.counter_mj = None  # another board at this index: its counter is not ours
                st.power = None
            if gpu.uuid is not None:
                st.uuid = gpu.uuid
            if gpu.lost:
                st.counter_mj = None
                st.power = None
                continue
            self._advance(st, gpu, host.ts)

    def _advance(self, st: _EnergyState, gpu: GpuSnapshot, ts: float) -> None:
        power = (ts, gpu.power_w) if gpu.power_w is not None else None
        if gpu.energy_mj is not None:
            if st.counter_mj is not None:
                delta = gpu.energy_mj - st.counter_mj
                if delta < 0:
                    st.resets += 1
                    if st.counter_mj >= _ENERGY_COUNTER_WRAP_MJ // 2:
                        delta += _ENERGY_COUNTER_WRAP_MJ  # the 64-bit counter wrapped
                    else:
                        delta = gpu.energy_mj  # driver reloaded: counter restarted at 0
                st.joules += delta / 1000.0
            st.method = METHOD_COUNTER
            st.counter_mj = gpu.energy_mj
        else:
            # No counter now: a later counter reading must not be diffed against an old one
            # (that interval would be counted twice: once here by power, once by the counter).
            st.counter_mj = None
            if power is not None:
                if st.power is not None and ts > st.power[0]:
                    (t0, w0), (t1, w1) = st.power, power
                    st.joules += (w0 + w1) / 2.0 * (t1 - t0)
                st.method = METHOD_POWER
        st.power = power

    def indices(self) -> list[int]:
        return sorted(self._gpus)

    def joules(self, index: int) -> float:
        """Energy counted for GPU ``index`` since this meter first saw it (0.0 if never)."""
        st = self._gpus.get(index)
        return st.joules if st else 0.0

    def wh(self, index: int) -> float:
        return self.joules(index) / 3600.0

    def method(self, index: int) -> str:
        """``"counter"``, ``"power"`` or ``"none"``: how the latest interval was measured."""
        st = self._gpus.get(index)
        return st.method if st else METHOD_NONE

    def resets(self, index: int) -> int:
        """How many times the energy counter of GPU ``index`` went backwards (reset or wrap)."""
        st = self._gpus.get(index)
        return st.resets if st else 0


# -- helpers ----------------------------------------------------------------------------------


def _query(m: Any, fn: Callable[..., Any], *args: Any, lost_raises: bool = False) -> Any:
    """Call one NVML function; any NVMLError → None (or _GpuLost when the GPU is gone)."""
    try:
        return fn(*args)
    except m.NVMLError as exc:
        if lost_raises and _is_lost(m, exc):
            raise _GpuLost(str(exc)) from exc
        return None


def _is_lost(m: Any, exc: BaseException) -> bool:
    """GPU is lost (fell off the bus) or needs a reset before it can be used again."""
    lost_codes = {
        getattr(m, "NVML_ERROR_GPU_IS_LOST", 15),
        getattr(m, "NVML_ERROR_RESET_REQUIRED", 16),
    }
    return getattr(exc, "value", None) in lost_codes


def _init_failure_reason(m: Any, exc: BaseException) -> str:
    value = getattr(exc, "value", None)
    if value == getattr(m, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
        return NO_DRIVER
    if value == getattr(m, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
        return DRIVER_NOT_LOADED
    if value == getattr(m, "NVML_ERROR_NO_PERMISSION", 4):
        return "no permission to use the NVIDIA driver"
    return f"NVML failed to start: {exc}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):  # older nvidia-ml-py returned bytes
        return value.decode("utf-8", "replace")
    return str(value)


def _cuda_version(value: Any) -> str | None:
    """NVML's CUDA driver version integer (12040) → ``"12.4"``."""
    if not isinstance(value, int) or value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _milli(value: Any) -> float | None:
    return None if value is None else float(value) / 1000.0
