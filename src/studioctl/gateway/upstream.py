"""The gateway's upstream HTTP/1.1 client: keep-alive connections to the engines.

Measured on this machine (one core, uvloop, fixed upstream): an aiohttp ClientSession POST
costs ~145 µs of CPU per request, this client ~35 µs — the difference is half of the
gateway's whole per-request budget. It does only what the engines need: HTTP/1.1 POST
with a Content-Length body, keep-alive, responses with Content-Length or chunked bodies
(parsed by httptools, as uvicorn does), streaming reads with flow control, and one timeout:
no bytes from the engine for ``read_timeout`` seconds.

A pooled connection must stay in step: the n-th response read is the answer to the n-th
request sent, or one client reads another's completion. So interim 1xx responses are
skipped (a 101 upgrade is an error: we never ask for one), a status outside 100-599 is a
protocol error, and a connection is never reused once anything arrives that no request of
ours asked for (bytes while idle, a second response after the first, an EOF), nor when its
response was not read to the end. What the engine sends after our next request has gone
out cannot be told apart from its answer; the checks see everything that arrived before.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studioctl.gateway.routing import Upstream


class UpstreamClosed(ConnectionError):
    """The engine closed the connection before the response was complete."""


class UpstreamConnectError(ConnectionError):
    """No connection to the engine could be made (refused, unreachable, timed out)."""


class UpstreamProtocolError(ConnectionError):
    """The engine's answer is not a valid HTTP/1.1 response to our request (an OSError, so
    the proxy answers 502 ``upstream_error``)."""


# Interim (1xx) responses accepted before the answer to one request.
_MAX_INTERIM = 16
# Buffered response bytes above which the engine connection stops being read (a slow client).
_HIGH_WATER = 256 * 1024


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to an engine, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        import httptools

        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # HttpParserUpgrade (a 101 with Upgrade) is no HttpParserError subclass.
        self._parse_errors = (httptools.HttpParserError, httptools.HttpParserUpgrade)
        self.closed = False
        self.sent = False  # a request is out and its response not yet released
        # A streamed upload waits here while the engine does not take its bytes.
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.content_type = b"application/json"
        self.retry_after: bytes | None = None  # the engine's own, on a 429/503
        self.framed = False  # Content-Length or chunked: else the body ends at EOF
        self.keep_alive = False
        self.head = False  # response headers received
        self.complete = False  # response fully received
        self.received = False  # any byte of this response received
        self.interim = 0  # 1xx responses skipped so far
        self.error: BaseException | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_data = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self.sent:  # idle: nothing was asked, so nothing may be answered
            self._fail(UpstreamProtocolError("the engine sent data on an idle connection"))
            self.close()
            return
        self.received = True
        self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except self._parse_errors as exc:
            cause = exc.__context__  # a callback's own exception, wrapped by httptools
            if not isinstance(cause, UpstreamProtocolError):
                cause = UpstreamProtocolError(f"invalid HTTP from the engine: {exc!r}")
            self._fail(cause)
            self.close()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        d = self.drained
        if d is not None and not d.done():
            d.set_result(None)

    async def writable(self) -> None:
        """Until the transport's write buffer is below its high-water mark again (a streamed
        upload sends no faster than the engine reads); raises if the connection fails."""
        if self.error is not None:
            raise self.error
        if not self.write_paused:
            return
        self.drained = self.loop.create_future()
        try:
            await self.drained
        finally:
            self.drained = None

    def eof_received(self) -> bool | None:
        self.closed = True  # never reused; connection_lost follows
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head and not self.framed and not self.complete and exc is None:
            self.complete = True  # a body delimited by the end of the connection
            self.keep_alive = False
            self._wake()
        elif not self.complete:
            self._fail(UpstreamClosed(f"the engine closed the connection ({exc or 'EOF'})"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second response to one request: out of step from here on
            raise UpstreamProtocolError("the engine sent a response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if n == 12 and name.lower() == b"content-type":
            self.content_type = value
        elif n == 11 and name.lower() == b"retry-after":
            self.retry_after = value
        elif (n == 14 and name.lower() == b"content-length") or (
            n == 17 and name.lower() == b"transfer-encoding"
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 200 <= status <= 599:
            if 100 <= status <= 199 and status != 101:
                # Interim (100 Continue, 103 Early Hints): no body; the answer follows.
                self.interim += 1
                if self.interim > _MAX_INTERIM:  # data, but never an answer: no timeout fires
                    raise UpstreamProtocolError("the engine sent 1xx responses without end")
                self.content_type = b"application/json"
                self.framed = False
                return
            if status == 101:
                raise UpstreamProtocolError("the engine switched protocols (101) unasked")
            raise UpstreamProtocolError(f"the engine answered an invalid status {status}")
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head:  # the end of an interim response
            return
        self.complete = True
        self._wake()

    # waiting

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        d = self.drained
        if d is not None and not d.done():
            d.set_exception(exc)
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    async def _wait(self, timeout: float) -> None:
        """Until the parser makes progress; TimeoutError after ``timeout`` s without data.
        Whatever ends the wait early (an error, a timeout, the caller's cancellation) leaves
        the response unread: the connection is closed then, whatever the caller does."""
        if self.error is not None:
            self.close()
            raise self.error
        waiter = self.waiter = self.loop.create_future()
        self.last_data = self.loop.time()
        self.timer = self.loop.call_later(timeout, self._check_timeout, waiter, timeout)
        try:
            await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self.timer.cancel()
            self.waiter = None

    def _check_timeout(self, waiter: asyncio.Future[None], timeout: float) -> None:
        if waiter.done():
            return
        idle = self.loop.time() - self.last_data
        if idle >= timeout:
            waiter.set_exception(TimeoutError())
        else:  # data came meanwhile: wait for the rest of the period
            self.timer = self.loop.call_later(timeout - idle, self._check_timeout, waiter, timeout)

    async def read_head(self, timeout: float) -> None:
        while not self.head:
            await self._wait(timeout)

    async def read_all(self, timeout: float) -> bytes:
        while not self.complete:
            await self._wait(timeout)
        return self._take()

    async def read_some(self, timeout: float) -> bytes:
        """The next body bytes available; b"" once the response is complete."""
        while not self.chunks and not self.complete:
            await self._wait(timeout)
        return self._take()

    def _take(self) -> bytes:
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        """Drop the connection (the engine sees the client go away and aborts)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections per engine address; most recently used first.

    Built anywhere; it binds to the running event loop at its first request (and again
    after :meth:`close`)."""

    loop: asyncio.AbstractEventLoop  # bound by the first request

    def __init__(self, *, keepalive_s: float, connect_timeout_s: float) -> None:
        self._bound = False
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}
        # Per engine address: (its API key, the request line's tail and the fixed headers up
        # to the Content-Length value), built once: the request bytes are on the hot path.
        self._heads: dict[tuple[str, int], tuple[str | None, bytes]] = {}

    async def request(
        self,
        upstream: Upstream,
        path: bytes,
        body: bytes,
        timeout: float,
        request_id: bytes = b"",
    ) -> UpstreamConn:
        """Send ``POST path`` and wait for the response head; the caller reads the body and
        then calls :meth:`release` (or ``conn.close()`` to abandon it). ``request_id``: sent
        as X-Request-Id (a token, checked by ``context.request_id``)."""
        if not self._bound:
            self.loop = asyncio.get_running_loop()
            self._bound = True
        key = (upstream.host, upstream.port)
        head = self._heads.get(key)
        if head is None or head[0] != upstream.api_key:  # new engine, or a new key on its port
            head = self._heads[key] = (upstream.api_key, _request_head(upstream))
        rid = b"\r\nX-Request-Id: " + request_id if request_id else b""
        message = b"".join(
            (b"POST ", path, head[1], str(len(body)).encode(), rid, b"\r\n\r\n", body)
        )
        conn = self._reused(key)
        if conn is not None:
            try:
                return await self._send(conn, message, timeout)
            except UpstreamClosed:
                if conn.received:
                    raise
                # The engine closed this idle connection as we wrote to it: nothing of the
                # request was processed, so it is sent again on a fresh connection.
        conn = await self._connect(key)
        return await self._send(conn, message, timeout)

    async def request_streamed(
        self,
        upstream: Upstream,
        path: bytes,
        content_type: bytes,
        length: int | None,
        chunks: AsyncIterator[bytes],
        timeout: float,
    ) -> UpstreamConn:
        """Send ``POST path`` with a body sent as ``chunks`` arrive (``length``: its
        Content-Length, None: chunked), on a new connection (a body already partly sent
        cannot be sent again on another); wait for the response head. An answer that comes
        before the body is all sent (an engine refusing it) ends the upload: that connection
        is not reused. Whatever ``chunks`` raises ends the request (the connection closed)."""
        if not self._bound:
            self.loop = asyncio.get_running_loop()
            self._bound = True
        framing = (
            b"Content-Length: " + str(length).encode()
            if length is not None
            else b"Transfer-Encoding: chunked"
        )
        head = b"".join(
            (b"POST ", path, _base_head(upstream), b"\r\nContent-Type: ", content_type,
             b"\r\n", framing, b"\r\n\r\n")
        )  # fmt: skip
        conn = await self._connect((upstream.host, upstream.port))
        assert conn.transport is not None
        conn.sent = True
        try:
            conn.transport.write(head)
            async for chunk in chunks:
                if conn.head or conn.error is not None:
                    conn.keep_alive = False  # answered early: the body is cut short
                    break
                if chunk:
                    if length is None:
                        chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
                    conn.transport.write(chunk)
                    if conn.write_paused:  # the engine reads no more: wait, within timeout
                        async with asyncio.timeout(timeout):
                            await conn.writable()
            else:
                if length is None:
                    conn.transport.write(b"0\r\n\r\n")
            await conn.read_head(timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _send(self, conn: UpstreamConn, message: bytes, timeout: float) -> UpstreamConn:
        assert conn.transport is not None
        conn.sent = True
        conn.transport.write(message)
        try:
            await conn.read_head(timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def _reused(self, key: tuple[str, int]) -> UpstreamConn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        deadline = self.loop.time() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > deadline:
                conn._reset()
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> UpstreamConn:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConn(self, key), key[0], key[1]
                )
        except TimeoutError:
            raise UpstreamConnectError(
                f"connect timed out after {self.connect_timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(exc.strerror or str(exc)) from exc
        return conn

    def release(self, conn: UpstreamConn) -> None:
        """Back to the pool if the response was read to the end and keep-alive allows."""
        if not conn.complete or not conn.keep_alive or conn.closed or conn.error is not None:
            conn.close()
            return
        conn.sent = False  # from now on, any byte from the engine puts it out of step
        now = self.loop.time()
        conn.idle_since = now
        idle = self._idle.setdefault(conn.key, [])
        idle.append(conn)
        # Expire the least recently used one if it is past the keep-alive time.
        if len(idle) > 1 and idle[0].idle_since < now - self.keepalive_s:
            idle.pop(0).close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._bound = False


def _request_head(upstream: Upstream) -> bytes:
    """`` HTTP/1.1``, Host, the engine's Authorization if it has a key, Content-Type, and the
    Content-Length name: the fixed part of every request to ``upstream`` (nothing of the
    client's headers is ever forwarded)."""
    return _base_head(upstream) + b"\r\nContent-Type: application/json\r\nContent-Length: "


def _base_head(upstream: Upstream) -> bytes:
    """`` HTTP/1.1``, Host and the engine's Authorization if it has a key."""
    lines = [b" HTTP/1.1", b"Host: " + upstream.base_url[7:].encode()]
    key = upstream.api_key
    if key is not None:
        if not _TOKEN68.fullmatch(key):  # never let a key break the request's framing
            raise UpstreamConnectError("the engine's API key is not a valid header value")
        lines.append(b"Authorization: Bearer " + key.encode())
    return b"\r\n".join(lines)


# Visible ASCII without spaces: what a Bearer credential may hold in a header.
_TOKEN68 = re.compile(r"[\x21-\x7e]+")
