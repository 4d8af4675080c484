"""Hostile clients against a real daemon's gateway (127.0.0.1 only, tens of connections, bounds
of seconds): silent connections, slowloris heads, short bodies, an 8 MB head, a
connection flood beyond ``gateway.max_connections``. Each bound holds, and normal requests
(a chat through the stand-in, on connections opened before and after) still succeed."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from daemon_helpers import REPO, Daemon, running_daemon
from gateway_daemon.helpers import LOOPBACK, base_url, chat, create_tenant, gateway_daemon, launch
from helpers import slowloris

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MAX_CONNECTIONS = 50
ENV = {
    # This checkout's code in the daemon (not an editable install's from elsewhere).
    "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
    "STUDIOCTL_GATEWAY_HEADER_TIMEOUT_S": "3",
    "STUDIOCTL_GATEWAY_BODY_TIMEOUT_S": "1",
    "STUDIOCTL_GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon({"alpha": {}}, env=ENV) as d:
        launch(d, "alpha")
        yield d


@pytest.fixture(scope="module")
def key(daemon: Daemon) -> str:
    return create_tenant(daemon, "hostile", "--rpm", "100000", "--max-concurrent", "16")[1]


def connect(d: Daemon) -> socket.socket:
    return socket.create_connection((LOOPBACK, d.gateway_port), timeout=10)


def read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def answer_of(raw: bytes) -> tuple[int, str]:
    """(status, error code) of a raw error answer."""
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    body = json.loads(raw.partition(b"\r\n\r\n")[2])
    return int(raw.split(b" ")[1]), body["error"]["code"]


def chat_ok(d: Daemon, key: str, client: httpx.Client | None = None) -> None:
    if client is None:
        resp = chat(d, key, "alpha", max_tokens=2)
    else:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        resp = client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 2


def open_connections(d: Daemon) -> int:
    """The daemon's established TCP connections on the gateway port."""
    import psutil

    assert d.proc is not None
    conns = psutil.Process(d.proc.pid).net_connections(kind="tcp")
    return sum(
        1 for c in conns if c.laddr and c.laddr.port == d.gateway_port and c.status == "ESTABLISHED"
    )


def test_silent_and_slowloris_connections_are_closed_and_chat_still_works(
    daemon: Daemon, key: str
) -> None:
    t0 = time.monotonic()
    silent = [connect(daemon) for _ in range(15)]
    slow = [connect(daemon) for _ in range(15)]
    try:
        with slowloris(slow, b"POST /v1/chat/completions HTTP/1.1\r\nX-a: "):
            chat_ok(daemon, key)  # served while they hang on
            answers = [read_all(s) for s in slow]
            closed = [read_all(s) for s in silent]
            waited = time.monotonic() - t0
    finally:
        for s in silent + slow:
            s.close()
    assert all(answer_of(a) == (408, "request_timeout") for a in answers), answers[:1]
    assert closed == [b""] * len(silent)  # never asked anything: closed without an answer
    assert waited >= 3.0  # not before header_timeout_s
    chat_ok(daemon, key)


def test_a_short_body_gets_408_and_an_8mb_head_431(daemon: Daemon, key: str) -> None:
    with connect(daemon) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
            b"Authorization: Bearer " + key.encode() + b'\r\n\r\n{"model": '
        )
        assert answer_of(read_all(s)) == (408, "request_timeout")
    with connect(daemon) as s:
        with contextlib.suppress(OSError):  # the daemon stops reading after 64 KiB
            s.sendall(b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n")
        assert answer_of(read_all(s)) == (431, "header_too_large")
    chat_ok(daemon, key)


def test_beyond_max_connections_new_ones_are_refused_and_open_ones_served(
    daemon: Daemon, key: str
) -> None:
    with httpx.Client(base_url=base_url(daemon), timeout=30) as kept:
        chat_ok(daemon, key, kept)  # a keep-alive connection, open before the flood
        idle: list[socket.socket] = []
        try:
            # Fill the gateway to its limit with silent connections (the kept one is the 50th).
            for _ in range(MAX_CONNECTIONS - 1):
                idle.append(connect(daemon))
            refused = []
            for _ in range(10):
                with connect(daemon) as extra:
                    refused.append(read_all(extra, timeout=5))
            assert all(answer_of(r) == (503, "too_many_connections") for r in refused)
            assert open_connections(daemon) <= MAX_CONNECTIONS
            chat_ok(daemon, key, kept)  # the connection already open is served on
            # The silent ones go after header_timeout_s: new connections are served again.
            deadline = time.monotonic() + 15
            while open_connections(daemon) > 1:
                assert time.monotonic() < deadline, "silent connections were not closed"
                time.sleep(0.1)
            chat_ok(daemon, key)
        finally:
            for s in idle:
                s.close()
    with daemon.client() as c:  # the control socket was never starved
        assert c.ping() is not None


def test_more_idle_connections_than_descriptors_do_not_take_the_daemon_down() -> None:
    # The daemon's descriptors capped at 512 (soft and hard): 520 silent connections. Before,
    # accept() failed with EMFILE and every request through the gateway failed with it.
    env = {**ENV, "STUDIOCTL_GATEWAY_MAX_CONNECTIONS": "4096"}  # the default: over the budget
    with running_daemon(env, start=False, gateway=True) as d:
        d.recipe("alpha")
        d.start(nofile=512)
        launch(d, "alpha")
        key = create_tenant(d, "crowded", "--rpm", "100000")[1]
        budget = (512 - 256) // 2  # daemon.connection_budget: 2 per connection, 256 kept
        assert f"gateway.max_connections 4096 lowered to {budget}" in d.log_text()
        with httpx.Client(base_url=base_url(d), timeout=30) as kept:
            chat_ok(d, key, kept)
            idle: list[socket.socket] = []
            try:
                for _ in range(520):
                    idle.append(connect(d))
                chat_ok(d, key, kept)  # served on: its request to the engine has a descriptor
                # Beyond the budget: 503 at once (the rest are silent: the header timeout).
                refused = 0
                for s in idle[budget:]:
                    with contextlib.suppress(TimeoutError):
                        answer = read_all(s, timeout=1.0)
                        refused += bool(answer) and answer_of(answer)[0] == 503
                # All of them, unless the header timeout freed places while they connected.
                assert refused >= 300, refused
                with d.client() as c:
                    assert c.ping() is not None
            finally:
                for s in idle:
                    s.close()
            chat_ok(d, key)
