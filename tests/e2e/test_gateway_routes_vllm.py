"""End to end on the real vLLM (CPU build, tiny model): the engine routes beyond chat through
the gateway — ``/v1/responses`` plain and streamed (the official ``openai`` client; vLLM's
typed events relayed, usage from ``response.completed``), ``/tokenize`` (with the model and
without: the only model running), ``/detokenize`` and ``GET /v1/models/{id}`` — each
proxied request leaving a usage row with the engine's own counts. One vLLM launch.
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

from gateway_daemon.helpers import usage_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

ENV = engine_env("vllm")
RECIPE, MODEL = "tiny-cpu", "tiny"
LAUNCH_TIMEOUT = 360.0


@dataclass
class Served:
    d: E2EDaemon
    root: str  # http://127.0.0.1:PORT (the gateway)
    tenant_id: str
    key: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    require(ENV)
    with e2e_daemon(ENV) as d:
        t0 = time.monotonic()
        d.cli_ok("launch", RECIPE, "--json", timeout=LAUNCH_TIMEOUT)
        record_timing("gateway routes e2e: launch tiny-cpu", time.monotonic() - t0)
        out = json.loads(d.cli_ok("tenant", "create", "routes", "--json"))
        yield Served(
            d=d,
            root=f"http://127.0.0.1:{d.env['STUDIOCTL_GATEWAY_PORT']}",
            tenant_id=out["tenant"]["id"],
            key=out["key"],
        )


def rows_after(served: Served, n: int) -> list[Any]:
    """The tenant's last ``n`` usage rows, oldest first (the writer batches)."""
    deadline = time.monotonic() + 15
    while True:
        rows = usage_rows(served.d, tenant=served.tenant_id, limit=1000)
        if len(rows) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(rows) >= n, rows
    return sorted(rows, key=lambda r: r.ts)[-n:]


def post(served: Served, path: str, body: dict[str, Any]) -> Any:
    import httpx

    return httpx.post(
        served.root + path,
        json=body,
        headers={"Authorization": f"Bearer {served.key}"},
        timeout=120,
    )


def test_responses_plain_and_streamed(served: Served) -> None:
    import openai

    client = openai.OpenAI(
        base_url=served.root + "/v1", api_key=served.key, max_retries=0, timeout=180
    )
    with client:
        plain = client.responses.create(
            model=MODEL, input="Tell me about lighthouses.", max_output_tokens=8, temperature=0
        )
        assert plain.usage is not None and plain.usage.input_tokens > 0
        assert 0 < plain.usage.output_tokens <= 8
        kinds: list[str] = []
        completed: Any = None
        for event in client.responses.create(
            model=MODEL, input="Name a colour.", max_output_tokens=6, temperature=0, stream=True
        ):
            kinds.append(event.type)
            if event.type == "response.completed":
                completed = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "response.output_text.delta" in kinds, kinds
    assert completed is not None and completed.usage is not None
    first, second = rows_after(served, 2)
    assert (first.model, first.status, first.streamed) == (MODEL, 200, False)
    assert (first.prompt_tokens, first.completion_tokens) == (
        plain.usage.input_tokens,
        plain.usage.output_tokens,
    )
    assert (second.model, second.status, second.streamed) == (MODEL, 200, True)
    assert (second.prompt_tokens, second.completion_tokens) == (
        completed.usage.input_tokens,
        completed.usage.output_tokens,
    )
    assert not second.disconnected and second.ttft_ms is not None


def test_tokenize_detokenize_and_model_card(served: Served) -> None:
    import httpx

    named = post(served, "/tokenize", {"model": MODEL, "prompt": "hello lighthouse world"})
    assert named.status_code == 200, named.text
    tokens = named.json()["tokens"]
    assert named.json()["count"] == len(tokens) > 0
    # no model: the only model running (vLLM's own default for its one served model)
    unnamed = post(served, "/tokenize", {"prompt": "hello lighthouse world"})
    assert unnamed.status_code == 200, unnamed.text
    assert unnamed.json()["tokens"] == tokens
    back = post(served, "/detokenize", {"model": MODEL, "tokens": tokens})
    assert back.status_code == 200, back.text
    assert "lighthouse" in back.json()["prompt"]
    rows = rows_after(served, 3)
    assert [(r.model, r.status) for r in rows] == [(MODEL, 200)] * 3

    card = httpx.get(
        served.root + f"/v1/models/{MODEL}",
        headers={"Authorization": f"Bearer {served.key}"},
        timeout=30,
    )
    assert card.status_code == 200, card.text
    assert card.json()["id"] == MODEL and card.json()["studioctl"]["state"] == "ready"
    missing = httpx.get(
        served.root + "/v1/models/no-such-model",
        headers={"Authorization": f"Bearer {served.key}"},
        timeout=30,
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
