"""The upstream pool against real, misbehaving engines on 127.0.0.1 (no gateway in between).

The pool must stay in step: the response a caller reads is the answer to its own request, or
one tenant reads another's completion. Each engine here is a scripted raw HTTP server
(scripted_upstream.py) doing one thing wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from studioctl.gateway.routing import Upstream
from studioctl.gateway.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
)

from .conftest import LoopThread
from .scripted_upstream import (
    CONTINUE,
    EARLY_HINTS,
    Received,
    ScriptedEngine,
    answer,
    completion,
    response,
)

TIMEOUT = 10.0
PATH = b"/v1/chat/completions"
BODY = b'{"model":"m","messages":[]}'

Writer = asyncio.StreamWriter
Script = Callable[[int, Received, Writer], Awaitable[None]]


@asynccontextmanager
async def engine_and_pool(script: Script) -> AsyncIterator[tuple[ScriptedEngine, UpstreamPool]]:
    engine = await ScriptedEngine(script).start()
    pool = UpstreamPool(keepalive_s=60.0, connect_timeout_s=5.0)
    try:
        yield engine, pool
    finally:
        pool.close()
        await engine.stop()


def upstream(engine: ScriptedEngine, api_key: str | None = None) -> Upstream:
    return Upstream("i-1", "r", engine.host, engine.port, "ready", ("m",), api_key=api_key)


async def fetch(pool: UpstreamPool, up: Upstream) -> tuple[int, bytes, bytes]:
    """One request read to its end and released: (status, content type, body)."""
    conn = await pool.request(up, PATH, BODY, TIMEOUT)
    body = await conn.read_all(TIMEOUT)
    pool.release(conn)
    return conn.status, conn.content_type, body


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Until ``predicate()`` holds (the other end of a loopback socket has caught up)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def settle() -> None:
    """Let this loop poll its sockets: bytes already written on loopback are delivered."""
    for _ in range(3):
        await asyncio.sleep(0.02)


def run(loop_thread: LoopThread, coro: Awaitable[Any]) -> Any:
    async def wrap() -> Any:
        return await coro

    return loop_thread.run(wrap(), timeout=60)


# -- interim responses -------------------------------------------------------------------------


@pytest.mark.parametrize("separate", [False, True], ids=["one-write", "separate-writes"])
def test_interim_1xx_responses_are_skipped(loop_thread: LoopThread, separate: bool) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        for part in (CONTINUE, EARLY_HINTS, answer(f"r{n}")):
            w.write(part)
            if separate:  # the final answer comes in a later read than the interim ones
                await w.drain()
                await asyncio.sleep(0.05)

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            for n in range(2):
                status, ctype, body = await fetch(pool, up)
                assert (status, ctype, body) == (200, b"application/json", completion(f"r{n}"))
            assert engine.connections == 1  # still in step, so it was reused

    run(loop_thread, main())


def test_an_unasked_101_upgrade_is_a_protocol_error(loop_thread: LoopThread) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        if n == 0:
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
            w.write(b"Connection: Upgrade\r\n\r\n\x81\x05hello")
        else:
            w.write(answer(f"r{n}"))

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            with pytest.raises(UpstreamProtocolError, match="101"):
                await pool.request(up, PATH, BODY, TIMEOUT)
            await until(lambda: engine.eofs == 1)  # that connection was dropped
            assert await fetch(pool, up) == (200, b"application/json", completion("r1"))
            assert engine.connections == 2

    run(loop_thread, main())


@pytest.mark.parametrize("status", [b"000", b"099", b"600", b"999"])
def test_a_status_outside_100_to_599_is_a_protocol_error(
    loop_thread: LoopThread, status: bytes
) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        if n == 0:
            w.write(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nno")
        else:
            w.write(answer(f"r{n}"))

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            with pytest.raises(UpstreamProtocolError) as info:
                await pool.request(up, PATH, BODY, TIMEOUT)
            assert isinstance(info.value, OSError)  # the proxy's 502 upstream_error
            assert await fetch(pool, up) == (200, b"application/json", completion("r1"))
            assert engine.connections == 2

    run(loop_thread, main())


# -- responses nobody asked for ----------------------------------------------------------------


@pytest.mark.parametrize("cut", [None, 30], ids=["whole", "part-of-its-head"])
def test_a_second_response_in_the_same_read_is_not_taken_for_the_next_request(
    loop_thread: LoopThread, cut: int | None
) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(answer(f"r{n}") + response(b"stale", ctype=b"text/plain")[:cut])

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            assert await fetch(pool, up) == (200, b"application/json", completion("r0"))
            assert await fetch(pool, up) == (200, b"application/json", completion("r1"))
            assert engine.connections == 2  # the first one was out of step: dropped

    run(loop_thread, main())


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "head-and-part-of-body"])
def test_a_response_arriving_on_an_idle_connection_is_never_read_as_an_answer(
    loop_thread: LoopThread, whole: bool
) -> None:
    go, sent = asyncio.Event(), asyncio.Event()
    stale = answer("stale")

    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(answer(f"r{n}"))
        if n == 0:
            await go.wait()  # the pool has released the connection: it is idle now
            w.write(stale if whole else stale[: len(stale) - 10])
            await w.drain()
            sent.set()
            if not whole:  # the rest of the stale answer follows the next request
                await asyncio.sleep(0.1)
                w.write(stale[len(stale) - 10 :])

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            assert await fetch(pool, up) == (200, b"application/json", completion("r0"))
            go.set()
            await sent.wait()
            await settle()
            assert await fetch(pool, up) == (200, b"application/json", completion("r1"))
            assert engine.connections == 2

    run(loop_thread, main())


@pytest.mark.parametrize("with_answer", [True, False], ids=["with-the-answer", "while-idle"])
def test_a_half_closed_connection_is_not_reused(loop_thread: LoopThread, with_answer: bool) -> None:
    released = asyncio.Event()

    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(answer(f"r{n}"))  # keep-alive as far as the headers go
        if n == 0:
            if not with_answer:
                await released.wait()
            w.write_eof()  # but no more from this side

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            assert await fetch(pool, up) == (200, b"application/json", completion("r0"))
            released.set()
            await settle()
            assert await fetch(pool, up) == (200, b"application/json", completion("r1"))
            assert engine.connections == 2
            assert [r.conn for r in engine.requests] == [1, 2]  # nothing re-sent on the first

    run(loop_thread, main())


def test_a_response_not_read_to_its_end_is_not_reused(loop_thread: LoopThread) -> None:
    big = b"x" * (4 * 1024 * 1024)

    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(response(big) if n == 0 else answer(f"r{n}"))
        await w.drain()

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            conn = await pool.request(up, PATH, BODY, TIMEOUT)
            assert conn.status == 200
            pool.release(conn)  # the caller gave up on the body
            assert conn.closed
            assert await fetch(pool, up) == (200, b"application/json", completion("r1"))
            assert engine.connections == 2

    run(loop_thread, main())


def test_a_request_cancelled_while_waiting_closes_its_connection(loop_thread: LoopThread) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        if n > 0:
            w.write(answer(f"r{n}"))
        # n == 0: never answered

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine)
            task = asyncio.create_task(pool.request(up, PATH, BODY, TIMEOUT))
            await until(lambda: len(engine.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(lambda: engine.eofs == 1)  # the engine sees the request abandoned
            assert await fetch(pool, up) == (200, b"application/json", completion("r1"))
            assert engine.connections == 2

    run(loop_thread, main())


# -- the engine's API key ----------------------------------------------------------------------


def _authorizations(head: bytes) -> list[bytes]:
    return [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"authorization:")
    ]


def test_every_request_carries_the_engines_api_key(loop_thread: LoopThread) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        ok = _authorizations(req.head) == [b"Bearer sk-engine-1"]
        w.write(answer(f"r{n}") if ok else answer("unauthorized", 401))

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            up = upstream(engine, api_key="sk-engine-1")
            for n in range(3):
                assert await fetch(pool, up) == (200, b"application/json", completion(f"r{n}"))
            assert engine.connections == 1
            assert (await fetch(pool, upstream(engine)))[0] == 401  # no key: refused

    run(loop_thread, main())


def test_a_new_key_on_the_same_port_is_used_at_once(loop_thread: LoopThread) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(answer(f"r{n}"))

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            for key in ("k-old", "k-new", None):
                await fetch(pool, upstream(engine, api_key=key))
            heads = [r.head for r in engine.requests]
            assert [_authorizations(h) for h in heads] == [[b"Bearer k-old"], [b"Bearer k-new"], []]

    run(loop_thread, main())


@pytest.mark.parametrize("key", ["a\r\nX-Injected: 1", "two words", "", "caf\u00e9"])
def test_a_key_that_is_no_header_value_is_refused_before_sending(
    loop_thread: LoopThread, key: str
) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(answer(f"r{n}"))

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            with pytest.raises(UpstreamConnectError, match="API key"):
                await pool.request(upstream(engine, api_key=key), PATH, BODY, TIMEOUT)
            assert engine.requests == []

    run(loop_thread, main())


def test_endless_interim_responses_are_a_protocol_error(loop_thread: LoopThread) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(CONTINUE * 100 + answer(f"r{n}"))

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            with pytest.raises(UpstreamProtocolError, match="1xx"):
                await pool.request(upstream(engine), PATH, BODY, TIMEOUT)

    run(loop_thread, main())


@pytest.mark.parametrize("read", ["read_all", "read_some"])
def test_a_caller_cancelled_while_reading_the_body_leaves_no_connection_open(
    loop_thread: LoopThread, read: str
) -> None:
    async def script(n: int, req: Received, w: Writer) -> None:
        w.write(response(b"x" * 100)[:-50])  # the head and half the body, then nothing

    async def main() -> None:
        async with engine_and_pool(script) as (engine, pool):
            conn = await pool.request(upstream(engine), PATH, BODY, TIMEOUT)
            reader = getattr(conn, read)
            if read == "read_some":
                assert await reader(TIMEOUT) == b"x" * 50
            task = asyncio.create_task(reader(TIMEOUT))
            await asyncio.sleep(0.05)
            task.cancel()  # e.g. the server shutting down: neither release() nor close() follow
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(lambda: engine.eofs == 1)
            assert conn.closed

    run(loop_thread, main())
