"""Terminal rendering: tables, launch progress. The only module that imports rich (lazily).

On a TTY: rich tables and a live progress display. Otherwise (pipes, CI logs): plain
aligned text and one line per event, so scripts can grep the output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def is_tty() -> bool:
    return sys.stdout.isatty()


def table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], *, title: str | None = None
) -> None:
    """Print rows: a rich table on a TTY, plain aligned columns otherwise."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, show_edge=False, header_style="bold")
        for h in headers:
            t.add_column(h)
        for row in cells:
            t.add_row(*row)
        Console().print(t)
        return
    if title:
        print(title)
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


class LaunchProgress:
    """Shows launch stages as they are reached, with elapsed time and an ETA.

    ``eta`` (stage → typical seconds from start, from earlier launches of the recipe)
    gives the expected total. On a TTY a rich live display; otherwise one line per stage.
    """

    def __init__(self, title: str, *, live: bool | None = None) -> None:
        self.title = title
        self.live = is_tty() if live is None else live
        self.t0 = time.monotonic()
        self.eta_total: float | None = None
        self.lines: list[tuple[str, float]] = []
        self._live: Any = None

    def __enter__(self) -> LaunchProgress:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._render(), console=Console(), refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)

    def set_eta(self, eta: dict[str, float] | None) -> None:
        if eta:
            self.eta_total = max(eta.values())

    def stage(self, label: str, t: float | None = None) -> None:
        t = time.monotonic() - self.t0 if t is None else t
        self.lines.append((label, t))
        if self._live is not None:
            self._live.update(self._render())
        else:
            print(f"[{t:6.1f}s] {label}", flush=True)

    def tick(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.spinner import Spinner
        from rich.table import Table

        elapsed = time.monotonic() - self.t0
        t = Table.grid(padding=(0, 1))
        t.add_column(justify="right", style="dim")
        t.add_column()
        for label, at in self.lines:
            t.add_row(f"{at:5.1f}s", f"[green]✓[/green] {label}")
        eta = ""
        if self.eta_total:
            left = max(0.0, self.eta_total - elapsed)
            eta = f"  (usually {self.eta_total:.0f}s; ~{left:.0f}s left)"
        t.add_row("", Spinner("dots", text=f"{self.title}: {elapsed:.1f}s{eta}"))
        return t


# --------------------------------------------------------------------------- top

# What `studioctl top` shows, from the daemon's telemetry snapshot (GET /telemetry, or the
# data of a "telemetry" event): a dict with "ts", "gpu", "gpus", "instances", "gateway".

_BAR_FULL = "█"
_BAR_EMPTY = "░"


def human_bytes(n: float | None) -> str:
    """Bytes as GiB (or MiB below 1 GiB); "-" for None."""
    if n is None:
        return "-"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def human_count(n: float | None) -> str:
    """1234 → 1.2k, 5600000 → 5.6M; "-" for None."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _frac(value: float | None, total: float | None) -> float | None:
    if value is None or not total:
        return None
    return max(0.0, min(1.0, value / total))


def _bar_text(frac: float | None, width: int) -> tuple[str, str]:
    """A bar of ``width`` cells and the style for its level."""
    if frac is None:
        return " " * width, "dim"
    filled = round(frac * width)
    style = "green" if frac < 0.6 else ("yellow" if frac < 0.85 else "red")
    return _BAR_FULL * filled + _BAR_EMPTY * (width - filled), style


def _stamp(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _gpu_header(snap: dict[str, Any]) -> str:
    g = snap.get("gpu") or {}
    if not g.get("available"):
        return f"No NVIDIA GPU: {g.get('reason') or 'NVML unavailable'}"
    n = len(snap.get("gpus") or [])
    return (
        f"{n} GPU{'s' if n != 1 else ''}, driver {g.get('driver_version') or '?'}, "
        f"CUDA {g.get('cuda_version') or '?'}"
    )


def _gateway_line(gw: dict[str, Any] | None) -> str:
    if gw is None:
        return "gateway: off"
    rate = gw.get("requests_per_s")
    parts = [
        f"gateway: {_num(rate, '{:.1f}')} req/s",
        f"{gw.get('inflight', 0)}/{gw.get('max_concurrent', '?')} in flight",
        f"{human_count(gw.get('requests_total'))} answered",
    ]
    return ", ".join(parts)


def _rejections(gw: dict[str, Any] | None) -> str:
    rej = (gw or {}).get("rejections") or {}
    if not rej:
        return "none"
    return ", ".join(f"{k} {human_count(v)}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1]))


def _tenants(gw: dict[str, Any] | None) -> str:
    ten = (gw or {}).get("tenants_inflight") or {}
    if not ten:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(ten.items(), key=lambda kv: (-kv[1], kv[0])))


def _instance_cells(i: dict[str, Any]) -> list[str]:
    kv = i.get("kv_cache_usage")
    return [
        str(i.get("id", "?")),
        str(i.get("recipe", "?")),
        str(i.get("state", "?")),
        human_bytes(i.get("vram_bytes")),
        _num(i.get("requests_running")),
        _num(i.get("requests_waiting")),
        _num(i.get("prompt_tokens_per_s"), "{:.1f}"),
        _num(i.get("generation_tokens_per_s"), "{:.1f}"),
        "-" if kv is None else f"{kv * 100:.0f}%",
        _num(i.get("ttft_s"), "{:.3f}s"),
        _num(i.get("power_w"), "{:.0f} W"),
    ]


_INSTANCE_HEADERS = [
    "instance",
    "recipe",
    "state",
    "VRAM",
    "run",
    "wait",
    "prompt tok/s",
    "gen tok/s",
    "KV",
    "TTFT",
    "power",
]

_STATE_STYLES = {
    "ready": "green",
    "starting": "cyan",
    "loading": "cyan",
    "draining": "yellow",
    "stopping": "yellow",
    "crashed": "red",
    "failed": "red",
}


def render_top(snapshot: dict[str, Any], width: int, height: int) -> Any:
    """The ``studioctl top`` screen for one telemetry snapshot, as a rich renderable that
    fits ``width`` x ``height`` (instances past the height are summed up in one line)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    snap = snapshot
    gw = snap.get("gateway")
    head = Text()
    head.append("studioctl top", style="bold")
    head.append(f"  {_stamp(snap.get('ts'))}  ·  {_gpu_header(snap)}")
    head.truncate(width, overflow="ellipsis")
    parts: list[Any] = [head, Text("")]

    gpus = snap.get("gpus") or []
    bar_w = max(4, min(20, (width - 40) // 8))
    if gpus:
        t = Table(box=None, pad_edge=False, expand=False, header_style="bold", width=width)
        for name in ("GPU", "name", "util", "memory", "power", "temp"):
            t.add_column(name, no_wrap=True, overflow="ellipsis")
        for g in gpus:
            label = str(g.get("index"))
            name = str(g.get("name") or "?")
            if g.get("lost") or g.get("error"):
                why = "LOST" if g.get("lost") else "ERROR"
                t.add_row(label, name, Text(f"{why}: {g.get('error') or ''}", style="bold red"))
                continue
            util = g.get("util_pct")
            used, total = g.get("mem_used_bytes"), g.get("mem_total_bytes")
            power, limit = g.get("power_w"), g.get("power_limit_w")
            temp = g.get("temperature_c")
            t.add_row(
                label,
                name,
                _bar(_frac(util, 100.0), bar_w, _num(util, "{:.0f}%")),
                _bar(
                    _frac(used, total),
                    bar_w,
                    f"{human_bytes(used)} / {human_bytes(total)}",
                ),
                _bar(
                    _frac(power, limit),
                    bar_w,
                    f"{_num(power)}/{_num(limit)} W" if limit is not None else f"{_num(power)} W",
                ),
                # 90 °C: where data-centre GPUs start to throttle; the bar's scale.
                _bar(_frac(temp, 90.0), max(4, bar_w // 2), _num(temp, "{:.0f}°C")),
            )
        parts.append(t)
    else:
        parts.append(Text(_gpu_header(snap), style="dim"))
    parts.append(Text(""))

    insts = snap.get("instances") or []
    used_lines = len(parts) + len(gpus) + 8  # headers, gateway lines, spacing
    room = max(1, height - used_lines)
    shown, hidden = insts[:room], insts[room:]
    if insts:
        t = Table(box=None, pad_edge=False, header_style="bold", width=width)
        for h in _INSTANCE_HEADERS:
            justify: Any = "left" if h in ("instance", "recipe", "state") else "right"
            t.add_column(h, no_wrap=True, overflow="ellipsis", justify=justify)
        for i in shown:
            cells: list[Any] = _instance_cells(i)
            cells[2] = Text(cells[2], style=_STATE_STYLES.get(cells[2], ""))
            t.add_row(*cells)
        parts.append(t)
        if hidden:
            parts.append(Text(f"… {len(hidden)} more instance(s)", style="dim"))
    else:
        parts.append(Text("no instances (launch one: studioctl launch RECIPE)", style="dim"))
    parts.append(Text(""))
    parts.append(Text(_gateway_line(gw), style="bold" if gw is not None else "dim"))
    if gw is not None:
        parts.append(Text(f"rejections: {_rejections(gw)}"))
        parts.append(Text(f"in flight by tenant: {_tenants(gw)}"))
    parts.append(Text("q quits", style="dim"))
    return Group(*parts)


def _bar(frac: float | None, width: int, label: str) -> Any:
    from rich.text import Text

    bar, style = _bar_text(frac, width)
    out = Text(bar, style=style)
    out.append(" " + label)
    return out


def top_lines(snapshot: dict[str, Any]) -> list[str]:
    """The same figures as plain lines (no colour, no bars): `top` when not on a terminal."""
    snap = snapshot
    gw = snap.get("gateway")
    lines = [f"# {_stamp(snap.get('ts'))}  {_gpu_header(snap)}", _gateway_line(gw)]
    gpu_rows = []
    for g in snap.get("gpus") or []:
        if g.get("lost") or g.get("error"):
            state = "LOST" if g.get("lost") else "ERROR"
            gpu_rows.append([str(g.get("index")), str(g.get("name")), state, "", "", ""])
            continue
        gpu_rows.append(
            [
                str(g.get("index")),
                str(g.get("name") or "?"),
                _num(g.get("util_pct"), "{:.0f}%"),
                f"{human_bytes(g.get('mem_used_bytes'))}/{human_bytes(g.get('mem_total_bytes'))}",
                _num(g.get("power_w"), "{:.0f} W"),
                _num(g.get("temperature_c"), "{:.0f}C"),
            ]
        )
    if gpu_rows:
        lines += _aligned(["gpu", "name", "util", "memory", "power", "temp"], gpu_rows)
    insts = snap.get("instances") or []
    if insts:
        lines += _aligned(_INSTANCE_HEADERS, [_instance_cells(i) for i in insts])
    else:
        lines.append("no instances")
    if gw is not None:
        lines.append(f"rejections: {_rejections(gw)}")
        lines.append(f"in flight by tenant: {_tenants(gw)}")
    return lines


def _aligned(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = []
    for row in (list(headers), *rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return out


class LiveTop:
    """The full-screen live view of ``studioctl top`` (alternate screen, redrawn on update)."""

    def __init__(self) -> None:
        self._live: Any = None
        self._console: Any = None

    def __enter__(self) -> LiveTop:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self._console = Console()
        self._live = Live(
            Text("waiting for the daemon…"),
            console=self._console,
            screen=True,
            auto_refresh=False,
            transient=True,
        )
        self._live.__enter__()
        return self

    def update(self, snapshot: dict[str, Any]) -> None:
        c = self._console
        self._live.update(render_top(snapshot, c.width, c.height), refresh=True)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None


class LiveLines:
    """A few status lines redrawn in place on a TTY (``bench``'s progress). ``lines`` is
    called from rich's refresh thread, so it must only read plain values."""

    def __init__(self, lines: Callable[[], list[str]], *, per_second: float = 4.0) -> None:
        self._lines = lines
        self._per_second = per_second
        self._live: Any = None

    def _render(self) -> Any:
        from rich.text import Text

        return Text("\n".join(self._lines()))

    def __enter__(self) -> LiveLines:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(
            get_renderable=self._render,
            console=Console(),
            refresh_per_second=self._per_second,
            transient=True,
        )
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
