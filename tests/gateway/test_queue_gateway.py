"""Queue while loading, through the real gateway (uvicorn, the stand-in engine, real TCP):
requests for a loading model wait and are answered once the route table says ready; a full
queue, a timeout, a client that leaves, a drain; the parking lot of queue_when_busy; the
``/v1/queues`` endpoints. Every path gives back its slot (``limiter.inflight() == 0``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import httpx
import orjson
import pytest

from studioctl.gateway.context import RequestContext
from studioctl.gateway.routing import Upstream

from .conftest import MODEL, Gateway, GatewayFactory, run_async
from .test_proxy import MESSAGES, assert_error, chat

pytestmark = pytest.mark.integration

ADMIN = "admin-secret-token"
KNOWN = {MODEL: "tiny-recipe", "other": "other-recipe"}


def set_state(gw: Gateway, state: str, model: str = MODEL) -> None:
    """What the supervisor's instances_changed does: one instance, in ``state``."""
    engine = gw.engine
    up = Upstream("i-1", f"{model}-recipe", engine.host, engine.port, state, (model,))
    gw.set_upstreams([up], KNOWN)


def queued(gw: Gateway, model: str = MODEL) -> int:
    return int(gw.lt.call(lambda: gw.queues.counts().get(model, 0)))


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def test_fifty_parallel_requests_wait_for_a_loading_model_and_all_get_200(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway()
    set_state(gw, "loading")

    async def fifty() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=60)) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        gw.base_url + "/chat/completions",
                        json={"model": MODEL, "messages": MESSAGES},
                        headers=gw.headers(),
                    )
                    for _ in range(50)
                )
            )

    t, out = in_thread(lambda: run_async(fifty()))
    gw.wait_for(lambda: gw.queues.counts().get(MODEL) == 50, timeout=15)
    assert gw.engine.requests == []  # nothing sent while loading
    set_state(gw, "ready")
    t.join(30)
    responses = out[0]
    assert [r.status_code for r in responses] == [200] * 50
    assert len(gw.engine.requests) == 50
    gw.wait_for(lambda: len(gw.usage.rows) == 50)
    assert all(row.status == 200 and row.queue_ms > 0 for row in gw.usage.rows)
    assert queued(gw) == 0 and gw.lt.call(gw.limiter.inflight) == 0
    text = gw.lt.call(gw.metrics.render)
    assert f'studioctl_gateway_queue_seconds_count{{model="{MODEL}"}} 50' in text


def test_a_request_for_a_ready_model_does_not_queue(gateway: Gateway) -> None:
    r = chat(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 200
    assert gateway.usage.rows[-1].queue_ms == 0.0
    assert "studioctl_gateway_queue_seconds_count" not in gateway.lt.call(gateway.metrics.render)


def test_full_queue_is_503_queue_full_and_the_queued_ones_are_served(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(queue_depth=2)
    set_state(gw, "starting")
    waiting = [in_thread(lambda: chat(gw, {"model": MODEL, "messages": MESSAGES}))]
    waiting.append(in_thread(lambda: chat(gw, {"model": MODEL, "messages": MESSAGES})))
    gw.wait_for(lambda: gw.queues.counts().get(MODEL) == 2)
    r = chat(gw, {"model": MODEL, "messages": MESSAGES})
    assert_error(r, 503, "queue_full", retry_after=5)
    assert gw.usage.rows[-1].error_code == "queue_full"
    set_state(gw, "ready")
    for t, out in waiting:
        t.join(10)
        assert out[0].status_code == 200
    assert gw.lt.call(gw.limiter.inflight) == 0


def raw_chat(gw: Gateway, body: dict[str, Any]) -> socket.socket:
    """A request sent on a raw socket (the test closes it to disconnect)."""
    host, port = gw.url.removeprefix("http://").split(":")
    data = orjson.dumps(body)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {gw.key}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def test_a_client_that_disconnects_while_queued_leaves_and_is_recorded(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway()
    set_state(gw, "loading")
    sock = raw_chat(gw, {"model": MODEL, "messages": MESSAGES})
    gw.wait_for(lambda: gw.queues.counts().get(MODEL) == 1)
    sock.close()
    gw.wait_for(lambda: not gw.queues.counts())  # left at once, not at the timeout
    gw.wait_for(lambda: len(gw.usage.rows) == 1)
    row = gw.usage.rows[0]
    assert (row.status, row.error_code, row.disconnected) == (499, "client_disconnected", True)
    assert row.queue_ms > 0 and row.instance_id is None
    assert gw.lt.call(gw.limiter.inflight) == 0
    set_state(gw, "ready")
    assert chat(gw, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    assert len(gw.engine.requests) == 1  # only the later request went upstream


def test_drain_answers_queued_requests_shutting_down_at_once(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway()
    set_state(gw, "loading")
    t, out = in_thread(lambda: chat(gw, {"model": MODEL, "messages": MESSAGES}))
    gw.wait_for(lambda: gw.queues.counts().get(MODEL) == 1)
    gw.lt.run(gw.app.drain(30.0), timeout=10)  # does not wait the 30 s for the queued one
    t.join(10)
    assert_error(out[0], 503, "shutting_down", retry_after=5)
    assert gw.lt.call(gw.limiter.inflight) == 0 and queued(gw) == 0
    gw.lt.run(gw.app.startup())


def test_want_hook_queues_a_stopped_model_until_it_is_ready(
    make_gateway: GatewayFactory,
) -> None:
    asked: list[str] = []

    def want(model: str, ctx: RequestContext) -> bool:
        asked.append(model)
        return model == "other"

    gw = make_gateway(want=want)
    gw.set_upstreams([], KNOWN)
    assert_error(chat(gw, {"model": MODEL, "messages": MESSAGES}), 503, "model_not_running")
    t, out = in_thread(lambda: chat(gw, {"model": "other", "messages": MESSAGES}))
    gw.wait_for(lambda: gw.queues.counts().get("other") == 1)
    set_state(gw, "ready", "other")
    t.join(10)
    assert out[0].status_code == 200
    assert asked[:2] == [MODEL, "other"]


def test_queue_when_busy_parks_on_the_global_limit(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_concurrent=1, queue_when_busy=True)
    gw.engine.hold = threading.Event()
    first = in_thread(lambda: chat(gw, {"model": MODEL, "messages": MESSAGES}))
    gw.wait_for(lambda: gw.engine.inflight == 1)
    second = in_thread(lambda: chat(gw, {"model": MODEL, "messages": MESSAGES}))
    gw.wait_for(lambda: gw.queues.counts().get(MODEL) == 1)
    assert gw.lt.call(gw.queues.listing)["data"][0]["queue"] == "busy"
    gw.engine.hold.set()
    for t, out in (first, second):
        t.join(10)
        assert out[0].status_code == 200
    assert max(row.queue_ms for row in gw.usage.rows) > 0
    assert gw.lt.call(gw.limiter.inflight) == 0


def test_without_queue_when_busy_the_global_limit_is_429_at_once(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(max_concurrent=1)
    gw.engine.hold = threading.Event()
    t, out = in_thread(lambda: chat(gw, {"model": MODEL, "messages": MESSAGES}))
    gw.wait_for(lambda: gw.engine.inflight == 1)
    assert_error(chat(gw, {"model": MODEL, "messages": MESSAGES}), 429, "limit_concurrent",
                 retry_after=1)  # fmt: skip
    gw.engine.hold.set()
    t.join(10)
    assert out[0].status_code == 200


def test_queues_endpoints_need_the_admin_token_and_never_show_prompts(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(admin_token=ADMIN)
    set_state(gw, "loading")
    secret = [{"role": "user", "content": "SECRET-PROMPT-TEXT"}]
    t, out = in_thread(lambda: chat(gw, {"model": MODEL, "messages": secret}))
    gw.wait_for(lambda: gw.queues.counts().get(MODEL) == 1)
    assert_error(httpx.get(gw.base_url + "/queues"), 401, "unauthorized")
    assert_error(
        httpx.get(gw.base_url + "/queues", headers={"X-Admin-Token": "wrong"}),
        401,
        "unauthorized",
    )
    admin = {"X-Admin-Token": ADMIN}
    r = httpx.get(gw.base_url + "/queues", headers=admin)
    assert r.status_code == 200 and "SECRET" not in r.text
    body = r.json()
    assert body["object"] == "list" and body["counts"] == {MODEL: 1}
    (entry,) = body["data"]
    assert entry["tenant"] == "acme" and entry["model"] == MODEL
    assert len(entry["request_id"]) == 24 and entry["waited_ms"] >= 0
    one = httpx.get(gw.base_url + f"/queues/{MODEL}", headers=admin).json()
    assert one["counts"] == {MODEL: 1} and one["data"][0]["request_id"] == entry["request_id"]
    none = httpx.get(gw.base_url + "/queues/other", headers=admin).json()
    assert none == {"object": "list", "counts": {"other": 0}, "data": []}
    assert_error(httpx.get(gw.base_url + "/queues/nope", headers=admin), 404, "model_not_found")
    assert_error(httpx.post(gw.base_url + "/queues", headers=admin), 405, "method_not_allowed")
    set_state(gw, "ready")
    t.join(10)
    assert out[0].status_code == 200
    # One id everywhere: the room listed the id the client is answered with.
    assert out[0].headers["x-request-id"] == entry["request_id"]


def test_queues_endpoint_without_an_admin_token_is_503(gateway: Gateway) -> None:
    assert_error(httpx.get(gateway.base_url + "/queues"), 503, "admin_unavailable")


def test_a_parked_client_that_disconnects_takes_no_slot_and_is_recorded(
    make_gateway: GatewayFactory,
) -> None:
    gw = make_gateway(max_concurrent=1, queue_when_busy=True)
    gw.engine.hold = threading.Event()
    t, out = in_thread(lambda: chat(gw, {"model": MODEL, "messages": MESSAGES}))
    gw.wait_for(lambda: gw.engine.inflight == 1)
    sock = raw_chat(gw, {"model": MODEL, "messages": MESSAGES})
    gw.wait_for(lambda: gw.queues.counts().get(MODEL) == 1)
    sock.close()
    gw.wait_for(lambda: not gw.queues.counts())
    gw.wait_for(lambda: len(gw.usage.rows) == 1)
    row = gw.usage.rows[0]
    assert (row.status, row.error_code, row.disconnected) == (499, "client_disconnected", True)
    assert gw.lt.call(gw.limiter.inflight) == 1  # only the first one's slot
    gw.engine.hold.set()
    t.join(10)
    assert out[0].status_code == 200 and len(gw.engine.requests) == 1
    assert gw.lt.call(gw.limiter.inflight) == 0
