"""``studioctl gpus``: the host's GPUs through NVML, as a table or JSON.

Needs no daemon: it reads NVML directly through ``studioctl.gpu`` (imported inside the
command, so ``studioctl --help`` never loads pynvml). A host without an NVIDIA driver gets one
line saying so and exit code 0.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from studioctl.cli.app import app

if TYPE_CHECKING:
    from studioctl.gpu import GpuSnapshot, HostGpus

_CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen (ANSI), for --watch on a terminal


@app.command("gpus")
def gpus(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl+C."),
    interval: float = typer.Option(
        2.0, "--interval", "-n", min=0.1, help="Seconds between refreshes with --watch."
    ),
    count: int | None = typer.Option(
        None, "--count", "-c", min=1, help="With --watch: stop after this many refreshes."
    ),
) -> None:
    """Show the GPUs of this host: utilisation, memory, temperature, power, processes.

    Reads NVML directly; works with or without the daemon. Without an NVIDIA driver it says
    so and exits 0 (--json gives "available": false and the reason). With --watch --json,
    one JSON object per line.

    Examples: studioctl gpus; studioctl gpus --watch -n 1; studioctl gpus --json | jq .gpus
    """
    from studioctl import gpu

    with gpu.make_nvml() as nvml:
        if not watch:
            _emit(nvml.snapshot(), as_json=as_json, compact=False)
            return
        clear = not as_json and sys.stdout.isatty()
        shown = 0
        try:
            while True:
                host = nvml.snapshot()
                if not host.available and not shown:
                    _emit(host, as_json=as_json, compact=True)
                    return  # no driver: said once, nothing to watch
                if clear:
                    typer.echo(_CLEAR, nl=False)
                elif shown and not as_json:
                    typer.echo("")
                if not as_json:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(host.ts))
                    typer.echo(f"# {stamp}, every {interval:g}s (Ctrl+C to stop)")
                _emit(host, as_json=as_json, compact=True)
                shown += 1
                if count is not None and shown >= count:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return  # Ctrl+C is how --watch ends: not an error


def _emit(host: HostGpus, *, as_json: bool, compact: bool) -> None:
    if as_json:
        data = host.to_dict()
        typer.echo(json.dumps(data) if compact else json.dumps(data, indent=2))
        return
    for line in render(host):
        typer.echo(line)


def render(host: HostGpus) -> list[str]:
    """The plain text of ``studioctl gpus`` for one snapshot (aligned columns, no colour)."""
    if not host.available:
        return [f"No NVIDIA GPU/driver: {host.reason or 'NVML unavailable'}."]
    head = f"NVIDIA driver {host.driver_version or '?'}, CUDA {host.cuda_version or '?'}"
    if not host.gpus:
        return [f"{head}: no GPUs."]
    lines = [f"{head}, {len(host.gpus)} GPU{'s' if len(host.gpus) != 1 else ''}"]
    rows = [_gpu_row(g) for g in host.gpus]
    lines += _table(
        ("GPU", "NAME", "UTIL", "MEMORY", "TEMP", "FAN", "POWER", "SM CLOCK", "PROCS"), rows
    )
    procs = [
        (str(g.index), str(p.pid), _bytes(p.used_memory_bytes))
        for g in host.gpus
        for p in g.processes
    ]
    if procs:
        lines.append("")
        lines += _table(("GPU", "PID", "MEMORY"), procs)
    return lines


def _gpu_row(g: GpuSnapshot) -> tuple[str, ...]:
    name = g.name or "?"
    if g.lost or g.error:
        state = "LOST" if g.lost else "ERROR"
        return (str(g.index), name, f"{state}: {g.error or 'no readings'}", "", "", "", "", "", "")
    memory = "-"
    if g.mem_total_bytes is not None:
        used = g.mem_used_bytes
        memory = f"{_gib(used) if used is not None else '?'}/{_gib(g.mem_total_bytes)} GiB"
    power = "-"
    if g.power_w is not None:
        limit = f"/{g.power_limit_w:.0f}" if g.power_limit_w is not None else ""
        power = f"{g.power_w:.0f}{limit} W"
    return (
        str(g.index),
        name,
        _pct(g.util_gpu_pct),
        memory,
        "-" if g.temperature_c is None else f"{g.temperature_c:.0f}C",
        _pct(g.fan_pct),
        power,
        "-" if g.sm_clock_mhz is None else f"{g.sm_clock_mhz} MHz",
        str(len(g.processes)),
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = []
    for row in (headers, *rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"
