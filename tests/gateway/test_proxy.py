"""The gateway end to end over real HTTP: openai client, every error code, limits under load,
client disconnects, admin/metrics/health routes, CORS. Plus the PromptCounter's arithmetic.

The gateway runs under uvicorn (httptools) in front of the stand-in engine of conftest.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from studioctl.gateway.metrics import OTHER_MODEL
from studioctl.gateway.routing import Upstream
from studioctl.gateway.tokenize import (
    PER_MESSAGE_ALLOWANCE,
    TEMPLATE_ALLOWANCE,
    estimate,
    upper_bound,
)
from studioctl.tenants import TenantLimits

from .conftest import (
    ALIAS,
    GENEROUS,
    MODEL,
    Gateway,
    GatewayFactory,
    chat_prompt_tokens,
    closed_port,
    run_async,
)

MESSAGES = [{"role": "user", "content": "hello there engine"}]
PROMPT = chat_prompt_tokens(MESSAGES)  # what the stand-in (and so the engine usage) counts


def chat(gw: Gateway, body: dict[str, Any], key: str | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions", json=body, headers=gw.headers(key), timeout=10, **kw
    )


def assert_error(
    r: httpx.Response, status: int, code: str, *, retry_after: int | None = None
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err: dict[str, Any] = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["code"] == code
    assert err["message"]
    if retry_after is None and status in (429, 503):  # every 429/503 says when to retry
        assert int(r.headers["retry-after"]) >= 1
    elif retry_after is None:
        assert "retry-after" not in r.headers
    else:
        assert r.headers["retry-after"] == str(retry_after)
    return err


def limits(**kw: Any) -> TenantLimits:
    values = {
        "max_concurrent": 100,
        "rpm": 100_000,
        "tpm": 100_000_000,
        "max_context_tokens": 8192,
        "max_output_tokens": 512,
    }
    values.update(kw)
    return TenantLimits(**values)


# -- PromptCounter arithmetic (no HTTP) -------------------------------------------------------


def test_estimate_is_chars_over_four_plus_four_per_message() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 40}, {"role": "system", "content": ""}]}
    # 40 + len("user") + len("system") = 50 chars → 13 tokens, + 2 × 4
    assert estimate(body) == 13 + 8
    assert estimate({"prompt": "abcdefgh"}) == 2
    assert estimate({"prompt": [1, 2, 3]}) == 3
    assert estimate({"input": ["abcd", "abcdefgh", [5, 6]]}) == 1 + 2 + 2


def test_upper_bound_is_bytes_plus_template_allowance() -> None:
    body = {"messages": [{"role": "user", "content": "héllo"}]}  # 6 bytes + 4
    assert upper_bound(body) == 10 + TEMPLATE_ALLOWANCE + PER_MESSAGE_ALLOWANCE
    assert upper_bound({"prompt": "abc"}) == 3 + 2
    assert upper_bound({"prompt": [[1, 2], [3]]}) == (2 + 2) + (1 + 2)


def test_upper_bound_is_unknown_for_images() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:..."}},
                ],
            }
        ]
    }
    assert upper_bound(body) is None
    assert estimate(body) == 4 + 4  # text parts only: ceil((12 + 4) / 4) + 4


# -- the official openai client ---------------------------------------------------------------


@pytest.mark.integration
def test_openai_sync_chat_and_usage_row(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as client:
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (PROMPT, 5)
    (row,) = gateway.usage.rows
    assert row.tenant_id.startswith("t_acme")  # type: ignore[union-attr]
    assert row.key_prefix == gateway.key[:14]
    assert (row.model, row.instance_id, row.status) == (MODEL, "i-1", 200)
    assert (row.prompt_tokens, row.completion_tokens) == (PROMPT, 5)
    assert (row.streamed, row.disconnected, row.error_code) == (False, False, None)
    assert row.duration_ms > 0
    assert gateway.lt.call(gateway.limiter.inflight) == 0


@pytest.mark.integration
def test_openai_sync_stream_without_usage_sees_no_usage_chunk(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=4,
            stream=True,
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 "
    assert all(c.usage is None and c.choices for c in chunks)
    # the engine was asked for usage anyway, and the row has the engine's numbers
    assert gateway.engine.requests[-1]["stream_options"] == {"include_usage": True}
    (row,) = gateway.usage.rows
    assert (row.prompt_tokens, row.completion_tokens, row.streamed) == (PROMPT, 4, True)
    assert row.ttft_ms is not None and 0 < row.ttft_ms <= row.duration_ms


@pytest.mark.integration
def test_openai_sync_stream_with_usage_gets_the_engines_usage(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=ALIAS,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 3
    assert gateway.usage.rows[-1].model == ALIAS


@pytest.mark.integration
def test_openai_async_chat_stream_completions_and_embeddings(gateway: Gateway) -> None:
    async def main() -> tuple[str, str, str, int]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=gateway.key, max_retries=0
        ) as client:
            r = await client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=2,
            )
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=3,
                stream=True,
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            comp = await client.completions.create(model=MODEL, prompt="one two", max_tokens=2)
            emb = await client.embeddings.create(model=MODEL, input=["a b", "c"])
            return (
                r.choices[0].message.content or "",
                "".join(parts),
                comp.choices[0].text,
                len(emb.data),
            )

    assert run_async(main()) == ("w0 w1", "w0 w1 w2 ", "w0 w1", 2)
    rows = gateway.usage.rows
    assert [r.streamed for r in rows] == [False, True, False, False]
    assert [r.completion_tokens for r in rows] == [2, 3, 2, 0]
    assert rows[2].prompt_tokens == 2 and rows[3].prompt_tokens == 3
    assert "max_tokens" not in gateway.engine.requests[-1]  # embeddings: no output cap


@pytest.mark.integration
def test_openai_async_completion_stream(gateway: Gateway) -> None:
    async def main() -> str:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=gateway.key, max_retries=0
        ) as client:
            stream = await client.completions.create(
                model=MODEL, prompt="a b c", max_tokens=4, stream=True
            )
            return "".join([c.choices[0].text async for c in stream if c.choices])

    assert run_async(main()) == "w0 w1 w2 w3 "
    row = gateway.usage.rows[-1]
    assert (row.prompt_tokens, row.completion_tokens, row.streamed) == (3, 4, True)


@pytest.mark.integration
def test_streamed_bytes_equal_what_plain_vllm_sends(gateway: Gateway) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6, "stream": True}
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=body, headers=gateway.headers()
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = b"".join(r.iter_raw())
    plain = gateway.engine.stream_events(body, PROMPT, 6, chat=True)
    assert got == b"".join(plain)


@pytest.mark.integration
def test_engine_without_stream_usage_is_accounted_by_chunks(gateway: Gateway) -> None:
    gateway.engine.send_usage = False
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 7, "stream": True}
    assert chat(gateway, body).status_code == 200
    row = gateway.usage.rows[-1]
    assert (row.completion_tokens, row.error_code, row.status) == (7, None, 200)
    assert row.prompt_tokens == estimate(body)  # the gateway's own count stands


# -- the output cap, the context cap ------------------------------------------------------------


@pytest.mark.integration
def test_request_without_max_tokens_gets_the_cap_set_explicitly(gateway: Gateway) -> None:
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 200
    assert gateway.engine.requests[-1]["max_tokens"] == GENEROUS.max_output_tokens


@pytest.mark.integration
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_too_many_output_tokens_is_400_output_too_long(gateway: Gateway, field: str) -> None:
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES, field: 513})
    err = assert_error(r, 400, "output_too_long")
    assert err["param"] == field
    assert "512" in err["message"]
    assert gateway.engine.requests == []
    assert gateway.usage.rows[-1].error_code == "output_too_long"


@pytest.mark.integration
def test_clamp_output_lowers_the_request_to_the_cap(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(clamp_output=True)
    r = chat(gw, {"model": MODEL, "messages": MESSAGES, "max_tokens": 100_000})
    assert r.status_code == 200
    assert gw.engine.requests[-1]["max_tokens"] == 512


@pytest.mark.integration
def test_bad_max_tokens_is_400_naming_the_field(gateway: Gateway) -> None:
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": "lots"})
    err = assert_error(r, 400, "invalid_request")
    assert err["param"] == "max_tokens"


@pytest.mark.integration
def test_long_prompt_is_counted_by_the_engine_and_refused(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(max_context_tokens=600))
    long_messages = [{"role": "user", "content": " ".join(["word"] * 700)}]
    r = chat(gw, {"model": MODEL, "messages": long_messages, "max_tokens": 5})
    err = assert_error(r, 400, "context_too_long")
    assert "703 tokens" in err["message"] and "600" in err["message"]
    assert gw.engine.tokenize_calls == 1
    assert gw.engine.requests == []  # nothing sent upstream


@pytest.mark.integration
def test_prompt_near_the_cap_but_under_it_passes_after_an_exact_count(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(tenant_limits=limits(max_context_tokens=600))
    # 500 words ≈ 2,500 bytes: over the cheap bound, 503 tokens by the engine's count
    messages = [{"role": "user", "content": " ".join(["word"] * 500)}]
    r = chat(gw, {"model": MODEL, "messages": messages, "max_tokens": 5})
    assert r.status_code == 200, r.text
    assert gw.engine.tokenize_calls == 1


@pytest.mark.integration
def test_short_prompts_do_not_cost_a_tokenize_call(gateway: Gateway) -> None:
    for _ in range(3):
        assert chat(gateway, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    assert gateway.engine.tokenize_calls == 0


@pytest.mark.integration
def test_engine_without_tokenizer_falls_back_to_the_estimate(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(max_context_tokens=600))
    gw.engine.tokenize_available = False
    # 1,000 one-letter words: 2,000 chars → estimate 500 + 4 ≤ 600 (the engine would say 1,003)
    messages = [{"role": "user", "content": " ".join(["a"] * 1000)}]
    assert chat(gw, {"model": MODEL, "messages": messages, "max_tokens": 1}).status_code == 200
    assert chat(gw, {"model": MODEL, "messages": messages, "max_tokens": 1}).status_code == 200
    assert gw.engine.tokenize_calls == 1  # the 404 is remembered per instance
    too_long = [{"role": "user", "content": " ".join(["a"] * 1300)}]
    r = chat(gw, {"model": MODEL, "messages": too_long, "max_tokens": 1})
    assert_error(r, 400, "context_too_long")


# -- body, JSON, auth, routing errors ------------------------------------------------------------


@pytest.mark.integration
def test_declared_oversized_body_is_413(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_body_bytes=1000)
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 1000}]})
    r = httpx.post(gw.base_url + "/chat/completions", content=body, headers=gw.headers())
    err = assert_error(r, 413, "body_too_large")
    assert "1000" in err["message"]
    assert gw.engine.requests == []


@pytest.mark.integration
def test_chunked_oversized_body_is_413_without_reading_it_all(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_body_bytes=1000)
    sent = 0

    def chunks() -> Any:
        nonlocal sent
        for _ in range(10):
            sent += 400
            yield b"x" * 400

    r = httpx.post(gw.base_url + "/chat/completions", content=chunks(), headers=gw.headers())
    assert_error(r, 413, "body_too_large")
    assert gw.engine.requests == []


@pytest.mark.integration
def test_body_at_the_limit_is_accepted(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_body_bytes=1000)
    base = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": ""}]})
    body = orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * (1000 - len(base))}]}
    )
    assert len(body) == 1000
    r = httpx.post(gw.base_url + "/chat/completions", content=body, headers=gw.headers())
    assert r.status_code == 200, r.text


@pytest.mark.integration
@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"model": "tiny", "messages": [', "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_malformed_json_is_400_naming_the_problem(
    gateway: Gateway, content: bytes, words: str
) -> None:
    r = httpx.post(
        gateway.base_url + "/chat/completions", content=content, headers=gateway.headers()
    )
    err = assert_error(r, 400, "invalid_json")
    assert words in err["message"]
    assert err["type"] == "invalid_request_error"


@pytest.mark.integration
def test_missing_model_is_400(gateway: Gateway) -> None:
    err = assert_error(chat(gateway, {"messages": MESSAGES}), 400, "invalid_request")
    assert err["param"] == "model"


@pytest.mark.integration
def test_missing_or_unknown_key_is_401(gateway: Gateway) -> None:
    r = httpx.post(gateway.base_url + "/chat/completions", json={"model": MODEL})
    err = assert_error(r, 401, "invalid_api_key")
    assert err["type"] == "authentication_error"
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES}, key="sk-st-" + "A" * 43)
    assert_error(r, 401, "invalid_api_key")
    assert gateway.engine.requests == []
    assert gateway.usage.rows == []  # no tenant known: metrics only
    text = gateway.lt.call(gateway.metrics.render)
    assert 'studioctl_gateway_rejections_total{reason="invalid_api_key",tenant=""} 2' in text


@pytest.mark.integration
def test_disabled_tenant_is_403(gateway: Gateway) -> None:
    key = gateway.add_tenant("off", enabled=False)
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES}, key=key)
    err = assert_error(r, 403, "tenant_disabled")
    assert err["type"] == "permission_error"


@pytest.mark.integration
def test_model_not_allowed_for_tenant_is_403(gateway: Gateway) -> None:
    key = gateway.add_tenant("narrow", limits(allowed_models=("other",)))
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES}, key=key)
    err = assert_error(r, 403, "model_not_allowed")
    assert err["param"] == "model"


@pytest.mark.integration
def test_unknown_model_is_404(gateway: Gateway) -> None:
    r = chat(gateway, {"model": "nope", "messages": MESSAGES})
    assert_error(r, 404, "model_not_found")


@pytest.mark.integration
def test_known_model_not_running_is_503_with_hint(gateway: Gateway) -> None:
    r = chat(gateway, {"model": "other", "messages": MESSAGES})
    err = assert_error(r, 503, "model_not_running")
    assert err["hint"] == "studioctl launch other-recipe"


@pytest.mark.integration
def test_loading_model_is_503_with_retry_after(make_gateway: GatewayFactory) -> None:
    # It waits in the model's queue first (tests/gateway/test_queue_gateway.py); this is
    # the answer once queue_timeout_s is over.
    gateway = make_gateway(queue_timeout_s=0.2)
    engine = gateway.engine
    gateway.set_upstreams(
        [Upstream("i-1", "tiny-recipe", engine.host, engine.port, "loading", (MODEL,))],
        {MODEL: "tiny-recipe"},
    )
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES})
    assert_error(r, 503, "model_loading", retry_after=5)
    assert gateway.usage.rows[-1].queue_ms >= 199.0


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_concurrency_limit_is_429_with_retry_after(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(max_concurrent=1))
    gw.engine.head_delay_s = 0.5
    first: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: first.append(chat(gw, {"model": MODEL, "messages": MESSAGES}))
    )
    t.start()
    gw.wait_for(lambda: gw.engine.inflight == 1)
    r = chat(gw, {"model": MODEL, "messages": MESSAGES})
    t.join()
    err = assert_error(r, 429, "limit_concurrent", retry_after=1)
    assert err["type"] == "rate_limit_error"
    assert first[0].status_code == 200


@pytest.mark.integration
def test_rpm_limit_is_429_with_computed_retry_after(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(rpm=2))
    for _ in range(2):
        assert chat(gw, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    r = chat(gw, {"model": MODEL, "messages": MESSAGES})
    assert_error(r, 429, "limit_rpm", retry_after=30)  # a whole token at 2/min: 30 s


@pytest.mark.integration
def test_tpm_limit_is_429_with_computed_retry_after(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(tpm=1100, max_output_tokens=512))
    # each request reserves estimate + 500 and really uses PROMPT + 500 (the stand-in
    # generates max_tokens): two fit in 1,100; the third lacks ~410 tokens, which the bucket
    # (1,100/min) refills in ~22 s
    statuses = []
    for _ in range(3):
        r = chat(gw, {"model": MODEL, "messages": MESSAGES, "max_tokens": 500})
        statuses.append(r.status_code)
    assert statuses == [200, 200, 429]
    need = PROMPT + 500 - (1100 - 2 * (PROMPT + 500))
    wait = need * 60 / 1100
    assert_error(r, 429, "limit_tpm", retry_after=int(r.headers["retry-after"]))
    assert wait - 2 <= int(r.headers["retry-after"]) <= wait + 1


# -- upstream failures ------------------------------------------------------------------------


@pytest.mark.integration
def test_upstream_timeout_is_504_and_frees_the_slot(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(upstream_timeout_s=0.3)
    gw.engine.head_delay_s = 3.0
    t0 = time.monotonic()
    r = chat(gw, {"model": MODEL, "messages": MESSAGES})
    assert time.monotonic() - t0 < 2.0
    err = assert_error(r, 504, "upstream_timeout")
    assert "0.3 s" in err["message"]
    gw.wait_for(lambda: gw.engine.aborted == 1)
    assert gw.lt.call(gw.limiter.inflight) == 0
    assert gw.usage.rows[-1].error_code == "upstream_timeout"


@pytest.mark.integration
def test_upstream_timeout_mid_stream_ends_the_stream_with_an_error_event(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(upstream_timeout_s=0.3)
    gw.engine.token_delay_s = 2.0
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "stream": True}
    r = chat(gw, body)
    assert r.status_code == 200
    events = [e for e in r.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert orjson.loads(events[-2][6:])["error"]["code"] == "upstream_timeout"
    row = gw.usage.rows[-1]
    assert (row.error_code, row.streamed) == ("upstream_timeout", True)


@pytest.mark.integration
def test_connection_refused_is_502(gateway: Gateway) -> None:
    gateway.set_upstreams(
        [Upstream("i-9", "tiny-recipe", "127.0.0.1", closed_port(), "ready", (MODEL,))], {}
    )
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES})
    err = assert_error(r, 502, "upstream_error")
    assert "i-9" in err["message"]
    assert gateway.lt.call(gateway.limiter.inflight) == 0


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True])
def test_engine_errors_pass_through_with_status_and_body(gateway: Gateway, stream: bool) -> None:
    engine_error = {
        "object": "error",
        "message": "This model's maximum context length is 512 tokens",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    gateway.engine.fail = (400, engine_error)
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES, "stream": stream})
    assert r.status_code == 400
    assert r.json() == engine_error
    row = gateway.usage.rows[-1]
    assert (row.status, row.error_code) == (400, "upstream_400")
    assert gateway.lt.call(gateway.limiter.inflight) == 0


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "sent", "relayed"),
    [(503, "30", "30"), (429, "7", "7"), (503, None, "1"),
     (429, "Wed, 21 Oct 2026 07:28:00 GMT", "1"), (503, "0", "1"), (503, "9" * 40, "1")],
)  # fmt: skip
def test_an_engines_own_retry_after_is_relayed(
    gateway: Gateway, status: int, sent: str | None, relayed: str
) -> None:
    """An engine's 429/503 keeps its Retry-After when it is a number of seconds (1 s to a
    day); without one, or with a date or a hostile value, the gateway's own 1 s."""
    gateway.engine.fail = (status, {"object": "error", "message": "busy", "code": status})
    gateway.engine.fail_headers = {"Retry-After": sent} if sent is not None else {}
    for stream in (False, True):
        r = chat(gateway, {"model": MODEL, "messages": MESSAGES, "stream": stream})
        assert r.status_code == status and r.headers["retry-after"] == relayed, r.headers


@pytest.mark.integration
def test_engine_closing_idle_keepalive_connections_is_harmless(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(engine_keepalive_s=0.1)
    for stream in (False, True, False):
        r = chat(gw, {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, "stream": stream})
        assert r.status_code == 200, r.text
        time.sleep(0.3)  # the engine has closed the pooled connection meanwhile
    assert gw.engine.completed == 3


@pytest.mark.integration
def test_keepalive_connections_are_reused(gateway: Gateway) -> None:
    for stream in (False, True) * 5:
        r = chat(gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, "stream": stream})
        assert r.status_code == 200
    assert len(gateway.engine.peers) == 1  # ten requests, one upstream connection


@pytest.mark.integration
def test_alias_unknown_to_the_engine_is_sent_with_the_engines_name(gateway: Gateway) -> None:
    engine = gateway.engine
    gateway.set_upstreams(
        [Upstream("i-1", "r", engine.host, engine.port, "ready", (MODEL, ALIAS), (MODEL,))], {}
    )
    assert chat(gateway, {"model": ALIAS, "messages": MESSAGES}).status_code == 200
    assert chat(gateway, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    assert [r["model"] for r in engine.requests] == [MODEL, MODEL]
    assert [r.model for r in gateway.usage.rows] == [ALIAS, MODEL]  # as the client named it


@pytest.mark.integration
def test_anonymous_access_on_loopback_when_allowed(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(anonymous=True, allow_anonymous=True, host="127.0.0.1")
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    assert gw.usage.rows[-1].tenant_id == "anonymous"
    # a wrong key is still refused
    r = chat(gw, {"model": MODEL, "messages": MESSAGES}, key="sk-st-" + "B" * 43)
    assert_error(r, 401, "invalid_api_key")


@pytest.mark.integration
@pytest.mark.parametrize(
    "settings",
    [{"allow_anonymous": True, "host": "0.0.0.0"}, {"allow_anonymous": False}],
)
def test_anonymous_access_refused_off_loopback_or_when_not_allowed(
    make_gateway: GatewayFactory, settings: dict[str, Any]
) -> None:
    gw = make_gateway(anonymous=True, **settings)
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    err = assert_error(r, 401, "invalid_api_key")
    assert "loopback" in err["message"]
    assert_error(httpx.get(gw.base_url + "/models"), 401, "invalid_api_key")


@pytest.mark.integration
@pytest.mark.parametrize("report", [{"ok": False, "store": "unreachable"}, {"status": "degraded"}])
def test_unhealthy_report_is_503(make_gateway: GatewayFactory, report: dict[str, Any]) -> None:
    async def unhealthy() -> dict[str, Any]:
        return report

    r = httpx.get(make_gateway(health=unhealthy).url + "/healthz")
    assert (r.status_code, r.json()) == (503, report)


@pytest.mark.integration
def test_failing_health_check_is_503(make_gateway: GatewayFactory) -> None:
    async def broken() -> dict[str, Any]:
        raise RuntimeError("store locked")

    gw = make_gateway(health=broken)
    r = httpx.get(gw.url + "/healthz")
    assert r.status_code == 503
    assert "store locked" in r.json()["error"]


@pytest.mark.integration
def test_long_stream_to_a_slow_client_arrives_whole(make_gateway: GatewayFactory) -> None:
    # ~1 MB of events: more than the relay buffers (256 kB) before it stops reading upstream
    gw = make_gateway(tenant_limits=limits(max_output_tokens=6000))
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6000, "stream": True}
    received = b""
    with httpx.stream(
        "POST", gw.base_url + "/chat/completions", json=body, headers=gw.headers(), timeout=30
    ) as r:
        for i, piece in enumerate(r.iter_raw(16384)):
            received += piece
            if i < 20:
                time.sleep(0.02)  # a slow reader at first: backpressure all the way upstream
    assert received == b"".join(gw.engine.stream_events(body, PROMPT, 6000, chat=True))
    assert gw.usage.rows[-1].completion_tokens == 6000


async def _close_delimited_server(sock: Any) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, sock=sock)


@pytest.mark.integration
def test_upstream_body_delimited_by_connection_close(gateway: Gateway) -> None:
    from .conftest import bound_socket

    sock = bound_socket()
    port = sock.getsockname()[1]
    server = gateway.lt.run(_close_delimited_server(sock))
    try:
        gateway.set_upstreams([Upstream("i-2", "r", "127.0.0.1", port, "ready", (MODEL,))], {})
        for _ in range(2):  # the closed connection is not reused
            r = chat(gateway, {"model": MODEL, "messages": MESSAGES})
            assert r.status_code == 200
            assert r.json()["usage"]["completion_tokens"] == 2
    finally:
        server.close()
        gateway.lt.run(server.wait_closed())
    assert gateway.usage.rows[-1].completion_tokens == 2


def _load_fixed_upstream() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "upstream_fixed.py"
    spec = importlib.util.spec_from_file_location("upstream_fixed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_benchmark_upstream_through_the_gateway(gateway: Gateway) -> None:
    """The benchmark's fixed upstream speaks HTTP the gateway relays correctly."""
    fixed = _load_fixed_upstream()
    from .conftest import bound_socket

    sock = bound_socket()
    port = sock.getsockname()[1]

    async def start() -> Any:
        loop = asyncio.get_running_loop()
        return await loop.create_server(fixed.FixedHTTP, sock=sock)

    server = gateway.lt.run(start())
    try:
        gateway.set_upstreams([Upstream("i-b", "b", "127.0.0.1", port, "ready", ("bench",))], {})
        body = {"model": "bench", "messages": MESSAGES, "max_tokens": 16}
        r = chat(gateway, body)
        assert r.status_code == 200 and r.content == fixed.COMPLETION
        r = chat(gateway, {**body, "stream": True})
        events = [e for e in r.content.split(b"\n\n") if e]
        assert len(events) == fixed.CHUNKS + 1  # 100 chunks and [DONE]; usage stripped
        assert b'"usage"' not in r.content
        row = gateway.usage.rows[-1]
        assert (row.prompt_tokens, row.completion_tokens) == (8, 99)
    finally:
        server.close()


# -- other routes ------------------------------------------------------------------------------


@pytest.mark.integration
def test_wrong_method_and_unknown_path(gateway: Gateway) -> None:
    r = httpx.get(gateway.base_url + "/chat/completions")
    assert_error(r, 405, "method_not_allowed")
    assert_error(httpx.get(gateway.url + "/nope"), 404, "not_found")
    assert_error(httpx.post(gateway.url + "/livez"), 405, "method_not_allowed")


@pytest.mark.integration
def test_health_and_version(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/livez").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/healthz").json()["instances"] == {"i-1": "ready"}
    assert httpx.get(gateway.url + "/version").json() == {"version": "0.1.0", "api": 1}


@pytest.mark.integration
def test_models_needs_a_key_and_lists_ready_and_known(gateway: Gateway) -> None:
    assert_error(httpx.get(gateway.base_url + "/models"), 401, "invalid_api_key")
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as client:
        models = {m.id: m.model_extra for m in client.models.list()}
    # "other" is known but not loaded on demand, nor running: not offered.
    assert set(models) == {MODEL, ALIAS}
    assert models[MODEL] is not None
    assert models[MODEL]["studioctl"] == {
        "state": "ready",
        "recipe": "tiny-recipe",
        "instance": "i-1",
    }
    gateway.lt.call(lambda: gateway.routes.recipes_changed({"other": "o-r"}, on_demand={"o-r"}))
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as client:
        models = {m.id: m.model_extra for m in client.models.list()}
    assert models["other"] is not None and models["other"]["studioctl"]["state"] == "available"
    narrow = gateway.add_tenant("narrow", limits(allowed_models=(ALIAS,)))
    r = httpx.get(gateway.base_url + "/models", headers=gateway.headers(narrow))
    assert [m["id"] for m in r.json()["data"]] == [ALIAS]


@pytest.mark.integration
def test_admin_without_configured_token_is_503(gateway: Gateway) -> None:
    r = httpx.get(gateway.url + "/admin/tenants", headers={"X-Admin-Token": "x"})
    assert_error(r, 503, "admin_unavailable")


@pytest.mark.integration
def test_admin_token_is_checked_then_forwarded_without_prefix(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(admin_token="s3cret")
    assert_error(httpx.get(gw.url + "/admin/tenants"), 401, "unauthorized")
    r = httpx.get(gw.url + "/admin/tenants", headers={"X-Admin-Token": "wrong"})
    assert_error(r, 401, "unauthorized")
    r = httpx.post(gw.url + "/admin/tenants/acme", headers={"X-Admin-Token": "s3cret"})
    assert r.status_code == 200
    assert r.json() == {"path": "/tenants/acme", "method": "POST"}


@pytest.mark.integration
def test_admin_over_the_unix_socket_needs_no_token(gateway: Gateway, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway.lt.run(gateway.serve_unix(sock))
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock)) as client:
        r = client.get("http://studioctl/admin/instances")
        assert r.json() == {"path": "/instances", "method": "GET"}
        assert client.get("http://studioctl/metrics").status_code == 200


@pytest.mark.integration
def test_metrics_needs_the_admin_token_and_parses(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(admin_token="tok")
    assert chat(gw, {"model": MODEL, "messages": MESSAGES, "max_tokens": 3}).status_code == 200
    assert chat(gw, {"model": "nope", "messages": MESSAGES}).status_code == 404
    assert_error(httpx.get(gw.url + "/metrics"), 401, "unauthorized")
    r = httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer tok"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = {
        (s.labels["model"], s.labels["status"]): s.value
        for s in families["studioctl_gateway_requests"].samples
    }
    # an invented name is no label of its own (each would open a series)
    assert requests == {(MODEL, "200"): 1.0, (OTHER_MODEL, "404"): 1.0}
    tokens = families["studioctl_gateway_completion_tokens"].samples
    assert [s.value for s in tokens] == [3.0]
    assert "studioctl_instance_up" in families


@pytest.mark.integration
def test_public_metrics_need_no_token(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(metrics_public=True)
    assert httpx.get(gw.url + "/metrics").status_code == 200


@pytest.mark.integration
def test_cors_is_off_by_default(gateway: Gateway) -> None:
    r = httpx.options(
        gateway.base_url + "/chat/completions",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 405
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES},
        headers={**gateway.headers(), "Origin": "http://app.example"},
    )
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.integration
def test_cors_allows_configured_origins(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(cors_origins=("http://app.example",))
    pre = httpx.options(
        gw.base_url + "/chat/completions",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    ok = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES},
        headers={**gw.headers(), "Origin": "http://app.example"},
    )
    assert ok.headers["access-control-allow-origin"] == "http://app.example"
    refused = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "nope", "messages": MESSAGES},
        headers={**gw.headers(), "Origin": "http://app.example"},
    )
    assert refused.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(
        gw.base_url + "/chat/completions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.status_code == 403
    assert "access-control-allow-origin" not in other.headers


# -- under load ---------------------------------------------------------------------------------


async def _parallel(gw: Gateway, n: int, body: dict[str, Any]) -> list[tuple[int, str | None]]:
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, str | None]:
            async with session.post(
                gw.base_url + "/chat/completions", json=body, headers=gw.headers()
            ) as r:
                data = await r.json()
                code = data["error"]["code"] if r.status != 200 else None
                if r.status == 429:
                    assert r.headers["Retry-After"] == "1"
                return r.status, code

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.integration
@pytest.mark.parametrize("where", ["global", "tenant"])
def test_500_parallel_requests_never_exceed_5_in_flight_upstream(
    make_gateway: GatewayFactory, where: str
) -> None:
    if where == "global":
        gw = make_gateway(max_concurrent=5)
    else:
        gw = make_gateway(tenant_limits=limits(max_concurrent=5))
    gw.engine.head_delay_s = 0.05
    results = run_async(_parallel(gw, 500, {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert gw.engine.max_inflight <= 5
    assert len(ok) == gw.engine.completed >= 5
    assert refused and all(r == (429, "limit_concurrent") for r in refused)
    assert len(ok) + len(refused) == 500
    assert gw.lt.call(gw.limiter.inflight) == 0
    assert len(gw.usage.rows) == 500


async def _abort_streams(gw: Gateway, n: int, parallel: int, read_events: int) -> list[int]:
    """Open ``n`` streams, read ``read_events`` content events of each, then hang up."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 200, "stream": True}
    sem = asyncio.Semaphore(parallel)
    connector = aiohttp.TCPConnector(limit=parallel, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with sem:
                resp = await session.post(
                    gw.base_url + "/chat/completions", json=body, headers=gw.headers()
                )
                assert resp.status == 200
                seen = 0
                buf = b""
                while seen < read_events:
                    buf += await resp.content.readany()
                    seen = buf.count(b'"content":"w')
                resp.close()  # hang up mid-stream
                return seen

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_1000_streams_aborted_midway_release_everything(gateway: Gateway) -> None:
    gateway.engine.token_delay_s = 0.005
    t0 = time.monotonic()
    seen = run_async(_abort_streams(gateway, 1000, parallel=100, read_events=3))
    settle = gateway.wait_for(
        lambda: (
            gateway.limiter.inflight() == 0
            and gateway.routes.inflight() == 0
            and gateway.engine.inflight == 0
        ),
        timeout=1.0,
    )
    assert settle < 1.0
    assert min(seen) >= 3
    assert gateway.engine.aborted == 1000  # every upstream request was closed
    assert gateway.engine.completed == 0
    gateway.wait_for(lambda: len(gateway.usage.rows) == 1000, timeout=5.0)
    rows = gateway.usage.rows
    assert all(r.disconnected and r.streamed for r in rows)
    assert all(r.error_code == "client_disconnected" for r in rows)
    assert all(3 <= r.completion_tokens < 200 for r in rows)
    assert all(r.prompt_tokens == PROMPT for r in rows)  # the engine's exact count
    assert time.monotonic() - t0 < 30


@pytest.mark.integration
def test_client_leaving_a_slow_non_streamed_request_aborts_upstream(gateway: Gateway) -> None:
    gateway.engine.head_delay_s = 5.0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.base_url + "/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
            headers=gateway.headers(),
            timeout=0.3,
        )
    gateway.wait_for(lambda: gateway.engine.aborted == 1, timeout=1.0)
    gateway.wait_for(lambda: gateway.limiter.inflight() == 0, timeout=1.0)
    row = gateway.usage.rows[-1]
    assert (row.status, row.disconnected, row.error_code) == (499, True, "client_disconnected")
