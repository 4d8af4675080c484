"""Telemetry test harness: a supervisor-shaped object, a settable clock, real child processes.

``Telemetry`` reads only ``sup.instances`` (instances with ``id``, ``recipe.id``,
``recipe.backend``, ``state``, ``tree``, ``base_url``, ``api_key``, ``adopted``, ``ready_at``)
and records VRAM with ``sup.record_vram``: :class:`FakeSup` and :class:`FakeInstance` are
exactly that, so the sampler runs against the fake pynvml (``tests/fakes/fake_pynvml.py``)
in-process. :class:`AiohttpEngineHttp` is the engine-HTTP object over a real aiohttp session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from studioctl.states import State


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC for the test (rendered clocks are then fixed)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@dataclass
class FakeRecipe:
    id: str
    backend: str = "vllm"

    def content_hash(self) -> str:
        return f"hash-of-{self.id}"


@dataclass
class FakeInstance:
    id: str
    recipe: FakeRecipe
    state: State = State.READY
    tree: dict[int, float] = field(default_factory=dict)
    base_url: str = "http://127.0.0.1:9"
    adopted: bool = False
    ready_at: float | None = None
    started_at: float | None = None
    created_at: float = 0.0
    vram_bytes: int | None = None
    api_key: str | None = None


@dataclass
class FakeSup:
    instances: dict[str, FakeInstance] = field(default_factory=dict)

    def add(self, inst: FakeInstance) -> FakeInstance:
        inst.created_at = float(len(self.instances))
        self.instances[inst.id] = inst
        return inst

    def record_vram(self, instance_id: str, vram_bytes: int | None) -> None:
        inst = self.instances.get(instance_id)
        if inst is not None:
            inst.vram_bytes = vram_bytes


@dataclass(frozen=True)
class EngineAnswer:
    status: int
    body: bytes


class AiohttpEngineHttp:
    """Telemetry's ``EngineHttp`` over a real aiohttp session (the test's)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def get(self, url: str, *, api_key: str | None = None, timeout_s: float) -> EngineAnswer:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s), headers=headers
            ) as resp:
                return EngineAnswer(resp.status, await resp.read())
        except aiohttp.ClientError as exc:
            raise ConnectionError(str(exc)) from exc


@pytest.fixture
def children() -> Iterator[list[int]]:
    """Three real sleeping child processes (their pids stand for engine processes)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
        )
        for _ in range(3)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
