"""The daemon's HTTP servers: uvicorn (httptools, uvloop) with the bounds a public server needs.

uvicorn bounds none of what a hostile client controls: how long a request head may take, how
large it may grow, how long a declared body may stall, how many connections may be open, how
long a client may leave our response unread. ``GuardedHttpToolsProtocol`` adds these to
uvicorn's ``HttpToolsProtocol``; ``Server`` runs one uvicorn server on a socket we bound, with
that protocol and one sweeper task per server (timers per server, not per request: the hot
path only records the phase of the connection it is in; a bound holds to within one sweep,
a quarter of the shortest bound, 0.05 to 1 s; 0.5 s with the defaults)::

    a connection that sends nothing for header_timeout_s          closed (nothing to answer)
    a request head not complete header_timeout_s after it began   408 request_timeout, closed
    a request head beyond max_header_bytes (or MAX_HEADER_FIELDS)  431 header_too_large, closed;
                                                                  at most max_header_bytes of
                                                                  a head are fed to the parser
                                                                  (+ one read, when pipelined
                                                                  behind another request)
    no byte of a declared body for body_timeout_s                 408 request_timeout, closed
    our response left unread (write buffer full) for send_timeout_s  closed
    an idle keep-alive connection after keepalive_timeout_s       closed (uvicorn's own timer)
    a connection beyond max_connections                           503 too_many_connections at
                                                                  once, closed; the connections
                                                                  already open are served

An error answer is followed by a lingering close (nginx's ``lingering_close``): our side is
half-closed and what the client still sends is read and dropped for up to LINGER_S, so that a
client still sending its oversized head reads the 431 instead of a connection reset.

This module is the ONE home for the daemon's reliance on uvicorn internals; nothing else
imports from ``uvicorn.protocols`` or touches ``uvicorn.Server``'s attributes. It relies on:
``HttpToolsProtocol`` (its constructor, ``connections``, ``transport``, ``flow``
(``FlowControl.read_paused``/``resume_reading``), ``cycle`` (``RequestResponseCycle``:
``response_started``, ``response_complete``, ``disconnected``, ``message_event``), ``headers``,
``loop``, the httptools callbacks ``on_headers_complete``/``on_message_complete``,
``data_received`` catching ``httptools.HttpParserError`` and calling ``send_400_response``,
``pause_writing``/``resume_writing``), ``uvicorn.Config(http=<protocol class>)``, and
``uvicorn.Server``'s ``servers`` (the asyncio servers), ``server_state.connections``/``tasks`` and
``capture_signals``. Checked against the uvicorn sources of 0.30.0, 0.32.0, 0.35.0, 0.40.0 and
0.47.0 (the same names; ``data_received`` identical in 0.40, 0.47 and 0.54) and run against
0.54.0 (tests/test_httpserver.py exercises every one of these); pyproject.toml pins
``>=0.30,<0.55``. A new uvicorn: read ``uvicorn/protocols/http/httptools_impl.py`` and
``uvicorn/server.py`` for the names above, run those tests, then widen the pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from studioctl.settings import GatewaySettings

log = logging.getLogger("studioctl.httpserver")

#: Header lines per request head (431 beyond): bounds the Python objects a head makes (a
#: 64 KiB head of empty headers would be ~16,000 tuples). Browsers send ~20, proxies add a few.
MAX_HEADER_FIELDS = 256
#: Seconds an error answer's connection is read (and dropped) before it is cut.
LINGER_S = 2.0
#: Seconds between reports of refused / timed-out connections in the log (never one line per
#: connection: a flood must not become a log flood).
REPORT_EVERY_S = 10.0


@dataclass(frozen=True)
class ServerLimits:
    """The bounds of one HTTP server (the ``gateway.*`` settings of the same names)."""

    # Defaults: the settings' own (one home for them).
    header_timeout_s: float = GatewaySettings.header_timeout_s
    body_timeout_s: float = GatewaySettings.body_timeout_s
    send_timeout_s: float = GatewaySettings.send_timeout_s
    keepalive_timeout_s: float = GatewaySettings.keepalive_timeout_s
    max_header_bytes: int = GatewaySettings.max_header_bytes
    max_connections: int = GatewaySettings.max_connections

    @classmethod
    def from_settings(
        cls, gs: GatewaySettings, *, max_connections: int | None = None
    ) -> ServerLimits:
        return cls(
            header_timeout_s=gs.header_timeout_s,
            body_timeout_s=gs.body_timeout_s,
            send_timeout_s=gs.send_timeout_s,
            keepalive_timeout_s=gs.keepalive_timeout_s,
            max_header_bytes=gs.max_header_bytes,
            max_connections=max_connections if max_connections is not None else gs.max_connections,
        )

    def sweep_interval(self) -> float:
        """How often the sweeper looks: a quarter of the shortest bound, 50 ms to 1 s."""
        shortest = min(self.header_timeout_s, self.body_timeout_s, self.send_timeout_s, LINGER_S)
        return max(0.05, min(1.0, shortest / 4))


@dataclass
class ServerStats:
    """What one server refused or cut, since it started (read by tests and the log report)."""

    refused: int = 0  # beyond max_connections
    header_timeouts: int = 0  # silent connections and slow heads
    body_timeouts: int = 0
    send_timeouts: int = 0
    too_large: int = 0  # 431
    malformed: int = 0  # uvicorn's own 400 (not HTTP, a bad head)

    def total(self) -> int:
        return (
            self.malformed
            + self.refused
            + self.header_timeouts
            + self.body_timeouts
            + self.send_timeouts
            + self.too_large
        )


def _answer(status: int, reason: str, code: str, message: str, *, retry_after: bool) -> bytes:
    """A complete HTTP/1.1 error answer with the OpenAI error envelope, closing the connection."""
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    ).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_TIMEOUT = _answer(
    408, "Request Timeout", "request_timeout", "the request was not received in time",
    retry_after=False,
)  # fmt: skip
_TOO_LARGE = _answer(
    431, "Request Header Fields Too Large", "header_too_large",
    "the request head is too large", retry_after=False,
)  # fmt: skip
_TOO_MANY = _answer(
    503, "Service Unavailable", "too_many_connections",
    "the server has too many open connections; retry shortly", retry_after=True,
)  # fmt: skip

# The phases of a connection (small ints: compared on the hot path).
_WAIT = 0  # accepted, no byte yet: header_timeout_s from the accept
_HEAD = 1  # a request head is arriving: header_timeout_s from its first byte
_BODY = 2  # the head is complete, the body is not: body_timeout_s from the last byte
_AFTER = 3  # the request is read; the response runs (uvicorn's keep-alive timer follows it)
_IDLE = 4  # read and answered, uvicorn's keep-alive timer not armed (see on_message_complete)
_LINGER = 5  # answered with an error: drop what arrives, cut after LINGER_S
_UNSET = -1.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; ``send_400_response`` answers instead."""


class _Guard:
    """A connection's bookkeeping, in one slotted object: uvicorn's protocol already has 28
    instance attributes, and beyond 30 CPython stops sharing the instance dict's keys, which
    slows every attribute access of uvicorn's own per-request code (measured: +3 us/request)."""

    __slots__ = ("head_bytes", "heads", "phase", "refused", "reject", "since", "stalled_since")

    def __init__(self) -> None:
        self.phase = _WAIT
        # Loop time the current phase's clock started; _UNSET: at the sweeper's next look
        # (the hot path reads no clock: the sweeper starts them, at most one interval late).
        self.since = _UNSET
        self.head_bytes = 0  # bytes received towards the current request head
        self.heads = 0  # request heads completed on this connection
        self.reject: bytes | None = None  # the answer send_400_response gives after _Refused
        self.stalled_since: float | None = None  # our writes paused (the client reads nothing)
        self.refused = False  # beyond max_connections: never served


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``limits`` (set per server: ``Server``
    makes a subclass). The sweeper calls ``_expire`` on every connection; the rest of the
    added work is a phase assignment in the parser callbacks. The hot path calls
    HttpToolsProtocol's methods directly (``super()`` makes an object per call)."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    stats: ClassVar[ServerStats] = ServerStats()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        HttpToolsProtocol.__init__(self, *args, **kwargs)
        self._g = _Guard()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        g = self._g
        if len(self.connections) >= self.limits.max_connections:
            # Beyond the limit: a short answer and the door, before any per-connection state.
            self.transport = transport
            g.refused = True
            g.phase = _LINGER
            type(self).stats.refused += 1
            transport.write(_TOO_MANY)
            transport.close()
            return
        HttpToolsProtocol.connection_made(self, transport)
        g.since = self.loop.time()  # a silent connection is timed from the accept

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._g.refused:
            HttpToolsProtocol.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        g = self._g
        while data:
            phase = g.phase
            if phase == _BODY:
                g.since = _UNSET  # progress: the body clock starts again
                HttpToolsProtocol.data_received(self, data)
                return
            if phase == _LINGER:
                return  # an answer was given: what follows is dropped
            if phase != _HEAD:  # the first bytes of a head
                if phase != _WAIT:  # a fresh connection's first head is timed from the accept
                    g.since = _UNSET
                g.phase = _HEAD
            # Head bytes: the parser gets at most max_header_bytes of a head in progress.
            room = self.limits.max_header_bytes - g.head_bytes
            if len(data) <= room:
                g.head_bytes += len(data)
                HttpToolsProtocol.data_received(self, data)
                return
            heads = g.heads
            if room > 0:
                g.head_bytes += room
                HttpToolsProtocol.data_received(self, data[:room])
            if g.heads == heads:  # still no complete head within the limit
                if g.phase != _LINGER:
                    type(self).stats.too_large += 1
                    self._refuse(_TOO_LARGE)
                return
            data = data[room:]  # a head completed: the rest is its body or the next request

    def pause_writing(self) -> None:
        self._g.stalled_since = self.loop.time()
        HttpToolsProtocol.pause_writing(self)

    def resume_writing(self) -> None:
        self._g.stalled_since = None
        HttpToolsProtocol.resume_writing(self)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if len(self.headers) > MAX_HEADER_FIELDS:
            type(self).stats.too_large += 1
            self._g.reject = _TOO_LARGE
            raise _Refused
        g = self._g
        g.phase = _BODY
        g.since = _UNSET
        g.head_bytes = 0
        g.heads += 1
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # Answered before the body was read (401, 413): uvicorn armed its keep-alive timer
            # when the answer went out, and the body bytes since then cancelled it.
            self._g.phase = _IDLE
            self._g.since = _UNSET
        else:
            self._g.phase = _AFTER

    def send_400_response(self, msg: str) -> None:
        reject = self._g.reject
        if reject is None:
            type(self).stats.malformed += 1
            HttpToolsProtocol.send_400_response(self, msg)  # malformed: uvicorn's own 400
            return
        self._g.reject = None
        self._refuse(reject)

    # -- the bounds ------------------------------------------------------------------------

    def _refuse(self, answer: bytes) -> None:
        """Answer ``answer`` (unless a response has begun), then close lingering."""
        transport = self.transport
        self._g.phase = _LINGER
        self._g.since = self.loop.time()
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app waiting for this body gets http.disconnect; what it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                transport.close()  # a response is half sent: nothing else can follow it
                return
        if self.flow is not None:
            self.flow.resume_reading()  # read and drop what the client still sends
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def _expire(self, now: float) -> None:
        """Called by the sweeper: enforce the bound of the phase this connection is in."""
        g = self._g
        phase = g.phase
        limits = self.limits
        if g.since == _UNSET and phase != _AFTER:
            g.since = now  # the phase's clock starts at this look
            return
        if phase == _AFTER:
            stalled = g.stalled_since
            if stalled is not None and now - stalled >= limits.send_timeout_s:
                type(self).stats.send_timeouts += 1
                g.phase = _LINGER
                g.since = now
                self.transport.abort()  # the client reads nothing: its buffer would never drain
        elif phase == _BODY:
            if self.flow is not None and self.flow.read_paused:
                g.since = now  # the app has not taken what it has: not the client's delay
            elif now - g.since >= limits.body_timeout_s:
                type(self).stats.body_timeouts += 1
                self._refuse(_TIMEOUT)
        elif phase == _HEAD:
            if now - g.since >= limits.header_timeout_s:
                type(self).stats.header_timeouts += 1
                self._refuse(_TIMEOUT)
        elif phase == _WAIT:
            if now - g.since >= limits.header_timeout_s:
                type(self).stats.header_timeouts += 1
                g.phase = _LINGER
                g.since = now
                self.transport.close()  # it never asked anything: nothing to answer
        elif phase == _IDLE:
            if now - g.since >= limits.keepalive_timeout_s:
                self.transport.close()
        elif now - g.since >= LINGER_S and not g.refused:  # _LINGER
            self.transport.abort()


def protocol_class(limits: ServerLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``limits``, with its own stats (one per server)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "stats": ServerStats()},
    )


class Server:
    """One uvicorn server on a socket we bound, with ``limits``, without uvicorn's signal
    handling (the daemon owns the signals). ``stop_accepting()`` closes the listener and keeps
    the open connections; ``stop()`` then ends the server (uvicorn's graceful shutdown)."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        limits: ServerLimits,
        *,
        name: str = "http",
        graceful_s: float = 5.0,
    ) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.protocol = protocol_class(limits)
        cfg = uvicorn.Config(
            app,
            http=self.protocol,
            ws="none",  # no WebSocket routes: an Upgrade must not switch to an unguarded protocol
            proxy_headers=False,  # clients talk to us directly; never trust X-Forwarded-*
            lifespan="off",
            # uvicorn warns once per malformed or Upgrade request: a client could fill the log.
            # Those are counted in ``stats`` and reported every REPORT_EVERY_S instead.
            log_level="error",
            access_log=False,
            timeout_keep_alive=limits.keepalive_timeout_s,  # type: ignore[arg-type]  # a float works
            timeout_graceful_shutdown=max(1, round(graceful_s)),
        )
        self.server = Quiet(cfg)
        self.sock = sock
        self.name = name
        self.limits = limits

    @property
    def stats(self) -> ServerStats:
        return self.protocol.stats

    def connections(self) -> int:
        return len(self.server.server_state.connections)

    def inflight(self) -> int:
        """Requests whose ASGI task has not finished."""
        return len(self.server.server_state.tasks)

    async def serve(self) -> None:
        sweeper = asyncio.get_running_loop().create_task(self._sweep())
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    def stop_accepting(self) -> None:
        """Close the listener: no new connections; the open ones are served on."""
        for srv in getattr(self.server, "servers", ()):
            srv.close()

    def stop(self) -> None:
        self.server.should_exit = True

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.limits.sweep_interval()
        state = self.server.server_state
        stats = self.stats
        reported = 0
        next_report = loop.time() + REPORT_EVERY_S
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(state.connections):
                if isinstance(conn, GuardedHttpToolsProtocol):
                    try:
                        conn._expire(now)
                    except Exception:  # one broken connection must not stop the sweeper
                        log.exception("%s: sweeping a connection failed", self.name)
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                if stats.total() != reported:
                    reported = stats.total()
                    log.warning(
                        "%s: since start %d connections refused (max_connections %d), "
                        "%d header timeouts, %d body timeouts, %d send timeouts, "
                        "%d heads too large, %d malformed requests",
                        self.name,
                        stats.refused,
                        self.limits.max_connections,
                        stats.header_timeouts,
                        stats.body_timeouts,
                        stats.send_timeouts,
                        stats.too_large,
                        stats.malformed,
                    )
