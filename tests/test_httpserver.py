"""The HTTP server's bounds (httpserver.py) against hostile clients: a real uvicorn server
(httptools, uvloop) on 127.0.0.1 in a thread, real sockets doing slowloris, short bodies, huge
heads, silent and idle connections, unread responses and a connection flood (bounded: tens of
connections, timeouts of a second). Each test also checks that normal requests still succeed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from studioctl.httpserver import MAX_HEADER_FIELDS, Server, ServerLimits

HOST = "127.0.0.1"


# -- a small app and the server in a thread -----------------------------------------------------


@dataclass
class AppLog:
    disconnects: list[str] = field(default_factory=list)  # paths whose body read saw a disconnect


def make_app(log: AppLog) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/early":  # answers without reading the body (as a 401 or 413 does)
            await respond(send, 200, b"early")
            return
        if path == "/big":  # 64 MiB a client must read
            await send({"type": "http.response.start", "status": 200, "headers": []})
            chunk = b"x" * (1 << 20)
            for _ in range(64):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.disconnects.append(path)
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await respond(send, 200, json.dumps({"path": path, "body": size}).encode())

    return app


async def respond(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Running:
    server: Server
    port: int
    log: AppLog


@contextlib.contextmanager
def serving(**limits: Any) -> Iterator[Running]:
    """A guarded uvicorn server on a free 127.0.0.1 port, in a thread with its own uvloop."""
    import uvloop

    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(2048)
    sock.setblocking(False)
    log = AppLog()
    server = Server(make_app(log), sock, ServerLimits(**limits), name="test")
    loop = uvloop.new_event_loop()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(server.serve())
        except BaseException as exc:
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"did not start: {failure}"
        time.sleep(0.01)
    try:
        yield Running(server, sock.getsockname()[1], log)
    finally:
        loop.call_soon_threadsafe(server.stop)
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"
        assert not failure, failure


# -- client helpers -----------------------------------------------------------------------------


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_answer(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    s.settimeout(timeout)
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def read_response(
    s: socket.socket, timeout: float = 10.0, buf: bytearray | None = None
) -> tuple[int, bytes]:
    """One Content-Length response on a keep-alive connection: (status, body). ``buf`` keeps
    what was read beyond it (pipelined responses)."""
    s.settimeout(timeout)
    data = buf if buf is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a response: {bytes(data)!r}"
        data += chunk
    end = data.index(b"\r\n\r\n")
    head = bytes(data[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(data) < end + 4 + length:
        chunk = s.recv(65536)
        assert chunk, "closed mid-body"
        data += chunk
    body = bytes(data[end + 4 : end + 4 + length])
    del data[: end + 4 + length]
    return int(head.split(b" ")[1]), body


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ")[1])


def error_code(answer: bytes) -> str:
    body = answer.partition(b"\r\n\r\n")[2]
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    code: str = err["code"]
    return code


def get_ok(port: int, path: str = "/ok") -> None:
    """A normal request on a fresh connection succeeds."""
    with connect(port) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, body = read_response(s)
    assert status == 200 and json.loads(body)["path"] == path


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True if the server closes ``s`` (EOF or reset) within ``timeout`` without answering."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def wait_until(fn: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- header timeout ---------------------------------------------------------------------------


def test_silent_connections_are_closed_after_the_header_timeout() -> None:
    with serving(header_timeout_s=1.0) as r:
        silent = [connect(r.port) for _ in range(20)]
        t0 = time.monotonic()
        get_ok(r.port)  # served while they sit there
        try:
            for s in silent:
                assert closed_by_peer(s, 10.0), "a silent connection was never closed"
        finally:
            for s in silent:
                s.close()
        assert time.monotonic() - t0 >= 0.9  # not before the bound (timed from the accepts)
        assert r.server.stats.header_timeouts == 20
        get_ok(r.port)


def test_slowloris_heads_get_408_in_the_header_timeout() -> None:
    from helpers import slowloris

    with serving(header_timeout_s=1.0) as r:
        slow = [connect(r.port) for _ in range(20)]
        try:  # one byte of an endless head per connection every 0.2 s
            with slowloris(slow, b"GET / HTTP/1.1\r\nX-a: ", every=0.2):
                get_ok(r.port)
                answers = [read_answer(s, timeout=10.0) for s in slow]
        finally:
            for s in slow:
                s.close()
        for answer in answers:
            assert status_of(answer) == 408 and error_code(answer) == "request_timeout"
            assert b"connection: close" in answer
        assert r.server.stats.header_timeouts == 20
        get_ok(r.port)


# -- body timeout -----------------------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_gets_408_and_the_app_a_disconnect() -> None:
    with serving(body_timeout_s=1.0) as r:
        with connect(r.port) as s:
            s.sendall(b"POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            t0 = time.monotonic()
            answer = read_answer(s, timeout=10.0)
            waited = time.monotonic() - t0
        assert status_of(answer) == 408 and error_code(answer) == "request_timeout"
        assert waited >= 0.9
        wait_until(lambda: r.log.disconnects == ["/short"], 5.0, "the app to see a disconnect")
        assert r.server.stats.body_timeouts == 1
        wait_until(lambda: r.server.inflight() == 0, 5.0, "the request's task to end")
        get_ok(r.port)


def test_a_body_that_keeps_coming_is_not_cut_by_the_body_timeout() -> None:
    with serving(body_timeout_s=1.0) as r, connect(r.port) as s:
        s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):  # 2.5 s in all, never 1 s without a byte
            s.sendall(b"x")
            time.sleep(0.25)
        status, body = read_response(s)
        assert status == 200 and json.loads(body) == {"path": "/slow", "body": 10}


def test_an_early_answer_then_a_trickled_body_does_not_hold_the_connection() -> None:
    # The app answers before reading the body (as a 401 does); the rest of the body arrives
    # after the answer and cancels uvicorn's keep-alive timer: the idle bound still applies.
    with serving(keepalive_timeout_s=1.0) as r, connect(r.port) as s:
        s.sendall(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        status, body = read_response(s)
        assert (status, body) == (200, b"early")
        time.sleep(0.2)
        s.sendall(b"56789")
        assert closed_by_peer(s, 10.0), "the idle connection was never closed"


# -- head size --------------------------------------------------------------------------------


def head_with(size: int, *, end: bool = True) -> bytes:
    """A GET head of exactly ``size`` bytes (one padding header), finished or not."""
    start = b"GET /h HTTP/1.1\r\nHost: x\r\nX-Pad: "
    tail = b"\r\n\r\n" if end else b""
    return start + b"a" * (size - len(start) - len(tail)) + tail


def test_a_head_at_the_limit_is_served_and_one_byte_more_gets_431() -> None:
    with serving(max_header_bytes=8192) as r:
        with connect(r.port) as s:
            s.sendall(head_with(8192))
            assert read_response(s)[0] == 200
        with connect(r.port) as s:
            s.sendall(head_with(8193))
            answer = read_answer(s)
        assert status_of(answer) == 431 and error_code(answer) == "header_too_large"
        assert r.server.stats.too_large == 1
        get_ok(r.port)


def test_huge_unfinished_heads_get_431_without_being_buffered() -> None:
    # Ten clients each sending a 20 MB head that never ends: the server reads at most
    # max_header_bytes of each (before the bound: +205 MB of memory).
    payload = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (20 << 20)
    me = psutil.Process()
    with serving() as r:
        get_ok(r.port)
        before = me.memory_info().rss
        answers: list[bytes] = []

        def hog() -> None:
            with connect(r.port) as s:
                with contextlib.suppress(OSError):
                    s.sendall(payload)
                answers.append(read_answer(s))

        threads = [threading.Thread(target=hog) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        grown = me.memory_info().rss - before
        assert len(answers) == 10
        for answer in answers:
            assert status_of(answer) == 431, answer[:100]
        assert r.server.stats.too_large == 10
        assert grown < 40 << 20, f"memory grew by {grown >> 20} MiB"
        get_ok(r.port)


def test_too_many_header_fields_get_431() -> None:
    with serving() as r:
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADER_FIELDS + 1))
        with connect(r.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
            answer = read_answer(s)
        assert status_of(answer) == 431 and error_code(answer) == "header_too_large"
        get_ok(r.port)


def test_bytes_that_are_not_http_get_uvicorns_400_and_are_counted() -> None:
    with serving() as r:
        with connect(r.port) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
            answer = read_answer(s)
        assert status_of(answer) == 400
        assert r.server.stats.malformed == 1  # counted (uvicorn's per-request warning is off)
        get_ok(r.port)


def test_large_bodies_and_pipelined_heads_pass_the_head_accounting() -> None:
    # A 1 MiB body arrives in reads much larger than max_header_bytes (the head is counted,
    # the body is not); 300 pipelined requests (~100 KB) cross the limit in one send.
    with serving(max_header_bytes=4096) as r:
        with connect(r.port) as s:
            body = b"b" * (1 << 20)
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            s.sendall(body)
            status, answer = read_response(s)
            assert status == 200 and json.loads(answer) == {"path": "/up", "body": len(body)}
        with connect(r.port) as s:
            one = b"GET /p HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
            s.sendall(one * 300)
            buf = bytearray()
            for _ in range(300):
                assert read_response(s, buf=buf)[0] == 200
        assert r.server.stats.too_large == 0


# -- connections ------------------------------------------------------------------------------


def test_beyond_max_connections_new_ones_get_503_and_open_ones_are_served() -> None:
    with serving(max_connections=50, header_timeout_s=60.0) as r:
        served = connect(r.port)
        served.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(served)[0] == 200
        idle = [connect(r.port) for _ in range(49)]
        try:
            wait_until(lambda: r.server.connections() == 50, 5.0, "50 connections")
            for _ in range(5):
                with connect(r.port) as extra:
                    answer = read_answer(extra, timeout=5.0)
                assert status_of(answer) == 503 and error_code(answer) == "too_many_connections"
                assert b"retry-after: 1" in answer
            assert r.server.stats.refused == 5
            # The connection already open is served on, at the limit.
            served.sendall(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(served)[0] == 200
            for s in idle[:10]:
                s.close()
            wait_until(lambda: r.server.connections() <= 40, 5.0, "closed connections to go")
            get_ok(r.port)
        finally:
            served.close()
            for s in idle:
                s.close()


def test_idle_keepalive_connections_are_closed() -> None:
    with serving(keepalive_timeout_s=1.0) as r, connect(r.port) as s:
        s.sendall(b"GET /ka HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
        t0 = time.monotonic()
        assert closed_by_peer(s, 10.0)
        assert time.monotonic() - t0 >= 0.5  # not at once (the bound is 1 s from the answer)


def test_a_response_left_unread_is_cut_after_the_send_timeout() -> None:
    with serving(send_timeout_s=1.0) as r, connect(r.port) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: r.server.stats.send_timeouts == 1, 15.0, "the send timeout")
        wait_until(lambda: r.server.inflight() == 0, 5.0, "the response's task to end")
        get_ok(r.port)


@pytest.mark.parametrize(("seconds", "interval"), [(0.01, 0.05), (1.0, 0.25), (40.0, 0.5)])
def test_the_sweeper_looks_four_times_per_shortest_bound(seconds: float, interval: float) -> None:
    # 40 s bounds: the 2 s linger is the shortest.
    limits = ServerLimits(header_timeout_s=seconds, body_timeout_s=seconds, send_timeout_s=seconds)
    assert limits.sweep_interval() == interval
