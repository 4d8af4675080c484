"""Engine log files: tail, follow across copy-truncate rotation, filter by time, rotate,
prune, find by instance or recipe id.

Engines write their own output straight into the file (so they never depend on the
daemon), so lines carry the engine's own timestamps, if any. ``--since`` uses them: an ISO
``YYYY-MM-DD HH:MM:SS`` (studioctl's markers, SGLang) or vLLM's ``MM-DD HH:MM:SS``; a line
without one belongs with the line before it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import deque
from collections.abc import Collection, Iterable, Iterator
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


def read_tail(path: Path, n: int, *, after: float | None = None) -> list[str]:
    """The last ``n`` lines of a log, or with ``after`` the last ``n`` of those stamped at
    or after that time (reading up to 64 MiB back for them)."""
    if after is None:
        return tail_lines(path, n, max_bytes=256 << 10)
    lines = tail_lines(path, 10**9, max_bytes=64 << 20)
    return list(since(lines, after))[-n:] if n else []


def find_instance_log(folder: Path, target: str) -> Path | None:
    """``<target>.log`` (an instance id), else the newest ``<target>-N.log`` (a recipe id)."""
    exact = folder / f"{target}.log"
    if exact.is_file():
        return exact
    pat = re.compile(re.escape(target) + r"-(\d+)\.log$")
    found = [
        (int(m.group(1)), p) for p in folder.glob(f"{target}-*.log") if (m := pat.search(p.name))
    ]
    return max(found)[1] if found else None


def rotate(path: Path, *, max_bytes: int, backups: int) -> bool:
    """Copy-and-truncate rotation once ``path`` is above ``max_bytes``: the engine keeps its
    O_APPEND descriptor and writes on at the start of the emptied file. ``backups`` copies
    are kept (``.1`` the newest). True when it rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except OSError:
        return False
    for i in range(backups - 1, 0, -1):
        src = path.with_name(f"{path.name}.{i}")
        if src.exists():
            src.replace(path.with_name(f"{path.name}.{i + 1}"))
    if backups > 0:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as f:
        f.truncate(0)
    return True


def prune(folder: Path, *, keep: Collection[str], cutoff: float) -> list[Path]:
    """Delete the logs in ``folder`` (and their rotations) last written before ``cutoff``,
    except those whose base name (``<id>.log``) is in ``keep``; return what went."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        base = p.name.split(".log")[0] + ".log"
        try:
            if base in keep or p.stat().st_mtime >= cutoff:
                continue
            p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed
