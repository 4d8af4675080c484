"""Engine log files on a real folder: copy-truncate rotation (the writer's O_APPEND
descriptor keeps working), retention pruning, finding a log by instance or recipe id, and
the tail ``logs`` prints without a daemon."""

from __future__ import annotations

import os
import time
from pathlib import Path

from studioctl.lifecycle import logfiles


def test_rotate_copies_then_truncates_and_keeps_the_writer_going(tmp_path: Path) -> None:
    log = tmp_path / "e-1.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as an engine holds it
    try:
        os.write(fd, b"a" * 50 + b"\n")
        assert not logfiles.rotate(log, max_bytes=100, backups=2)  # under the limit: untouched
        os.write(fd, b"b" * 60 + b"\n")
        assert logfiles.rotate(log, max_bytes=100, backups=2)
        assert log.stat().st_size == 0
        assert (tmp_path / "e-1.log.1").read_bytes().startswith(b"a" * 50)
        os.write(fd, b"c" * 120 + b"\n")  # O_APPEND: written at the start of the empty file
        assert log.read_bytes() == b"c" * 120 + b"\n"
        assert logfiles.rotate(log, max_bytes=100, backups=2)
        assert (tmp_path / "e-1.log.2").read_bytes().startswith(b"a" * 50)  # shifted
        assert (tmp_path / "e-1.log.1").read_bytes() == b"c" * 120 + b"\n"
        os.write(fd, b"d" * 120 + b"\n")
        assert logfiles.rotate(log, max_bytes=100, backups=2)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["e-1.log", "e-1.log.1", "e-1.log.2"]
        assert (tmp_path / "e-1.log.2").read_bytes() == b"c" * 120 + b"\n"  # "a" dropped
    finally:
        os.close(fd)
    assert not logfiles.rotate(tmp_path / "missing.log", max_bytes=1, backups=1)


def test_rotate_without_backups_only_truncates(tmp_path: Path) -> None:
    log = tmp_path / "e-2.log"
    log.write_bytes(b"x" * 200)
    assert logfiles.rotate(log, max_bytes=100, backups=0)
    assert log.read_bytes() == b"" and [p.name for p in tmp_path.iterdir()] == ["e-2.log"]


def test_prune_removes_old_logs_but_keeps_those_of_running_instances(tmp_path: Path) -> None:
    old = time.time() - 10 * 86400
    for name in ("gone-1.log", "gone-1.log.1", "live-1.log", "live-1.log.1", "fresh-1.log"):
        (tmp_path / name).write_text(name)
    for name in ("gone-1.log", "gone-1.log.1", "live-1.log", "live-1.log.1"):
        os.utime(tmp_path / name, (old, old))
    removed = logfiles.prune(tmp_path, keep={"live-1.log"}, cutoff=time.time() - 86400)
    assert sorted(p.name for p in removed) == ["gone-1.log", "gone-1.log.1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fresh-1.log",
        "live-1.log",
        "live-1.log.1",
    ]
    assert logfiles.prune(tmp_path / "nope", keep=(), cutoff=time.time()) == []


def test_find_instance_log_by_instance_or_newest_of_a_recipe(tmp_path: Path) -> None:
    for name in ("tiny-2.log", "tiny-10.log", "tiny-b-1.log", "tiny-10.log.1"):
        (tmp_path / name).write_text("")
    assert logfiles.find_instance_log(tmp_path, "tiny-2") == tmp_path / "tiny-2.log"
    assert logfiles.find_instance_log(tmp_path, "tiny") == tmp_path / "tiny-10.log"  # 10 > 2
    assert logfiles.find_instance_log(tmp_path, "tiny-b") == tmp_path / "tiny-b-1.log"
    assert logfiles.find_instance_log(tmp_path, "other") is None


def test_read_tail_with_and_without_a_time(tmp_path: Path) -> None:
    log = tmp_path / "t-1.log"
    log.write_text(
        "2026-01-01 10:00:00 first\n"
        "  continued\n"
        "2026-01-01 11:00:00 second\n"
        "  its traceback\n"
        "2026-01-01 12:00:00 third\n"
    )
    assert logfiles.read_tail(log, 2) == ["  its traceback", "2026-01-01 12:00:00 third"]
    after = time.mktime((2026, 1, 1, 10, 30, 0, 0, 0, -1))
    assert logfiles.read_tail(log, 100, after=after) == [
        "2026-01-01 11:00:00 second",
        "  its traceback",
        "2026-01-01 12:00:00 third",
    ]
    assert logfiles.read_tail(log, 1, after=after) == ["2026-01-01 12:00:00 third"]
    assert logfiles.read_tail(log, 0, after=after) == []
