"""Engine metrics from a live stand-in engine: the parser on its /metrics, and the telemetry
sampler scraping it with a real aiohttp session while real requests run."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fakes import fake_pynvml
from standin.helpers import running_standin
from studioctl.engines.metrics import summarize
from studioctl.gpu import Nvml
from studioctl.telemetry import GpuReader, Telemetry

from .conftest import AiohttpEngineHttp, FakeInstance, FakeRecipe, FakeSup

pytestmark = pytest.mark.integration


def complete(url: str, words: int, max_tokens: int, model: str = "standin") -> dict[str, Any]:
    body = json.dumps(
        {"model": model, "prompt": " ".join(["w"] * words), "max_tokens": max_tokens}
    ).encode()
    req = urllib.request.Request(
        url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


def fetch(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


@pytest.mark.parametrize("flavour", ["vllm", "sglang"])
def test_parser_on_live_standin_metrics(flavour: str, tmp_path: Path) -> None:
    with running_standin(flavour, tmp_path / "engine.log") as engine:
        before = summarize(flavour, fetch(engine.url), source=engine.url)
        assert before.prompt_tokens_total == 0 and before.generation_tokens_total == 0
        assert before.requests_running == 0 and before.requests_waiting == 0
        usage = [complete(engine.url, words=4, max_tokens=6)["usage"] for _ in range(3)]
        # The engine finishes its bookkeeping just after the response is sent: poll briefly.
        deadline = time.monotonic() + 5.0
        while True:
            after = summarize(flavour, fetch(engine.url), source=engine.url)
            if after.requests_running == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert after.prompt_tokens_total == sum(u["prompt_tokens"] for u in usage) == 12
    assert after.generation_tokens_total == sum(u["completion_tokens"] for u in usage) == 18
    assert after.kv_cache_usage == 0.0 and after.requests_running == 0
    assert set(after.sources) >= {"requests_running", "prompt_tokens_total", "kv_cache_usage"}


def test_telemetry_scrapes_a_live_engine(tmp_path: Path) -> None:
    """Tokens and requests counted from the engine's counters; the most requests running at
    once and the KV use seen while three slow requests are in flight."""
    with running_standin("vllm", tmp_path / "engine.log", STANDIN_TOKEN_DELAY_S=0.05) as engine:
        sup = FakeSup()
        inst = sup.add(FakeInstance("s-1", FakeRecipe("s"), base_url=engine.url))

        async def run() -> Telemetry:
            async with aiohttp.ClientSession() as session:
                tel = Telemetry(
                    sup,
                    gpus=GpuReader(Nvml(module=fake_pynvml.no_driver())),
                    engine_http=AiohttpEngineHttp(session),
                )
                await tel.scrape_engines()  # counters at zero
                done = await asyncio.to_thread(complete, engine.url, 5, 4)
                assert done["usage"]["prompt_tokens"] == 5
                slow = [
                    threading.Thread(target=complete, args=(engine.url, 2, 30)) for _ in range(3)
                ]
                for t in slow:
                    t.start()
                await asyncio.sleep(0.6)  # all three are generating (1.5 s each)
                await tel.scrape_engines()
                mid = tel.snapshot()["instances"][0]
                assert mid["requests_running"] == 3 and mid["kv_cache_usage"] > 0
                for t in slow:
                    await asyncio.to_thread(t.join, 30)
                await tel.scrape_engines()
                return tel

        tel = asyncio.run(run())
    it = tel.instances["s-1"]
    assert it.scrape_error is None and it.engine is not None
    assert it.engine.requests_running == 0
    d = tel._pending["s"]
    assert d.prompt_tokens == 5 + 3 * 2
    assert d.generation_tokens == 4 + 3 * 30
    assert d.requests == 4
    assert d.peaks["concurrent"].value == 3 and d.peaks["concurrent"].instance_id == "s-1"
    assert d.peaks["kv_cache"].value > 0
    assert d.peaks["generation_tps"].value > 0
    assert inst.vram_bytes is None  # no GPU here


def test_unreachable_engine_is_an_error_on_that_instance_only(tmp_path: Path) -> None:
    from helpers import free_port

    sup = FakeSup()
    sup.add(FakeInstance("gone-1", FakeRecipe("gone"), base_url=f"http://127.0.0.1:{free_port()}"))

    async def run() -> Telemetry:
        async with aiohttp.ClientSession() as session:
            tel = Telemetry(
                sup,
                gpus=GpuReader(Nvml(module=fake_pynvml.no_driver())),
                engine_http=AiohttpEngineHttp(session),
            )
            await tel.scrape_engines()
            return tel

    tel = asyncio.run(run())
    err = tel.instances["gone-1"].scrape_error
    assert err is not None and err.startswith("no answer from http://127.0.0.1:")
