"""Terminal rendering: tables, launch progress. The only module that imports rich (lazily).

On a TTY: rich tables and a live progress display. Otherwise (pipes, CI logs): plain
aligned text and one line per event, so scripts can grep the output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
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
