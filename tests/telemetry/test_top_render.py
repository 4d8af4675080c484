"""`studioctl top` rendering: a fixed telemetry snapshot to a fixed-size console, as text.

The expected screens are checked in under ``data/``; after an intended change of the layout,
regenerate them with ``python tests/telemetry/test_top_render.py`` and review the diff.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from studioctl.ui import render_top, top_lines

DATA = Path(__file__).parent / "data"
SNAPSHOT = DATA / "top_snapshot.json"


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SNAPSHOT.read_text())
    return data


def screen(snap: dict[str, Any], width: int = 120, height: int = 30) -> str:
    console = Console(
        record=True, width=width, height=height, color_system=None, file=io.StringIO()
    )
    console.print(render_top(snap, width, height))
    return console.export_text()


def test_top_screen_matches_the_checked_in_text(utc: None) -> None:
    expected = (DATA / "top_120x30.txt").read_text()
    got = screen(load())
    assert got == expected, "run `python tests/telemetry/test_top_render.py` and review the diff"
    lines = got.splitlines()
    assert all(len(line) <= 120 for line in lines)
    assert "22:13:20" in lines[0]  # 1700000000 is 2023-11-14 22:13:20 UTC


def test_top_screen_content() -> None:
    got = screen(load())
    assert "3 GPUs, driver 550.54.15, CUDA 12.4" in got
    assert "87%" in got and "71.0 GiB / 80.0 GiB" in got and "612/700 W" in got
    assert "LOST: GPU is lost" in got
    row = next(line for line in got.splitlines() if line.startswith("llama-8b-1"))
    for cell in ("ready", "70.0 GiB", "12", "3", "1520.5", "880.2", "42%", "0.081s", "536 W"):
        assert cell in row, (cell, row)
    assert "gateway: 42.5 req/s, 15/128 in flight, 10.2k answered" in got
    assert "rejections: limit_rpm 12, limit_concurrent 3, model_not_found 1" in got
    assert "in flight by tenant: acme 10, beta 5" in got


def test_top_screen_without_gpus_or_gateway() -> None:
    snap = load()
    snap["gpu"] = {"available": False, "reason": "NVIDIA driver not found (libnvidia-ml.so.1)"}
    snap["gpus"] = []
    snap["gateway"] = None
    got = screen(snap)
    assert "No NVIDIA GPU: NVIDIA driver not found (libnvidia-ml.so.1)" in got
    assert "gateway: off" in got and "rejections" not in got
    assert "█" not in got


def test_top_screen_fits_a_short_terminal() -> None:
    snap = load()
    base = snap["instances"][0]
    snap["instances"] = []
    for n in range(40):
        inst = copy.deepcopy(base)
        inst["id"] = f"llama-8b-{n + 1}"
        snap["instances"].append(inst)
    got = screen(snap, width=100, height=24)
    lines = got.splitlines()
    assert len(lines) <= 24
    assert all(len(line) <= 100 for line in lines)
    shown = [line for line in lines if line.startswith("llama-8b-")]
    assert shown and f"… {40 - len(shown)} more instance(s)" in got


def test_plain_lines_for_pipes() -> None:
    lines = top_lines(load())
    assert lines[1] == "gateway: 42.5 req/s, 15/128 in flight, 10.2k answered"
    assert lines[2].split() == ["gpu", "name", "util", "memory", "power", "temp"]
    assert lines[3].split()[:3] == ["0", "NVIDIA", "H100"]
    assert "2.0 GiB/80.0 GiB" in lines[4] and lines[5].split()[-1] == "LOST"
    inst = next(line for line in lines if line.startswith("qwen-7b-3"))
    assert inst.split()[:4] == ["qwen-7b-3", "qwen-7b", "loading", "1.0"]
    assert "\x1b" not in "\n".join(lines)


if __name__ == "__main__":  # regenerate the expected screen
    os.environ["TZ"] = "UTC"
    time.tzset()
    (DATA / "top_120x30.txt").write_text(screen(load()))
    sys.stdout.write(screen(load()))
