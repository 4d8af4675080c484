"""``studioctl top`` (the live view) and ``studioctl stats`` (lifetime figures and peaks).

``top`` reads the daemon's telemetry (``GET /telemetry``, the same data as its ``telemetry``
events) once a second: a full-screen rich view on a terminal (``q`` quits), plain lines
otherwise. ``stats`` asks the daemon (which adds the figures not yet stored) or, with no
daemon running, reads the database itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer

from studioctl.cli.app import app

if TYPE_CHECKING:
    from studioctl.client import Client


@app.command("top")
def top(
    once: bool = typer.Option(False, "--once", help="Print the figures once and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the telemetry snapshot as JSON."),
    interval: float = typer.Option(
        1.0, "--interval", "-n", min=0.2, help="Seconds between refreshes."
    ),
    count: int | None = typer.Option(
        None, "--count", "-c", min=1, help="Stop after this many refreshes."
    ),
) -> None:
    """A live view of GPUs, instances and the gateway (needs the daemon).

    GPUs: utilisation, memory, power and temperature bars. Instances: state, VRAM, requests
    running and waiting, prompt and generated tokens/s, KV cache use, TTFT, power. Gateway:
    requests/s, rejections by reason, requests in flight per tenant. On a terminal the
    screen refreshes every second until q (or Ctrl+C); otherwise (a pipe, a log) it prints
    plain lines every interval. --once prints one snapshot and exits (for scripts; with
    --json the snapshot as one JSON object).

    Examples: studioctl top; studioctl top --once; studioctl top --once --json | jq .gpus
    """
    from studioctl import ui
    from studioctl.client import connect

    with connect() as client:
        if once:
            _print(_fetch(client), as_json=as_json)
            return
        if as_json or not ui.is_tty():
            _plain_loop(client, as_json=as_json, interval=interval, count=count)
            return
        _live_loop(client, interval=interval, count=count)


def _fetch(client: Client) -> dict[str, Any]:
    return client.telemetry()


def _print(snap: dict[str, Any], *, as_json: bool) -> None:
    from studioctl import ui

    if as_json:
        typer.echo(json.dumps(snap))
        return
    for line in ui.top_lines(snap):
        typer.echo(line)


def _plain_loop(client: Client, *, as_json: bool, interval: float, count: int | None) -> None:
    shown = 0
    try:
        while True:
            if shown and not as_json:
                typer.echo("")
            _print(_fetch(client), as_json=as_json)
            sys.stdout.flush()
            shown += 1
            if count is not None and shown >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return  # Ctrl+C is how it ends: not an error


def _live_loop(client: Client, *, interval: float, count: int | None) -> None:
    from studioctl import ui

    shown = 0
    with ui.LiveTop() as screen, _keys() as read_key:
        try:
            while True:
                screen.update(_fetch(client))
                shown += 1
                if count is not None and shown >= count:
                    return
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if read_key(left) in ("q", "Q"):
                        return
        except KeyboardInterrupt:
            return


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """``read(timeout) -> key or None``, with the terminal in cbreak mode (keys arrive at
    once, unechoed; Ctrl+C still interrupts) when stdin is a terminal; restored on exit."""
    import select

    if not sys.stdin.isatty():

        def sleep_only(timeout: float) -> str | None:
            time.sleep(timeout)
            return None

        yield sleep_only
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        return os.read(fd, 1).decode(errors="replace")

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


# ------------------------------------------------------------------ stats


@app.command("stats")
def stats(
    recipe: str | None = typer.Argument(None, help="Only this recipe."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Lifetime figures and peaks per recipe: tokens, requests, energy, uptime.

    Totals: prompt and generated tokens, requests, uptime (time ready), energy (kWh) and
    kWh per million prompt / generated tokens (all of the recipe's energy over each count).
    Peaks: prompt (prefill) and generation tokens/s, lowest time to first token, most
    requests running at once, highest KV cache use, highest power. Kept in the database by
    the daemon's telemetry; works without the daemon (from the database).

    Examples: studioctl stats; studioctl stats llama-8b --json
    """
    rows = _load_stats(recipe)
    if as_json:
        typer.echo(json.dumps({"recipes": rows}, indent=2))
        return
    if not rows:
        typer.echo("no statistics yet (they appear once an instance has run)")
        return
    if recipe is not None:
        for line in _detail(rows[0]):
            typer.echo(line)
        return
    from studioctl.ui import duration, human_count, table

    table(
        [
            [
                r["recipe"],
                duration(r["uptime_s"]),
                human_count(r["requests"]),
                human_count(r["prompt_tokens"]),
                human_count(r["generation_tokens"]),
                _kwh(r["energy_kwh"]),
                _kwh(r["kwh_per_mtok_prompt"]),
                _kwh(r["kwh_per_mtok_completion"]),
                _peak(r, "prefill_tps", "{:.0f}"),
                _peak(r, "generation_tps", "{:.0f}"),
                _peak(r, "ttft_best_s", "{:.3f}s"),
            ]
            for r in rows
        ],
        [
            "recipe",
            "uptime",
            "requests",
            "prompt tok",
            "gen tok",
            "energy kWh",
            "kWh/Mtok in",
            "kWh/Mtok out",
            "peak in tok/s",
            "peak out tok/s",
            "best TTFT",
        ],
    )


def _load_stats(recipe: str | None) -> list[dict[str, Any]]:
    """From the daemon when it answers (stored + not yet flushed), else from the database."""
    from studioctl.client import Client

    with Client() as client:
        if client.ping() is not None:
            return client.stats(recipe)
    return _stats_from_database(recipe)


def _stats_from_database(recipe: str | None) -> list[dict[str, Any]]:
    from studioctl.errors import NotFoundError
    from studioctl.store.stats import read_recipe_stats

    rows = [s.to_dict() for s in read_recipe_stats(recipe)]
    if recipe is not None and not rows:
        raise NotFoundError(
            f"no statistics for recipe {recipe!r} yet",
            hint="figures appear once an instance of it has run; see `studioctl stats`",
        )
    return rows


_PEAK_LABELS = {
    "prefill_tps": ("peak prompt tokens/s", "{:.1f}"),
    "generation_tps": ("peak generated tokens/s", "{:.1f}"),
    "ttft_best_s": ("best time to first token", "{:.3f} s"),
    "concurrent": ("most requests running", "{:.0f}"),
    "kv_cache": ("highest KV cache use", "{:.0%}"),
    "power_w": ("highest power", "{:.0f} W"),
}


def _detail(r: dict[str, Any]) -> list[str]:
    from studioctl.ui import duration

    rows = [
        ("recipe", r["recipe"]),
        ("uptime (ready)", duration(r["uptime_s"])),
        ("requests", f"{r['requests']:.0f}"),
        ("prompt tokens", f"{r['prompt_tokens']:.0f}"),
        ("generated tokens", f"{r['generation_tokens']:.0f}"),
        ("energy", f"{_kwh(r['energy_kwh'])} kWh"),
        ("kWh per M prompt tokens", _kwh(r["kwh_per_mtok_prompt"])),
        ("kWh per M generated", _kwh(r["kwh_per_mtok_completion"])),
    ]
    for key, (label, fmt) in _PEAK_LABELS.items():
        p = (r.get("peaks") or {}).get(key)
        if p is None:
            rows.append((label, "-"))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["at"]))
        where = f" on {p['instance']}" if p.get("instance") else ""
        rows.append((label, f"{fmt.format(p['value'])} ({when}{where})"))
    return [f"{label + ':':<26}{value}" for label, value in rows]


def _kwh(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if v < 10 else f"{v:.1f}"


def _peak(r: dict[str, Any], key: str, fmt: str) -> str:
    p = (r.get("peaks") or {}).get(key)
    return "-" if p is None else fmt.format(p["value"])
