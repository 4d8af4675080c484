"""The control client (``studioctl.client.Client``): HTTP/1.1 over a Unix socket with the
standard library. Against small real servers on a Unix socket in the test's folder: answers,
error envelopes, the API version check, streams read as they arrive, a peer that dies
mid-stream, a socket nobody listens on. (The real daemon is exercised by every CLI test.)"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from studioctl import API_VERSION
from studioctl.client import Client
from studioctl.errors import (
    EXIT_DAEMON_UNREACHABLE,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    DaemonUnreachable,
    NotFoundError,
    RecipeError,
    StudioError,
    UsageError,
)

Handler = Callable[[socket.socket, bytes], None]


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        got = conn.recv(65536)
        if not got:
            break
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            while len(body) < int(value):
                body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def serve(path: Path, handler: Handler, *, requests: int = 1) -> Iterator[list[bytes]]:
    """Answer ``requests`` connections on the Unix socket ``path`` with ``handler``; yields
    the raw requests received."""
    seen: list[bytes] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(20)

    def run() -> None:
        for _ in range(requests):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                raw = _read_request(conn)
                seen.append(raw)
                handler(conn, raw)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        srv.close()
        t.join(20)


def answer(status: int, body: bytes, *, api: str | None = str(API_VERSION)) -> Handler:
    def handle(conn: socket.socket, _raw: bytes) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        if api is not None:
            head += f"x-studioctl-api: {api}\r\n"
        conn.sendall(head.encode() + b"\r\n" + body)

    return handle


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    + f"x-studioctl-api: {API_VERSION}\r\n\r\n".encode()
)


def test_request_sends_json_and_query_and_decodes_the_answer(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    with serve(sock, answer(200, b'{"ok": true}')) as seen:
        out = Client(sock).request(
            "POST", "/x", json_body={"a": 1}, params={"n": 5, "skip": None, "q": "a b&c"}
        )
    assert out == {"ok": True}
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /x?n=5&q=a+b%26c HTTP/1.1\r\n")
    assert b"Content-Type: application/json" in head
    assert body == b'{"a": 1}'


def test_error_envelope_becomes_the_same_studio_error(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    body = b'{"error": {"message": "no recipe \'x\'", "hint": "try y", "code": "nope"}}'
    with serve(sock, answer(404, body)), pytest.raises(NotFoundError) as info:
        Client(sock).request("GET", "/instances/x")
    assert info.value.message == "no recipe 'x'"
    assert info.value.hint == "try y"
    assert info.value.exit_code == EXIT_NOT_FOUND


def test_an_invalid_recipe_the_daemon_read_keeps_its_exit_code(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    body = b'{"error": {"message": "/r/x.yaml:3: port: bad", "code": "invalid_recipe"}}'
    with serve(sock, answer(400, body)), pytest.raises(RecipeError) as info:
        Client(sock).request("POST", "/instances", json_body={"recipe": "x"})
    assert info.value.exit_code == EXIT_ERROR
    assert info.value.message == "/r/x.yaml:3: port: bad"
    plain = b'{"error": {"message": "port must be an integer", "code": "invalid_request"}}'
    with serve(sock.with_name("d.sock"), answer(400, plain)), pytest.raises(UsageError):
        Client(sock.with_name("d.sock")).request("POST", "/instances", json_body={})


@pytest.mark.parametrize("body", [b"<html>boom</html>", b'{"error": "flat"}', b"[1, 2]"])
def test_an_answer_that_is_not_our_envelope_is_still_an_error(tmp_path: Path, body: bytes) -> None:
    sock = tmp_path / "c.sock"
    with serve(sock, answer(500, body)), pytest.raises(StudioError) as info:
        Client(sock).request("GET", "/status")
    assert info.value.message  # a message, never a crash of the error path


def test_another_api_version_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    with serve(sock, answer(200, b"{}", api="999")), pytest.raises(StudioError) as info:
        Client(sock).request("GET", "/version")
    assert info.value.code == "api_mismatch"


def test_no_listener_is_daemon_unreachable(tmp_path: Path) -> None:
    sock = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))  # a socket file left by a killed daemon: nobody accepts on it
    s.close()
    with pytest.raises(DaemonUnreachable) as info:
        Client(sock).request("GET", "/status")
    assert info.value.exit_code == EXIT_DAEMON_UNREACHABLE
    assert Client(tmp_path / "missing.sock").ping() is None


def test_stream_yields_each_line_as_it_arrives(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    first_seen = threading.Event()

    def handle(conn: socket.socket, _raw: bytes) -> None:
        conn.sendall(STREAM_HEAD + chunk(b"one\ntw"))
        # The rest only once the client has shown the first line: a client that waited
        # for the end (or for a full buffer) would never see it.
        if first_seen.wait(15):
            conn.sendall(chunk(b"o\r\nthree") + b"0\r\n\r\n")

    with serve(sock, handle):
        lines = []
        for line in Client(sock).stream_lines("GET", "/logs"):
            lines.append(line)
            first_seen.set()
    assert lines == ["one", "two", "three"]


def test_a_stream_cut_mid_way_is_daemon_unreachable(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"

    def handle(conn: socket.socket, _raw: bytes) -> None:
        conn.sendall(STREAM_HEAD + chunk(b"one\n") + b"40\r\npartial")  # then the daemon dies

    got: list[str] = []
    with serve(sock, handle), pytest.raises(DaemonUnreachable):
        got.extend(Client(sock).stream_lines("GET", "/events"))
    assert got == ["one"]


def test_a_stream_error_answer_raises_before_any_line(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    missing = answer(404, b'{"error": {"message": "no instance"}}')
    with serve(sock, missing), pytest.raises(NotFoundError):
        list(Client(sock).stream_lines("GET", "/instances/x/logs"))


def test_a_stream_abandoned_early_closes_its_connection(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    closed = threading.Event()

    def handle(conn: socket.socket, _raw: bytes) -> None:
        conn.sendall(STREAM_HEAD + chunk(b"one\n"))
        conn.settimeout(15)
        with contextlib.suppress(OSError):
            if conn.recv(1) == b"":  # the client hung up
                closed.set()

    with serve(sock, handle):
        client = Client(sock)
        stream = client.stream_lines("GET", "/events", params={"follow": "1"})
        assert next(stream) == "one"
        stream.close()  # e.g. Ctrl-C in `events -f`
        assert closed.wait(15)


@pytest.mark.integration
def test_a_recipe_error_exits_alike_through_the_daemon_and_locally() -> None:
    """The same bad recipe file: read by the CLI (``launch --dry-run``) and by the daemon
    (``launch``, streamed and not) gives the same error and exit code (1, not the 2 of a
    usage error that its HTTP 400 alone would mean)."""
    from daemon_helpers import running_daemon

    with running_daemon() as d:
        d.recipe("broken", port="not-a-port")
        local = d.cli("launch", "broken", "--dry-run")
        remote = [d.cli("launch", "broken"), d.cli("launch", "broken", "--no-wait", "--json")]
        assert local.returncode == EXIT_ERROR, local.stderr
        for r in remote:
            assert r.returncode == local.returncode, (r.stdout, r.stderr)
            assert "broken.yaml" in r.stderr and "port" in r.stderr, r.stderr
