"""End to end through the gateway on the real vLLM (CPU build, tiny model): the official
``openai`` client with a tenant key streams a chat and gets a completion through studioctl;
the usage studioctl records equals the engine's own ``usage`` and the engine's
``vllm:prompt_tokens_total`` / ``vllm:generation_tokens_total`` counters move by exactly the
recorded amounts. One vLLM launch for the module (~45 s on two cores).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.e2e.conftest import record_timing, require
from tests.e2e.helpers import E2EDaemon, e2e_daemon, engine_env

from gateway_daemon.helpers import parse_metrics, usage_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

ENV = engine_env("vllm")
RECIPE, MODEL = "tiny-cpu", "tiny"
LAUNCH_TIMEOUT = 360.0
# The tiny model's random weights may emit </s> at any step: ignore_eos makes every request
# generate exactly max_tokens, so the counts are known in advance.
EXTRA = {"ignore_eos": True}


@dataclass
class Served:
    d: E2EDaemon
    gateway: str  # http://127.0.0.1:PORT/v1
    engine: str  # http://127.0.0.1:PORT (the engine itself)
    tenant_id: str
    key: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    require(ENV)
    with e2e_daemon(ENV) as d:
        t0 = time.monotonic()
        d.cli_ok("launch", RECIPE, "--json", timeout=LAUNCH_TIMEOUT)
        record_timing("gateway e2e: launch tiny-cpu", time.monotonic() - t0)
        live = [i for i in d.ps() if i["recipe"] == RECIPE and i["state"] == "ready"]
        assert len(live) == 1, d.ps()
        out = json.loads(d.cli_ok("tenant", "create", "e2e", "--json"))
        yield Served(
            d=d,
            gateway=f"http://127.0.0.1:{d.env['STUDIOCTL_GATEWAY_PORT']}/v1",
            engine=f"http://127.0.0.1:{live[0]['port']}",
            tenant_id=out["tenant"]["id"],
            key=out["key"],
        )


def engine_counters(engine: str) -> tuple[float, float]:
    """(vllm:prompt_tokens_total, vllm:generation_tokens_total), summed over label sets."""
    import httpx

    resp = httpx.get(engine + "/metrics", timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    m = parse_metrics(resp.text)
    return m.sum("vllm:prompt_tokens_total"), m.sum("vllm:generation_tokens_total")


def usage_json(d: E2EDaemon, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(d.cli_ok("usage", "--json", *args))
    return out


def test_models_lists_tiny_ready_through_the_gateway(served: Served) -> None:
    import openai

    with openai.OpenAI(base_url=served.gateway, api_key=served.key, max_retries=0) as client:
        ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL, ids
    assert "tiny-b" in ids  # another repository recipe: known, not loaded


def test_openai_chat_stream_and_completion_usage_equal_the_engines(served: Served) -> None:
    import openai

    d = served.d
    before = usage_json(d, "--tenant", "e2e", "--model", MODEL, "--window", "1h")["total"]
    prompt0, gen0 = engine_counters(served.engine)
    with openai.OpenAI(
        base_url=served.gateway, api_key=served.key, max_retries=0, timeout=120
    ) as client:
        # 1. A streamed chat asking for usage: exactly one usage chunk, the engine's.
        text: list[str] = []
        usage_chunks = []
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a story about a lighthouse."}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=EXTRA,
        ):
            if chunk.usage is not None:
                usage_chunks.append(chunk.usage)
            text += [c.delta.content or "" for c in chunk.choices]
        assert len(usage_chunks) == 1, usage_chunks
        streamed = usage_chunks[0]
        assert streamed.completion_tokens == 8 and streamed.prompt_tokens > 0
        assert "".join(text), "the stream carried no text"

        # 2. A streamed chat not asking for usage: the client sees no usage chunk (the
        # gateway asked the engine for it and stripped it).
        hidden_chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Name three colours of the sea at dusk."}],
                max_tokens=5,
                temperature=0,
                stream=True,
                extra_body=EXTRA,
            )
        )
        assert hidden_chunks, "empty stream"
        assert all(c.usage is None for c in hidden_chunks), [
            c for c in hidden_chunks if c.usage is not None
        ]
        assert hidden_chunks[-1].choices and hidden_chunks[-1].choices[0].finish_reason == "length"

        # 3. A non-streamed completion.
        comp = client.completions.create(
            model=MODEL, prompt="The quick brown fox", max_tokens=6, temperature=0, extra_body=EXTRA
        )
        assert comp.usage is not None and comp.usage.completion_tokens == 6
        assert comp.choices[0].text

    # The engine's own counters (they may lag a request by a scheduler step: poll).
    deadline = time.monotonic() + 15
    while True:
        prompt1, gen1 = engine_counters(served.engine)
        if gen1 - gen0 >= 8 + 5 + 6 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    engine_prompt, engine_gen = prompt1 - prompt0, gen1 - gen0
    assert engine_gen == 8 + 5 + 6, (engine_prompt, engine_gen)

    # What studioctl recorded: three rows, in order; the visible usages exactly; the hidden
    # stream's usage is what the engine counted beyond the other two.
    deadline = time.monotonic() + 10
    while (
        usage_json(d, "--tenant", "e2e", "--window", "1h")["total"]["requests"]
        < before["requests"] + 3
    ):
        assert time.monotonic() < deadline, "usage rows did not appear"
        time.sleep(0.2)
    rows = sorted(usage_rows(d, tenant=served.tenant_id, limit=3), key=lambda r: r.ts)
    assert [(r.model, r.status, r.streamed, r.disconnected) for r in rows] == [
        (MODEL, 200, True, False),
        (MODEL, 200, True, False),
        (MODEL, 200, False, False),
    ]
    first, hidden, last = rows
    assert (first.prompt_tokens, first.completion_tokens) == (
        streamed.prompt_tokens,
        streamed.completion_tokens,
    )
    assert (last.prompt_tokens, last.completion_tokens) == (
        comp.usage.prompt_tokens,
        comp.usage.completion_tokens,
    )
    assert hidden.completion_tokens == 5
    assert hidden.prompt_tokens == engine_prompt - streamed.prompt_tokens - comp.usage.prompt_tokens
    assert hidden.prompt_tokens > 0
    assert all(r.key_prefix == served.key[:14] for r in rows)
    assert first.ttft_ms is not None and hidden.ttft_ms is not None

    # The summary (`usage --json`) agrees, and so do the engine's counters, in total.
    summary = usage_json(d, "--tenant", "e2e", "--model", MODEL, "--window", "1h")
    total = summary["total"]
    recorded = sum(r.prompt_tokens for r in rows), sum(r.completion_tokens for r in rows)
    assert total["requests"] - before["requests"] == 3 and total["errors"] == before["errors"]
    assert (
        total["prompt_tokens"] - before["prompt_tokens"],
        total["completion_tokens"] - before["completion_tokens"],
    ) == recorded
    assert recorded == (engine_prompt, engine_gen)
