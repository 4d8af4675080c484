"""GatewayApp.drain: a graceful stop that answers and accounts every request in flight.

The gateway of conftest.py (real uvicorn, real HTTP, the stand-in engine) is drained while
requests are in flight: those that finish within the drain time are served as usual; the
rest are ended by the gateway (a stream with an error event and [DONE], a request still
waiting for its head with a 503), each with its usage row and its slot back; requests that
arrive once draining has begun are answered 503 shutting_down with a Retry-After.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from studioctl.gateway.relay import SHUTDOWN_RETRY_AFTER_S

from .conftest import MODEL, Gateway
from .test_proxy import MESSAGES, assert_error, chat

pytestmark = pytest.mark.integration


class _Stream:
    """A streamed chat read in a thread; ``first`` is set at its first content event."""

    def __init__(self, gw: Gateway, body: dict[str, Any]) -> None:
        self.first = threading.Event()
        self.status = 0
        self.data = b""
        self.error: httpx.HTTPError | None = None
        self._thread = threading.Thread(target=self._run, args=(gw, body))
        self._thread.start()

    def _run(self, gw: Gateway, body: dict[str, Any]) -> None:
        try:
            with httpx.stream(
                "POST",
                gw.base_url + "/chat/completions",
                json=body,
                headers=gw.headers(),
                timeout=30,
            ) as r:
                self.status = r.status_code
                for chunk in r.iter_bytes():
                    self.data += chunk
                    if b'"content":"w' in self.data:
                        self.first.set()
        except httpx.HTTPError as exc:  # a stream cut short
            self.error = exc
        finally:
            self.first.set()

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive()

    def events(self) -> list[bytes]:
        return [e for e in self.data.split(b"\n\n") if e]


def drain(gw: Gateway, timeout_s: float) -> float:
    t0 = time.monotonic()
    gw.lt.run(gw.app.drain(timeout_s), timeout=timeout_s + 30)
    return time.monotonic() - t0


def test_drain_ends_a_stream_with_an_error_event_and_accounts_it(gateway: Gateway) -> None:
    gateway.engine.token_delay_s = 0.2  # 100 tokens: 20 s, far beyond the drain time
    stream = _Stream(
        gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": 100, "stream": True}
    )
    assert stream.first.wait(10)
    took = drain(gateway, 0.3)
    stream.join()
    assert took < 5.0
    assert stream.error is None  # the stream ended properly
    assert stream.status == 200
    events = stream.events()
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][6:])["error"]
    assert error["code"] == "shutting_down"
    assert 1 <= sum(b'"content":"w' in e for e in events) < 100
    row = gateway.usage.rows[-1]
    assert (row.status, row.error_code, row.streamed, row.disconnected) == (
        200,
        "shutting_down",
        True,
        False,
    )
    assert 1 <= row.completion_tokens < 100
    assert gateway.lt.call(lambda: gateway.limiter.inflight() + gateway.routes.inflight()) == 0
    gateway.wait_for(lambda: gateway.engine.aborted == 1)  # the generation was stopped


def test_drain_answers_503_to_a_request_still_waiting_for_its_head(gateway: Gateway) -> None:
    gateway.engine.head_delay_s = 20.0
    answers: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: answers.append(chat(gateway, {"model": MODEL, "messages": MESSAGES}))
    )
    t.start()
    gateway.wait_for(lambda: gateway.engine.inflight == 1)
    drain(gateway, 0.2)
    t.join(30)
    assert_error(answers[0], 503, "shutting_down", retry_after=int(SHUTDOWN_RETRY_AFTER_S))
    row = gateway.usage.rows[-1]
    assert (row.status, row.error_code, row.streamed) == (503, "shutting_down", False)
    assert gateway.lt.call(lambda: gateway.limiter.inflight() + gateway.routes.inflight()) == 0
    gateway.wait_for(lambda: gateway.engine.aborted == 1)


def test_drain_lets_requests_finish_within_the_drain_time(gateway: Gateway) -> None:
    gateway.engine.head_delay_s = 0.5
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                chat(gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    gateway.wait_for(lambda: gateway.engine.inflight == 3)
    took = drain(gateway, 20.0)
    for t in threads:
        t.join(30)
    assert took < 10.0  # returned when the last one ended, not after 20 s
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [r.error_code for r in gateway.usage.rows] == [None, None, None]
    assert gateway.lt.call(gateway.limiter.inflight) == 0


def test_requests_after_drain_began_are_503_with_retry_after(gateway: Gateway) -> None:
    assert drain(gateway, 1.0) < 1.0  # nothing in flight: returns at once
    for stream in (False, True):
        r = chat(gateway, {"model": MODEL, "messages": MESSAGES, "stream": stream})
        assert_error(r, 503, "shutting_down", retry_after=int(SHUTDOWN_RETRY_AFTER_S))
    assert gateway.engine.requests == []
    assert httpx.get(gateway.url + "/livez").status_code == 200  # other routes still answer


def test_a_stop_without_drain_still_accounts_and_releases(gateway: Gateway) -> None:
    """The server's own grace period cancels what is left: each still writes its row."""
    gateway.engine.token_delay_s = 0.2
    stream = _Stream(
        gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": 100, "stream": True}
    )
    assert stream.first.wait(10)
    server, _ = gateway.servers[0]
    gateway.lt.call(lambda: setattr(server, "should_exit", True))  # grace: 2 s (conftest)
    stream.join()
    assert stream.error is not None  # cut: only drain() ends a stream properly
    gateway.wait_for(lambda: len(gateway.usage.rows) == 1, timeout=10)
    row = gateway.usage.rows[0]
    assert (row.status, row.error_code, row.streamed) == (200, "cancelled", True)
    assert gateway.lt.call(lambda: gateway.limiter.inflight() + gateway.routes.inflight()) == 0
