"""Masking an engine's key in its log file, in place, while the engine keeps appending."""

from __future__ import annotations

import os
from pathlib import Path

from studioctl.lifecycle.logfiles import scrub


def test_scrub_masks_every_occurrence_after_start_in_place(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    head = b"=== studioctl: launch (before the engine's output)\n"
    log.write_bytes(head + b"server_args={'api_key': 'sce-K'} x\nagain sce-K\n")
    engine = os.open(log, os.O_WRONLY | os.O_APPEND)  # the engine's own descriptor
    try:
        assert scrub(log, "sce-K", start=len(head)) == 2
        os.write(engine, b"later line\n")  # still appends at the end
    finally:
        os.close(engine)
    assert log.read_bytes() == head + (
        b"server_args={'api_key': '*****'} x\nagain *****\nlater line\n"
    )
    assert scrub(log, "sce-K") == 0 and scrub(log, None) == 0
    assert scrub(tmp_path / "missing.log", "sce-K") == 0
    assert scrub(log, "sce-K", start=10**9) == 0  # an offset past a rotation: nothing to do


def test_the_log_stream_masks_the_key_before_the_file_is_scrubbed(tmp_path: Path) -> None:
    """`logs` (and `logs -f`) read through the daemon never show the key, even in the moment
    between SGLang printing its arguments and the supervisor scrubbing the file."""
    import asyncio

    from studioctl.control.logs import log_stream

    key = "sce-" + "k" * 43
    log = tmp_path / "engine.log"
    log.write_text(f"server_args=ServerArgs(api_key='{key}', port=1)\nready\n")

    async def read() -> bytes:
        out = b""
        stream = log_stream(log, n=10, follow=False, since=None, alive=lambda: False, secret=key)
        async for chunk in stream:
            out += chunk
        return out

    out = asyncio.run(read()).decode()
    assert key not in out
    assert out == "server_args=ServerArgs(api_key='***', port=1)\nready\n"
