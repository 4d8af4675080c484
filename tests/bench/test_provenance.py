"""The document's ``environment``: GPU names and driver from an NVML reading (the fake pynvml
behind ``studioctl.gpu``, in the shapes the daemon's telemetry and ``studioctl gpus`` give),
and the engine's version from its own ``GET /version`` on real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fake_openai import fake_server
from fakes import fake_pynvml
from fakes.fake_pynvml import FakePynvml
from helpers import free_port
from standin.helpers import StandinProcess, running_standin
from studioctl import gpu
from studioctl.bench import provenance
from studioctl.bench.report import ENVIRONMENT, TargetInfo
from studioctl.telemetry.figures import gpu_dict, host_dict

H100 = "NVIDIA H100 80GB HBM3"


def telemetry_snapshot(fake: FakePynvml) -> dict[str, object]:
    """The ``gpu`` and ``gpus`` of ``GET /telemetry``, built by telemetry's own functions."""
    with gpu.Nvml(module=fake) as nvml:
        host = nvml.snapshot()
    meter = gpu.EnergyMeter()
    return {"gpu": host_dict(host), "gpus": [gpu_dict(g, meter) for g in host.gpus]}


def test_gpus_and_driver_from_the_daemons_telemetry() -> None:
    snap = telemetry_snapshot(fake_pynvml.two_gpus())
    assert provenance.from_telemetry(snap) == ([H100, H100], "550.54.15")
    assert provenance.from_telemetry(snap, only=[1]) == ([H100], "550.54.15")  # the instance's


@pytest.mark.parametrize("fake", [fake_pynvml.no_driver, fake_pynvml.no_gpus])
def test_no_driver_or_no_gpus_is_null(fake: object) -> None:
    assert callable(fake)
    assert provenance.from_telemetry(telemetry_snapshot(fake())) == (None, None)
    assert provenance.from_telemetry({}) == (None, None)  # a daemon that has not sampled


def test_this_hosts_gpus_for_a_loopback_url_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "make_nvml", lambda: gpu.Nvml(module=fake_pynvml.two_gpus()))
    port = free_port()  # nothing listens: no engine version
    env = provenance.environment(None, TargetInfo("url", f"http://127.0.0.1:{port}", "m"))
    assert set(env) == set(ENVIRONMENT)
    assert (env["gpu_names"], env["gpu_driver"]) == ([H100, H100], "550.54.15")
    assert env["recipe_id"] is env["engine"] is env["engine_version"] is None
    remote = provenance.environment(None, TargetInfo("url", "http://192.0.2.1:9", "m"))
    assert remote["gpu_names"] is None and remote["gpu_driver"] is None


def test_this_host_without_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "make_nvml", lambda: gpu.Nvml(module=fake_pynvml.no_driver()))
    assert provenance.local_gpus() == (None, None)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    log: Path = tmp_path_factory.mktemp("standin") / "engine.log"
    with running_standin("vllm", log, STANDIN_ACCESS_LOG=0) as s:
        yield s


@pytest.mark.integration
def test_the_engine_version_is_the_engines_own(standin: StandinProcess) -> None:
    from standin.standin_engine import VERSIONS

    assert provenance.engine_version(standin.url) == VERSIONS["vllm"]
    assert provenance.engine_version(standin.url + "/") == VERSIONS["vllm"]


def test_no_version_route_or_nothing_listening_is_null() -> None:
    with fake_server(["ok"]) as server:  # answers 404 to GET
        assert provenance.engine_version(server.url) is None
    assert provenance.engine_version(f"http://127.0.0.1:{free_port()}", timeout=1) is None
