"""Misbehaving engines behind the real gateway: what the client gets, what is accounted.

The gateway runs under uvicorn (conftest.py); the engine is a scripted raw HTTP server on
127.0.0.1 (scripted_upstream.py) routed as model ``m``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from studioctl.gateway.routing import Upstream

from .conftest import Gateway
from .scripted_upstream import CONTINUE, EARLY_HINTS, Received, Script, ScriptedEngine, answer

MESSAGES = [{"role": "user", "content": "hello"}]
Writer = asyncio.StreamWriter

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_answer(tag: str) -> bytes:
    events = [
        {"choices": [{"index": 0, "delta": {"content": tag}}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    ]
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return SSE_HEAD + chunked(body) + b"0\r\n\r\n"


@pytest.fixture
def engine_for(gateway: Gateway) -> Iterator[Any]:
    """``engine_for(script, api_key=None)``: a scripted engine serving model ``m``."""
    started: list[ScriptedEngine] = []

    def start(script: Script, api_key: str | None = None) -> ScriptedEngine:
        engine = gateway.lt.run(ScriptedEngine(script).start())
        started.append(engine)
        up = Upstream("i-s", "r", engine.host, engine.port, "ready", ("m",), api_key=api_key)
        gateway.set_upstreams([up], {"m": "r"})
        return engine

    yield start
    for engine in started:
        gateway.lt.run(engine.stop())


def post(gw: Gateway, stream: bool = False, key: str | None = None) -> httpx.Response:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": stream}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=gw.headers(key))


def content(r: httpx.Response) -> str:
    if r.headers["content-type"].startswith("text/event-stream"):
        first = r.content.split(b"\n\n")[0]
        return str(orjson.loads(first[6:])["choices"][0]["delta"]["content"])
    return str(r.json()["choices"][0]["message"]["content"])


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True])
def test_interim_100_continue_is_not_the_answer(
    gateway: Gateway, engine_for: Any, stream: bool
) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(CONTINUE + EARLY_HINTS)
        await w.drain()
        await asyncio.sleep(0.05)  # the answer comes in a later read
        w.write(sse_answer(f"r{n}") if stream else answer(f"r{n}"))

    engine = engine_for(script)
    for n in range(2):
        r = post(gateway, stream)
        assert r.status_code == 200, r.text
        assert content(r) == f"r{n}"
    rows = gateway.usage.rows
    assert [(row.status, row.completion_tokens) for row in rows] == [(200, 1), (200, 1)]
    assert engine.connections == 1


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True])
def test_an_extra_response_never_reaches_the_next_client(
    gateway: Gateway, engine_for: Any, stream: bool
) -> None:
    pending: dict[int, bytes] = {}  # connection → the rest of its unasked response

    async def script(n: int, req: Received, w: Writer) -> None:
        # Each answer is followed by one nobody asked for ("someone else's completion"): its
        # head and most of it while the connection is idle, the rest with the next answer.
        make = sse_answer if stream else answer
        w.write(pending.pop(req.conn, b"") + make(f"r{n}"))
        await w.drain()
        await asyncio.sleep(0.02)
        leak = make(f"leak{n}")
        w.write(leak[:-8])
        pending[req.conn] = leak[-8:]

    engine_for(script)
    other = gateway.add_tenant("other")
    for n in range(4):
        r = post(gateway, stream, key=other if n % 2 else None)
        assert r.status_code == 200, r.text
        assert content(r) == f"r{n}"
    assert [row.status for row in gateway.usage.rows] == [200] * 4


@pytest.mark.integration
def test_an_engine_that_half_closes_after_each_answer(gateway: Gateway, engine_for: Any) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(answer(f"r{n}"))
        w.write_eof()

    engine = engine_for(script)
    for n in range(3):
        r = post(gateway)
        assert r.status_code == 200 and content(r) == f"r{n}"
    assert engine.connections == 3


@pytest.mark.integration
@pytest.mark.parametrize("status", [b"600", b"999", b"099"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_status_outside_100_to_599_is_502_and_accounted(
    gateway: Gateway, engine_for: Any, status: bytes, stream: bool
) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\n{}")

    engine_for(script)
    r = post(gateway, stream)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    (row,) = gateway.usage.rows
    assert (row.status, row.error_code) == (502, "upstream_error")
    assert gateway.lt.call(gateway.limiter.inflight) == 0


@pytest.mark.integration
def test_the_engines_key_is_sent_and_the_clients_never(gateway: Gateway, engine_for: Any) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        auth = [ln for ln in req.head.split(b"\r\n") if ln.lower().startswith(b"authorization:")]
        ok = auth == [b"Authorization: Bearer sk-engine-secret"]
        w.write(answer(f"r{n}") if ok else answer("unauthorized", 401))

    engine = engine_for(script, api_key="sk-engine-secret")
    for stream in (False, True):
        r = httpx.post(
            gateway.base_url + "/chat/completions",
            json={"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": stream},
            headers={**gateway.headers(), "X-Client-Header": "private", "Cookie": "c=1"},
        )
        assert r.status_code == 200, r.text
    for req in engine.requests:
        assert gateway.key.encode() not in req.head + req.body
        lower = req.head.lower()
        assert b"x-client-header" not in lower and b"cookie" not in lower


@pytest.mark.integration
def test_a_crlf_framed_stream_is_relayed_without_the_usage_chunk_and_accounted(
    gateway: Gateway, engine_for: Any
) -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"content": "a"}}]},
        {"choices": [{"index": 0, "delta": {"content": "b"}}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}},
    ]
    body = [b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events] + [b"data: [DONE]\r\n\r\n"]

    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(SSE_HEAD)
        for event in body:  # one chunk each, cut inside the blank line's \r\n
            w.write(chunked(event[:-1]) + chunked(event[-1:]))
            await w.drain()
        w.write(b"0\r\n\r\n")

    engine_for(script)
    r = post(gateway, stream=True)
    assert r.status_code == 200
    assert r.content == body[0] + body[1] + body[3]  # the usage chunk was not asked for
    (row,) = gateway.usage.rows
    assert (row.status, row.prompt_tokens, row.completion_tokens) == (200, 3, 7)


@pytest.mark.integration
@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_a_client_that_leaves_right_after_done_is_no_disconnect_in_any_framing(
    gateway: Gateway, engine_for: Any, end: str
) -> None:
    """The client has the whole stream once [DONE] came through: closing then (before the
    engine ends its response) is the client done, not a client gone mid-stream."""
    nl = end.encode()
    events = [
        {"choices": [{"index": 0, "delta": {"content": "a"}}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    ]
    body = b"".join(b"data: " + orjson.dumps(e) + nl + nl for e in events)
    body += b"data: [DONE]" + nl + nl
    client_closed = threading.Event()

    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(SSE_HEAD + chunked(body))
        await w.drain()
        # The response's end is held back until the client has closed.
        await asyncio.get_running_loop().run_in_executor(None, client_closed.wait, 10)
        w.write(b"0\r\n\r\n")
        await w.drain()

    engine_for(script)
    payload = {"model": "m", "messages": MESSAGES, "max_tokens": 4, "stream": True}
    seen = b""
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=payload, headers=gateway.headers()
    ) as r:
        assert r.status_code == 200
        for piece in r.iter_raw():
            seen += piece
            if b"[DONE]" in seen:
                break  # and close, as clients do
    client_closed.set()
    gateway.wait_for(lambda: len(gateway.usage.rows) == 1)
    (row,) = gateway.usage.rows
    assert (row.status, row.disconnected, row.completion_tokens) == (200, False, 1)
