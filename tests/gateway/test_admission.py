"""What a request is checked against, in which order, and that everything it took comes back.

Hostile but bounded inputs against the gateway of conftest.py (real uvicorn, real HTTP, the
stand-in engine, 127.0.0.1 only): bodies nested deeper than the JSON writer allows, invented
model names, unbounded ``n``, prompt lists that would cost thousands of ``/tokenize`` calls;
and failures injected after admission. Every case checks the answer (a JSON envelope), the
usage row, and that the concurrency slot and the route's in-flight count are back to 0.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import orjson
import pytest

from studioctl.gateway.body import MAX_JSON_DEPTH, MAX_MODEL_CHARS, MAX_N
from studioctl.gateway.core import new_pool
from studioctl.gateway.metrics import OTHER_MODEL, GatewayMetrics
from studioctl.gateway.routing import Upstream
from studioctl.gateway.sse import SSERelay
from studioctl.gateway.tokenize import MAX_PROMPT_ITEMS, PromptCounter, estimate

from .conftest import MODEL, Gateway, GatewayFactory, LoopThread, StandinEngine
from .test_proxy import MESSAGES, assert_error, chat, limits

pytestmark = pytest.mark.integration


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def released(gw: Gateway) -> bool:
    """Nothing held: no slot, no request in flight to an instance."""
    return bool(gw.lt.call(lambda: gw.limiter.inflight() == 0 and gw.routes.inflight() == 0))


def post(gw: Gateway, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    return httpx.post(gw.base_url + path, json=body, headers=gw.headers(key), timeout=10)


# -- item 1: nesting, and every failure after admission -----------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},  # no max_tokens: the gateway sets it, so the body is written again
        {"max_tokens": 5, "stream": True},  # a stream without usage: rewritten too
        {"max_tokens": 5},  # sent as is
    ],
)
def test_a_body_nested_too_deep_is_400_and_frees_the_slot(
    make_gateway: GatewayFactory, extra: dict[str, Any]
) -> None:
    gw = make_gateway(tenant_limits=limits(max_concurrent=1))
    body = {"model": MODEL, "messages": MESSAGES, "metadata": nested(300), **extra}
    for _ in range(3):  # a leaked slot would make the second one a 429
        err = assert_error(chat(gw, body), 400, "invalid_json")
        assert str(MAX_JSON_DEPTH) in err["message"]
    assert released(gw)
    assert [r.error_code for r in gw.usage.rows] == ["invalid_json"] * 3
    assert gw.engine.requests == []
    assert chat(gw, {"model": MODEL, "messages": MESSAGES}).status_code == 200


def test_deep_tools_are_400_not_a_failure_of_the_prompt_counter(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(tenant_limits=limits(max_concurrent=1))
    r = chat(gw, {"model": MODEL, "messages": MESSAGES, "tools": nested(300)})
    assert_error(r, 400, "invalid_json")
    assert released(gw)
    assert gw.engine.tokenize_calls == 0


def test_nesting_up_to_the_bound_is_served(gateway: Gateway) -> None:
    # the body itself is one level: the field may nest MAX_JSON_DEPTH - 1 more
    body = {"model": MODEL, "messages": MESSAGES, "metadata": nested(MAX_JSON_DEPTH - 1)}
    r = chat(gateway, body)  # no max_tokens: re-written with the cap
    assert r.status_code == 200, r.text
    assert orjson.loads(gateway.engine.raw_bodies[-1])["metadata"] == body["metadata"]


async def _boom_async(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom " + "x" * 10_000)


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom " + "x" * 10_000)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("step", ["prompt count", "route begin", "upstream latency"])
def test_an_unexpected_failure_after_admission_answers_500_and_frees_everything(
    make_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    step: str,
    stream: bool,
) -> None:
    gw = make_gateway(tenant_limits=limits(max_concurrent=1, max_context_tokens=64))
    messages = MESSAGES
    if step == "prompt count":  # a prompt near the context cap: the engine counts it
        monkeypatch.setattr(gw.app.core.tokenizer, "measure", _boom_async)
        messages = [{"role": "user", "content": "word " * 20}]
    elif step == "route begin":
        monkeypatch.setattr(gw.app.core.routes, "begin", _boom)
    else:
        monkeypatch.setattr(GatewayMetrics, "upstream_latency", _boom)
    body = {"model": MODEL, "messages": messages, "stream": stream}
    with caplog.at_level(logging.ERROR, logger="studioctl.gateway"):
        for _ in range(2):  # a leaked slot would make the second one a 429
            err = assert_error(chat(gw, body), 500, "internal_error")
            assert "x" * 100 not in err["message"]
    assert released(gw)
    rows = gw.usage.rows
    assert [(r.status, r.error_code, r.model) for r in rows] == [(500, "internal_error", MODEL)] * 2
    logged = [rec.getMessage() for rec in caplog.records if "boom" in rec.getMessage()]
    assert len(logged) == 2 and all(len(m) < 5_000 for m in logged)  # client text bounded
    monkeypatch.undo()
    assert chat(gw, {"model": MODEL, "messages": MESSAGES}).status_code == 200


def test_an_unexpected_failure_mid_stream_ends_it_with_an_error_event(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = make_gateway(tenant_limits=limits(max_concurrent=1))
    real_feed = SSERelay.feed
    fed = 0

    def feed(self: SSERelay, data: bytes) -> bytes:
        nonlocal fed
        fed += 1
        if fed > 1:
            raise RuntimeError("boom")
        return real_feed(self, data)

    monkeypatch.setattr(SSERelay, "feed", feed)
    gw.engine.token_delay_s = 0.01
    r = chat(gw, {"model": MODEL, "messages": MESSAGES, "max_tokens": 20, "stream": True})
    assert r.status_code == 200
    events = [e for e in r.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert orjson.loads(events[-2][6:])["error"]["code"] == "internal_error"
    assert released(gw)
    row = gw.usage.rows[-1]
    assert (row.status, row.error_code, row.streamed) == (200, "internal_error", True)
    gw.wait_for(lambda: gw.engine.inflight == 0)


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_failure_releases_everything(gateway: Gateway, stream: bool) -> None:
    """OSError from the upstream layer (here: a reply that is not HTTP) is a 502."""
    from .conftest import bound_socket

    async def garbage(reader: Any, writer: Any) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 2000 Nope\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        writer.close()

    async def start() -> Any:
        import asyncio

        return await asyncio.start_server(garbage, sock=sock)

    sock = bound_socket()
    server = gateway.lt.run(start())
    try:
        port = sock.getsockname()[1]
        gateway.set_upstreams([Upstream("i-3", "r", "127.0.0.1", port, "ready", (MODEL,))], {})
        body = {"model": MODEL, "messages": MESSAGES, "stream": stream}
        assert_error(chat(gateway, body), 502, "upstream_error")
    finally:
        server.close()
        gateway.lt.run(server.wait_closed())
    assert released(gateway)
    row = gateway.usage.rows[-1]
    assert (row.status, row.error_code, row.instance_id) == (502, "upstream_error", "i-3")


# -- item 11: the key before the JSON ----------------------------------------------------------


def test_no_key_is_401_even_with_a_body_that_is_not_json(gateway: Gateway) -> None:
    r = httpx.post(gateway.base_url + "/chat/completions", content=b"{not json", timeout=10)
    assert_error(r, 401, "invalid_api_key")
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        content=b'{"model": "tiny", "deep": ' + b"[" * 300 + b"]" * 300 + b"}",
        timeout=10,
    )
    assert_error(r, 401, "invalid_api_key")


def test_the_body_size_comes_before_the_key(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_body_bytes=100)
    r = httpx.post(gw.base_url + "/chat/completions", content=b"x" * 200, timeout=10)
    assert_error(r, 413, "body_too_large")


# -- item 2: invented model names ---------------------------------------------------------------


def test_a_long_model_name_is_400_naming_the_bound_and_never_stored(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(admin_token="tok")
    long_name = "m" * (256 * 1024)
    for _ in range(3):
        err = assert_error(
            chat(gw, {"model": long_name, "messages": MESSAGES}), 400, "invalid_request"
        )
        assert err["param"] == "model" and str(MAX_MODEL_CHARS) in err["message"]
        assert len(err["message"]) < 500
    rows = gw.usage.rows
    assert [(r.model, r.error_code) for r in rows] == [(None, "invalid_request")] * 3
    text = httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer tok"}).text
    assert "mmmm" not in text
    assert len(text) < 20_000


def test_invented_names_are_counted_as_other_and_stored_bounded(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(admin_token="tok")
    names = [f"{i:04d}" + "n" * (MAX_MODEL_CHARS - 4) for i in range(20)]
    for name in names:
        assert_error(chat(gw, {"model": name, "messages": MESSAGES}), 404, "model_not_found")
    assert [r.model for r in gw.usage.rows] == names  # at most MAX_MODEL_CHARS each
    text = httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer tok"}).text
    assert "nnnn" not in text
    assert f'model="{OTHER_MODEL}",status="404"' in text


def test_unknown_models_count_against_the_tenants_rpm(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(rpm=3))
    for _ in range(3):
        assert_error(chat(gw, {"model": "nope", "messages": MESSAGES}), 404, "model_not_found")
    for model in ("nope", MODEL):
        r = chat(gw, {"model": model, "messages": MESSAGES})
        wait = int(r.headers["retry-after"])
        assert_error(r, 429, "limit_rpm", retry_after=wait)
        assert 15 <= wait <= 20  # a whole request at 3/min, less what refilled meanwhile
    assert released(gw)
    assert [r.error_code for r in gw.usage.rows] == ["model_not_found"] * 3 + ["limit_rpm"] * 2


def test_refusals_count_against_the_tenants_concurrency(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(max_concurrent=1))
    gw.engine.head_delay_s = 1.0
    first: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: first.append(chat(gw, {"model": MODEL, "messages": MESSAGES}))
    )
    t.start()
    try:
        gw.wait_for(lambda: gw.engine.inflight == 1)
        for model in ("nope", "m" * 1000):
            r = chat(gw, {"model": model, "messages": MESSAGES})
            assert_error(r, 429, "limit_concurrent", retry_after=1)
    finally:
        t.join()
    assert first[0].status_code == 200
    assert released(gw)


# -- item 8: n -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, MAX_N + 1, 2**63, "2", True, 1.5, [1]])
def test_n_outside_1_to_the_bound_is_400(gateway: Gateway, n: Any) -> None:
    err = assert_error(
        chat(gateway, {"model": MODEL, "messages": MESSAGES, "n": n}), 400, "invalid_request"
    )
    assert err["param"] == "n" and str(MAX_N) in err["message"]
    assert released(gateway)
    assert gateway.engine.requests == []


def test_n_multiplies_the_reservation(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(tpm=1000, max_output_tokens=100))
    body = {"model": MODEL, "messages": MESSAGES}
    r = chat(gw, {**body, "n": 2, "max_tokens": 100})  # reserves 210, uses 108
    assert r.status_code == 200, r.text
    assert gw.engine.requests[-1]["n"] == 2
    # the bucket now lacks ~100 tokens (6 s of refill): 10 choices of 100 do not fit
    r = chat(gw, {**body, "n": 10})
    err = assert_error(r, 429, "limit_tpm", retry_after=int(r.headers["retry-after"]))
    assert f"reserves {10 * 100 + estimate(body)}" in err["message"]


# -- item 4: the engine's tokenizer is work under the tenant's limits --------------------------

LONG = [{"role": "user", "content": " ".join(["word"] * 700)}]  # over the cheap bound of 600


def test_no_prompt_is_counted_for_a_tenant_out_of_rpm(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(rpm=2, max_context_tokens=600))
    for i in range(10):
        r = chat(gw, {"model": MODEL, "messages": LONG, "max_tokens": 5})
        if i < 2:
            assert_error(r, 400, "context_too_long")
        else:
            assert_error(r, 429, "limit_rpm", retry_after=int(r.headers["retry-after"]))
    assert gw.engine.tokenize_calls == 2


def test_no_prompt_is_counted_for_a_tenant_at_its_concurrency(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(tenant_limits=limits(max_concurrent=1, max_context_tokens=600))
    gw.engine.hold = release = threading.Event()  # the first request stays in flight
    t = threading.Thread(target=lambda: chat(gw, {"model": MODEL, "messages": MESSAGES}))
    t.start()
    try:
        gw.wait_for(lambda: gw.engine.inflight == 1)
        for _ in range(5):
            r = chat(gw, {"model": MODEL, "messages": LONG, "max_tokens": 5})
            assert_error(r, 429, "limit_concurrent", retry_after=1)
    finally:
        release.set()
        t.join()
    assert gw.engine.tokenize_calls == 0


def test_counting_a_prompt_list_stops_once_over_the_cap(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(max_context_tokens=600))
    prompts = [" ".join(["word"] * 100) for _ in range(50)]  # 100 tokens each, 5,000 in all
    r = post(gw, "/completions", {"model": MODEL, "prompt": prompts, "max_tokens": 5})
    err = assert_error(r, 400, "context_too_long")
    assert "at least 700 tokens" in err["message"]
    assert gw.engine.tokenize_calls == 7  # not 50
    assert released(gw)


def test_counting_a_prompt_list_stops_once_the_rest_fits(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(max_context_tokens=600))
    # one long prompt (1,500 bytes, 300 tokens) and 20 short ones (bound 4 each): once the
    # long one is counted, 300 + 20 × 4 fits under 600 whatever the short ones count
    prompts = [" ".join(["word"] * 300)] + ["hi"] * 20
    r = post(gw, "/completions", {"model": MODEL, "prompt": prompts, "max_tokens": 5})
    assert r.status_code == 200, r.text
    assert gw.engine.tokenize_calls == 1


def test_an_exact_count_of_every_prompt_when_it_decides(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tenant_limits=limits(max_context_tokens=600))
    prompts = [" ".join(["word"] * 140) for _ in range(4)]  # 560 tokens, bound 2,828
    r = post(gw, "/completions", {"model": MODEL, "prompt": prompts, "max_tokens": 5})
    assert r.status_code == 200, r.text
    assert gw.engine.tokenize_calls == 4
    prompts.append(" ".join(["word"] * 41))  # 601 tokens
    r = post(gw, "/completions", {"model": MODEL, "prompt": prompts, "max_tokens": 5})
    err = assert_error(r, 400, "context_too_long")
    assert "has 601 tokens" in err["message"]


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/chat/completions", "messages", [{"role": "user", "content": "hi"}]),
        ("/completions", "prompt", ["hi"]),
        ("/embeddings", "input", ["hi"]),
    ],
)
def test_prompt_items_are_bounded(
    gateway: Gateway, path: str, field: str, value: list[Any]
) -> None:
    body = {"model": MODEL, field: value * (MAX_PROMPT_ITEMS + 1), "max_tokens": 1}
    if path == "/embeddings":
        del body["max_tokens"]
    err = assert_error(post(gateway, path, body), 400, "invalid_request")
    assert err["param"] == field and str(MAX_PROMPT_ITEMS) in err["message"]
    assert gateway.engine.tokenize_calls == 0 and gateway.engine.requests == []
    body[field] = value * MAX_PROMPT_ITEMS
    assert post(gateway, path, body).status_code == 200


# -- issue 9: the engine's own key on /tokenize -------------------------------------------------


class _KeyedEngine(StandinEngine):
    """The stand-in engine, noting the Authorization header of every /tokenize call."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenize_auth: list[str | None] = []

    async def _tokenize(self, request: Any) -> Any:
        self.tokenize_auth.append(request.headers.get("Authorization"))
        return await super()._tokenize(request)


@pytest.mark.parametrize("api_key", ["k-engine-123", None])
def test_tokenize_sends_the_engines_key(loop_thread: LoopThread, api_key: str | None) -> None:
    engine = _KeyedEngine()
    loop_thread.run(engine.start())
    pool = new_pool()
    counter = PromptCounter(pool, timeout_s=5.0)
    try:
        up = Upstream("i-k", "r", engine.host, engine.port, "ready", (MODEL,), api_key=api_key)
        chat_body = {"model": MODEL, "messages": LONG}
        assert loop_thread.run(counter.count(up, chat_body)) == 703
        prompts = {"model": MODEL, "prompt": ["a b", "c d e"]}
        assert loop_thread.run(counter.count(up, prompts)) == 5
    finally:
        loop_thread.call(pool.close)
        loop_thread.run(engine.stop())
    expected = f"Bearer {api_key}" if api_key else None
    assert engine.tokenize_auth == [expected] * 3


def test_a_refused_stream_is_recorded_as_a_refusal_not_a_stream(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(tenant_limits=limits(max_context_tokens=600))
    r = chat(gw, {"model": MODEL, "messages": LONG, "max_tokens": 5, "stream": True})
    assert_error(r, 400, "context_too_long")
    row = gw.usage.rows[-1]
    assert (row.status, row.streamed, row.instance_id) == (400, False, None)
    assert released(gw)
