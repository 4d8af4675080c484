"""benchmarks/swap_trace.py with tiny numbers, so that it cannot rot: a real daemon, three
stand-in models that do not fit together, a few requests of the trace, the fair policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "swap_trace.py"
REQUESTS = 8


def test_the_benchmark_replays_the_trace_and_prints_the_table() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env["PYTHONPATH"] = str(SCRIPT.parents[1] / "src")
    args = ["--policies", "fair", "--requests", str(REQUESTS), "--clients", "2",
            "--load-s", "0.3", "--service-s", "0.1", "--max-wait-s", "3",
            "--min-resident-s", "1", "--json"]  # fmt: skip
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    lines = r.stdout.splitlines()
    assert lines[0].startswith("swap trace ABAACABC"), lines
    header = lines.index(next(ln for ln in lines if ln.startswith("policy")))
    assert lines[header].split() == ["policy", "requests", "swaps", "loads", "p50_s",
                                     "p95_s", "max_s", "failed", "wall_s"]  # fmt: skip
    assert lines[header + 1].split()[0] == "fair"
    [row] = json.loads(lines[-1])["rows"]
    assert (row["policy"], row["requests"], row["failed"]) == ("fair", REQUESTS, 0)
    # A B A A C A B C: all three models are asked for and only one fits at a time.
    assert row["loads"] >= 3 and row["swaps"] >= row["loads"] - 1, row
    assert 0 < row["p50_s"] <= row["p95_s"] <= row["max_s"] <= row["wall_s"], row
