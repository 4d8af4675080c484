"""``studioctl gpus`` through typer's CliRunner, with the fake pynvml behind gpu.make_nvml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fakes import fake_pynvml
from fakes.fake_pynvml import GIB, FakePynvml
from studioctl import gpu
from studioctl.cli.app import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))


def _use(monkeypatch: pytest.MonkeyPatch, fake: FakePynvml) -> FakePynvml:
    monkeypatch.setattr(gpu, "make_nvml", lambda: gpu.Nvml(module=fake))
    return fake


# -- this host: no driver (the real pynvml, no fake) ------------------------------------------


def test_no_driver_on_this_host_is_a_clean_message_and_exit_0() -> None:
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "No NVIDIA GPU/driver: NVIDIA driver not found (libnvidia-ml.so.1).\n"
    assert "Traceback" not in result.output


def test_no_driver_json() -> None:
    result = runner.invoke(app, ["gpus", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["available"] is False
    assert data["reason"] == "NVIDIA driver not found (libnvidia-ml.so.1)"
    assert data["gpus"] == []


def test_no_driver_watch_says_it_once_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _use(monkeypatch, fake_pynvml.no_driver())
    result = runner.invoke(app, ["gpus", "--watch", "--interval", "0.1"])
    assert result.exit_code == 0
    assert result.stdout.count("No NVIDIA GPU/driver") == 1
    assert fake.init_calls == 1


# -- with the fake ----------------------------------------------------------------------------

TWO_GPUS_TABLE = """\
NVIDIA driver 550.54.15, CUDA 12.4, 2 GPUs
GPU  NAME                   UTIL  MEMORY         TEMP  FAN  POWER      SM CLOCK  PROCS
0    NVIDIA H100 80GB HBM3  87%   71.0/80.0 GiB  64C   0%   612/700 W  1980 MHz  2
1    NVIDIA H100 80GB HBM3  3%    2.0/80.0 GiB   38C   30%  71/700 W   345 MHz   1

GPU  PID   MEMORY
0    4242  40.0 GiB
0    4250  512 MiB
1    4243  ?
"""


def test_table_for_two_gpus_with_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(
        monkeypatch,
        fake_pynvml.two_gpus(
            procs0=[(4242, 40 * GIB), (4250, 512 * 1024**2)], procs1=[(4243, None)]
        ),
    )
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 0, result.output
    assert result.stdout == TWO_GPUS_TABLE


def test_unsupported_metrics_show_dashes(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, fake_pynvml.unsupported_metrics())
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[2].split()
    # GPU, name (4 words), util, memory (2), temp, fan, power, clock, procs
    assert row == [
        "0",
        "NVIDIA",
        "GeForce",
        "GTX",
        "1080",
        "-",
        "1.0/8.0",
        "GiB",
        "-",
        "-",
        "-",
        "-",
        "0",
    ]


def test_lost_and_unreadable_gpus_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _use(monkeypatch, fake_pynvml.two_gpus())
    fake.lose(1)
    fake.gpus[0].handle_error = fake.NVML_ERROR_NO_PERMISSION
    result = runner.invoke(app, ["gpus"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["0", "?", "ERROR:", "Insufficient", "Permissions"]
    # Lost before this one-shot read could name it.
    assert lines[3].split() == ["1", "?", "LOST:", "GPU", "is", "lost"]


def test_zero_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, fake_pynvml.no_gpus())
    result = runner.invoke(app, ["gpus"])
    assert result.stdout == "NVIDIA driver 550.54.15, CUDA 12.4: no GPUs.\n"


def test_json_with_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _use(monkeypatch, fake_pynvml.two_gpus())
    fake.lose(1)
    result = runner.invoke(app, ["gpus", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["available"] is True and data["cuda_version"] == "12.4"
    g0, g1 = data["gpus"]
    assert g0["power_w"] == pytest.approx(612.345)
    assert g0["mem_total_bytes"] == 80 * GIB
    assert g0["processes"] == [{"pid": 4242, "used_memory_bytes": 70 * GIB}]
    assert g1["lost"] is True and g1["power_w"] is None
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)


def test_watch_refreshes_with_one_nvml_session(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _use(monkeypatch, fake_pynvml.two_gpus())
    temps = iter([70, 71, 72])
    real = fake.nvmlDeviceGetTemperature

    def warming(handle: Any, sensor: int) -> int:  # GPU 0 warms up by 1 C per refresh
        if handle.index == 0:
            fake.gpus[0].temperature = next(temps)
        return real(handle, sensor)

    fake.nvmlDeviceGetTemperature = warming  # type: ignore[method-assign]

    result = runner.invoke(app, ["gpus", "--watch", "--interval", "0.1", "--count", "3"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("Ctrl+C to stop") == 3
    rows = [line.split() for line in out.splitlines() if line.startswith("0    NVIDIA")]
    assert [row[8] for row in rows] == [
        "70C",
        "71C",
        "72C",
    ]
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)


def test_watch_json_is_one_object_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, fake_pynvml.two_gpus())
    result = runner.invoke(app, ["gpus", "-w", "--json", "-n", "0.1", "-c", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert [len(json.loads(line)["gpus"]) for line in lines] == [2, 2]


def test_watch_ends_cleanly_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _use(monkeypatch, fake_pynvml.two_gpus())

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("studioctl.cli.gpu_cmds.time.sleep", interrupt)
    result = runner.invoke(app, ["gpus", "--watch"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Ctrl+C to stop") == 1
    assert fake.shutdown_calls == 1  # NVML shut down on the way out


@pytest.mark.parametrize("args", [["--interval", "0"], ["--count", "0"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, ["gpus", "--watch", *args])
    assert result.exit_code == 2


def test_help_does_not_import_pynvml(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.argv = ['studioctl', 'gpus', '--help']\n"
        "from studioctl.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('PYNVML', 'pynvml' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"STUDIOCTL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert "Usage: studioctl gpus" in proc.stdout, proc.stderr
    assert "PYNVML False" in proc.stdout


def test_watch_shows_a_gpu_lost_mid_run_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _use(monkeypatch, fake_pynvml.two_gpus())
    # The GPU is lost between the two frames.
    monkeypatch.setattr("studioctl.cli.gpu_cmds.time.sleep", lambda _s: fake.lose(1))
    result = runner.invoke(app, ["gpus", "--watch", "--count", "2"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("1    NVIDIA")]
    assert rows[0][5] == "3%"
    assert rows[1][5:] == ["LOST:", "GPU", "is", "lost"]
