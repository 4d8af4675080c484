"""The mailbox on the real vLLM (CPU build, tiny model): a streamed chat whose client hangs up
after the first chunk keeps running in the engine, and ends in the mailbox assembled, with
the completion-token count the engine reports (its usage, and its
``vllm:generation_tokens_total`` counter moving by exactly that much); the request log's row
counts the same tokens. One vLLM launch for the module.
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

from gateway_daemon.helpers import parse_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

ENV = engine_env("vllm")
RECIPE, MODEL = "tiny-cpu", "tiny"
LAUNCH_TIMEOUT = 360.0
TOKENS = 48  # enough steps that the client is gone long before the engine is done


@dataclass
class Served:
    d: E2EDaemon
    gateway: str  # http://127.0.0.1:PORT
    engine: str  # http://127.0.0.1:PORT (the engine itself)
    key: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    require(ENV)
    with e2e_daemon(ENV) as d:
        t0 = time.monotonic()
        d.cli_ok("launch", RECIPE, "--json", timeout=LAUNCH_TIMEOUT)
        record_timing("mailbox e2e: launch tiny-cpu", time.monotonic() - t0)
        live = [i for i in d.ps() if i["recipe"] == RECIPE and i["state"] == "ready"]
        assert len(live) == 1, d.ps()
        out = json.loads(d.cli_ok("tenant", "create", "e2e-mailbox", "--json"))
        yield Served(
            d=d,
            gateway=f"http://127.0.0.1:{d.env['STUDIOCTL_GATEWAY_PORT']}",
            engine=f"http://127.0.0.1:{live[0]['port']}",
            key=out["key"],
        )


def generated_total(engine: str) -> float:
    import httpx

    resp = httpx.get(engine + "/metrics", timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    return parse_metrics(resp.text).sum("vllm:generation_tokens_total")


def test_a_disconnected_streamed_chat_ends_in_the_mailbox_with_the_engines_count(
    served: Served,
) -> None:
    import httpx

    before = generated_total(served.engine)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,  # exactly max_tokens, whatever the random weights emit
    }
    auth = {"Authorization": f"Bearer {served.key}"}
    with (
        httpx.Client(base_url=served.gateway, timeout=120) as c,
        c.stream(
            "POST", "/v1/chat/completions", json=body, headers={**auth, "X-Mailbox": "keep"}
        ) as r,
    ):
        assert r.status_code == 200, r.read()
        rid = r.headers["x-request-id"]
        assert next(r.iter_bytes()).startswith(b"data:")
    record: dict[str, Any] | None = None
    deadline = time.monotonic() + 180
    while record is None and time.monotonic() < deadline:
        got = httpx.get(f"{served.gateway}/v1/mailbox/{rid}", headers=auth, timeout=30)
        if got.status_code == 200:
            record = got.json()
        else:
            assert got.status_code == 404, got.text
            time.sleep(0.5)
    assert record is not None, f"no mailbox record for {rid}"
    assert record["status"] == "completed"
    response = record["response"]
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"], "the kept answer has no text"
    engine_count = generated_total(served.engine) - before
    assert response["usage"]["completion_tokens"] == TOKENS == engine_count
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15  # the usage writer writes in batches
    while not rows and time.monotonic() < deadline:
        shown = served.d.cli("requests", "show", rid, "--json")
        rows = json.loads(shown.stdout)["data"] if shown.returncode == 0 else []
        time.sleep(0 if rows else 0.5)
    assert len(rows) == 1 and rows[0]["completion_tokens"] == TOKENS
    assert rows[0]["disconnected"] and rows[0]["status"] == 200
