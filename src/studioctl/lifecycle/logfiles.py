"""Engine log files: tail, follow across copy-truncate rotation, filter by time.

Engines write their own output straight into the file (so they never depend on the
daemon), so lines carry the engine's own timestamps, if any. ``--since`` uses them: an ISO
``YYYY-MM-DD HH:MM:SS`` (studioctl's markers, SGLang) or vLLM's ``MM-DD HH:MM:SS``; a line
without one belongs with the line before it.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_VLLM = re.compile(r"\b(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})\b")


@dataclass
class LogFollower:
    """Reads new lines of a log file from an offset; survives copy-truncate rotation."""

    path: Path
    offset: int = 0
    _partial: bytes = b""

    def read_new(self, max_bytes: int = 1 << 20) -> list[str]:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if size < self.offset:  # truncated (rotated): start over
            self.offset = 0
            self._partial = b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(max_bytes)
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]


def tail_lines(path: Path, n: int = 40, max_bytes: int = 256 * 1024) -> list[str]:
    """The last ``n`` lines of a file (reads at most ``max_bytes`` from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines: deque[str] = deque(maxlen=n)
    for raw in data.splitlines():
        lines.append(raw.decode("utf-8", "replace"))
    return list(lines)


def line_time(line: str, *, year: int | None = None) -> float | None:
    """The local time a log line carries, as epoch seconds, or None."""
    m = _ISO.search(line[:80])
    if m:
        y, mo, d, h, mi, s = (int(x) for x in m.groups())
    else:
        m = _VLLM.search(line[:80])
        if not m:
            return None
        y = year or time.localtime().tm_year
        mo, d, h, mi, s = (int(x) for x in m.groups())
    try:
        return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def since(lines: Iterable[str], ts: float) -> Iterator[str]:
    """Lines from the first one stamped at or after ``ts`` (unstamped lines follow their
    predecessor's verdict)."""
    keep = False
    for line in lines:
        t = line_time(line)
        if t is not None:
            keep = t >= ts
        if keep:
            yield line


def scrub(path: Path, secret: str | None, *, start: int = 0, max_bytes: int = 64 << 20) -> int:
    """Overwrite each occurrence of ``secret`` in the file (from byte ``start``) with as many
    ``*``, in place; return how many there were.

    An engine may print its own API key (SGLang logs its server arguments, key included).
    The engine writes O_APPEND, so rewriting bytes it wrote earlier at their offsets never
    disturbs it, and every reader of the file (``logs``, with or without the daemon, a
    rotated copy made later) sees the key masked.
    """
    if not secret:
        return 0
    needle = secret.encode()
    try:
        with open(path, "r+b") as f:
            f.seek(start)
            data = f.read(max_bytes)
            found = 0
            at = data.find(needle)
            while at >= 0:
                f.seek(start + at)
                f.write(b"*" * len(needle))
                found += 1
                at = data.find(needle, at + len(needle))
            return found
    except OSError:
        return 0
