"""A raw HTTP/1.1 client for the load generator: asyncio protocols, httptools' parser, a pool.

Why not httpx or aiohttp: the load generator must not be the bottleneck of what it measures.
On one core against a fixed-response server with 64 connections, each request timed, this
client drove 16,700-18,900 requests/s, aiohttp's 2,900-4,400 and httpx's AsyncClient under
100 (``benchmarks/bench_ceiling.py --compare``, on a shared 2-core machine). Here a request is one
prebuilt bytes object written to a kept-alive connection, and an answer is parsed by
httptools (the parser uvicorn uses) in the protocol's ``data_received``, which also takes the
clock once per network read, so every server-sent event of one read gets the time it arrived.

One pool per run, one host; connections are reused (keep-alive) and at most ``limit`` are
open. A request that fails its connection (reset, timeout, bad answer) closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
import time
from collections import deque
from typing import Any, Protocol

import httptools

# The answers of an OpenAI-compatible server are small JSON or a stream of events; a status
# line and headers above this are not one (bounded, like every peer-controlled text here).
_MAX_HEAD = 64 << 10


class RequestFailed(Exception):
    """A request that got no whole answer. ``kind`` is the error kind the report counts:
    ``connect``, ``disconnected``, ``timeout``, ``bad_response``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Sink(Protocol):
    """Receives one answer as it arrives. ``t`` is the read's time (``time.perf_counter``)."""

    def headers(self, status: int, t: float) -> None: ...

    def body(self, data: bytes, t: float) -> None: ...


class Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.now = 0.0
        self.head_bytes = 0
        self.closed = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RequestFailed("bad_response", "unexpected upgrade"))
        except httptools.HttpParserError as exc:
            # A sink's own refusal (a body above its bound) comes wrapped by the parser.
            inner = exc.__context__
            if isinstance(inner, RequestFailed):
                self._fail(inner)
            else:
                self._fail(RequestFailed("bad_response", str(exc)[:200]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            # An answer without Content-Length ends with the connection.
            with contextlib.suppress(httptools.HttpParserError):
                self.parser.feed_data(b"")
            if not self.waiter.done():
                self.waiter.set_exception(RequestFailed("disconnected", "connection closed"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > _MAX_HEAD:
            raise RequestFailed("bad_response", f"headers above {_MAX_HEAD} bytes")

    def on_headers_complete(self) -> None:
        if self.sink is not None:
            self.sink.headers(self.parser.get_status_code(), self.now)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.body(body, self.now)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self.parser.should_keep_alive())

    # -- the client side

    def _fail(self, exc: RequestFailed) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def timed_out(self) -> None:
        self._fail(RequestFailed("timeout", "no whole answer in time"))

    async def send(self, data: bytes, sink: Sink, timeout: float | None) -> bool:
        """Write one request and wait for its whole answer; True when the connection may be
        used again. Raises RequestFailed."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.sink = sink
        self.head_bytes = 0
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout, self.timed_out) if timeout else None
        try:
            self.transport.write(data)
            return await self.waiter
        finally:
            if timer is not None:
                timer.cancel()
            self.sink = None
            self.waiter = None


class Pool:
    """Kept-alive connections to one host, at most ``limit`` open (None: no bound)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        limit: int | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl: _ssl.SSLContext | None = _ssl.create_default_context() if tls else None
        self.connect_timeout = connect_timeout
        self.idle: deque[Connection] = deque()
        self.slots = asyncio.Semaphore(limit) if limit else None
        self.opened = 0

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(
                    Connection,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=None if self.ssl is None else self.host,
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise RequestFailed("connect", f"{self.host}:{self.port}: {exc}"[:300]) from None
        self.opened += 1
        return conn

    async def request(self, data: bytes, sink: Sink, *, timeout: float | None) -> None:
        """Send ``data`` on a pooled connection; the answer goes to ``sink``."""
        if self.slots is not None:
            await self.slots.acquire()
        conn: Connection | None = None
        try:
            while self.idle:
                candidate = self.idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
            if conn is None:
                conn = await self._open()
            reusable = await conn.send(data, sink, timeout)
            if reusable and not conn.closed:
                self.idle.append(conn)
            else:
                conn.abort()
            conn = None
        finally:
            if conn is not None:  # failed or cancelled mid-request: its stream is unknown
                conn.abort()
            if self.slots is not None:
                self.slots.release()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().abort()


def request_bytes(
    method: str, host: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """One HTTP/1.1 request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Collect:
    """A sink that keeps a bounded body (JSON answers: tokenize, non-streamed completions)."""

    def __init__(self, limit: int = 16 << 20) -> None:
        self.status = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.t_headers = 0.0
        self.t_end = 0.0

    def headers(self, status: int, t: float) -> None:
        self.status = status
        self.t_headers = t

    def body(self, data: bytes, t: float) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise RequestFailed("bad_response", f"answer body above {self.limit} bytes")
        self.parts.append(data)
        self.t_end = t

    def json(self) -> Any:
        import orjson

        return orjson.loads(b"".join(self.parts))
