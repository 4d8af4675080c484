"""Every 429 and 503 carries a positive whole-seconds Retry-After (issue 13, item 6).

The README's error paragraph is the list: each of its 429/503 codes is provoked for real,
through a daemon (``tests/gateway_daemon/test_retry_after_daemon.py``) or, where a daemon
cannot be brought there on demand (a failing store, a drain), through this harness. The
503s outside the table are here too: ``admin_unavailable``, ``/healthz`` when unhealthy,
an engine's own 429/503 relayed.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from retry_after_codes import DAEMON_CODES, HARNESS_CODES, readme_codes, retryable_codes
from studioctl.errors import (
    FALLBACK_RETRY_AFTER_S,
    RETRY_AFTER_S,
    GatewayError,
    StoreError,
    StoreUnavailable,
)
from studioctl.gateway.routing import LOADING_RETRY_AFTER_S, RouteTable
from studioctl.tenants import TenantContext

from .conftest import MODEL, Gateway, GatewayFactory

MESSAGES = [{"role": "user", "content": "hello there"}]


def chat(gw: Gateway, key: str | None = None) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=gw.headers(key))


def retry_after(resp: httpx.Response, status: int, code: str | None) -> int:
    """The answer is ``status`` (and the envelope's ``code``) with Retry-After ≥ 1 s."""
    assert resp.status_code == status, resp.text
    if code is not None:
        assert resp.json()["error"]["code"] == code, resp.text
    value = resp.headers.get("retry-after")
    assert value is not None and value.isdigit() and int(value) >= 1, dict(resp.headers)
    return int(value)


def test_every_readme_429_and_503_code_is_provoked() -> None:
    codes = readme_codes()
    # The parse found the table (a reworded paragraph must not pass with nothing to check).
    assert codes["limit_rpm"] == 429 and codes["model_not_running"] == 503, codes
    assert codes["invalid_api_key"] == 401 and len(codes) >= 20, codes
    missing = retryable_codes() - DAEMON_CODES - HARNESS_CODES
    assert not missing, f"429/503 codes of the README no Retry-After test provokes: {missing}"
    assert not (DAEMON_CODES | HARNESS_CODES) - retryable_codes(), "codes gone from the README"


def test_auth_unavailable_when_the_store_fails(make_gateway: GatewayFactory) -> None:
    def broken_store(_: str) -> TenantContext | None:
        raise StoreError("database is locked")

    gw = make_gateway(lookup=broken_store)
    resp = chat(gw, "sk-st-" + "a" * 40)
    assert retry_after(resp, 503, "auth_unavailable") == 1
    assert "database is locked" in resp.json()["error"]["message"]


def test_limits_unavailable_when_redis_does_not_answer(make_gateway: GatewayFactory) -> None:
    """limits.backend redis, nothing listening at its URL: 503 at once, /healthz says so."""
    from studioctl.gateway.limits_redis import RedisLimiter
    from studioctl.gateway.redis_client import RedisClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RedisClient(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
    limiter = RedisLimiter(client, global_max_concurrent=8, lease_s=30)
    gw = make_gateway(limiter=limiter)
    t0 = time.monotonic()
    resp = chat(gw)
    assert retry_after(resp, 503, "limits_unavailable") == RETRY_AFTER_S["limits_unavailable"]
    assert time.monotonic() - t0 < 2.0
    assert gw.lt.call(limiter.health) == "redis unreachable"
    assert gw.lt.call(lambda: limiter.inflight()) == 0


def test_store_unavailable_when_postgres_is_down(make_gateway: GatewayFactory) -> None:
    def unreachable(_: str) -> TenantContext | None:
        raise StoreUnavailable("PostgreSQL at postgresql://app:***@db/s is unreachable")

    gw = make_gateway(lookup=unreachable)
    resp = chat(gw, "sk-st-" + "a" * 40)
    assert retry_after(resp, 503, "store_unavailable") == RETRY_AFTER_S["store_unavailable"]
    assert "is unreachable" in resp.json()["error"]["message"]


def test_shutting_down_while_draining(gateway: Gateway) -> None:
    gateway.lt.run(gateway.app.drain(0.5), timeout=30)
    retry_after(chat(gateway), 503, "shutting_down")


def test_healthz_when_unhealthy(make_gateway: GatewayFactory) -> None:
    async def unhealthy() -> dict[str, Any]:
        return {"ok": False, "store": "unreachable", "instances": {}}

    gw = make_gateway(health=unhealthy)
    retry_after(httpx.get(gw.url + "/healthz"), 503, None)
    healthy = httpx.get(make_gateway().url + "/healthz")
    assert healthy.status_code == 200 and "retry-after" not in healthy.headers


def test_admin_unavailable_without_an_admin_token(gateway: Gateway) -> None:
    resp = httpx.get(gateway.url + "/admin/tenants")
    assert retry_after(resp, 503, "admin_unavailable") == RETRY_AFTER_S["admin_unavailable"]
    assert resp.json()["error"]["type"] == "admin_unavailable"


def test_model_not_running_says_when_and_what_to_run(gateway: Gateway) -> None:
    body = {"model": "other", "messages": MESSAGES}
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=gateway.headers())
    assert retry_after(resp, 503, "model_not_running") == RETRY_AFTER_S["model_not_running"]
    assert resp.json()["error"]["hint"] == "studioctl launch other-recipe"


@pytest.mark.parametrize("status", [429, 503])
def test_an_engines_own_429_or_503_is_relayed_with_one(gateway: Gateway, status: int) -> None:
    gateway.engine.fail = (status, {"error": {"message": "busy", "type": "x", "code": None}})
    retry_after(chat(gateway), status, None)


def test_any_gateway_429_or_503_gets_a_retry_after_and_others_none() -> None:
    assert GatewayError(503, "a_new_code", "m").retry_after == FALLBACK_RETRY_AFTER_S
    assert GatewayError(429, "another", "m").retry_after == FALLBACK_RETRY_AFTER_S
    assert GatewayError(503, "model_loading", "m", retry_after=12.5).retry_after == 12.5
    assert GatewayError(400, "invalid_request", "m").retry_after is None
    assert GatewayError(502, "upstream_error", "m").retry_after is None


def _instance(iid: str, state: str, started: float | None, ready: float | None) -> Any:
    recipe = SimpleNamespace(id="r", model_names=("m",), served_name="m")
    return SimpleNamespace(
        id=iid, recipe=recipe, host="127.0.0.1", port=18001, state=state, api_key=None,
        started_at=started, ready_at=ready,
    )  # fmt: skip


def _loading_retry_after(table: RouteTable) -> float | None:
    with pytest.raises(GatewayError) as info:
        table.resolve("m")
    assert info.value.code == "model_loading"
    return info.value.retry_after


def test_model_loading_says_the_loads_expected_time_left() -> None:
    table = RouteTable()
    now = time.time()
    # Never loaded before: how long it takes is not known.
    table.instances_changed([_instance("a", "loading", now - 2, None)])
    assert _loading_retry_after(table) == LOADING_RETRY_AFTER_S
    # Its last load took 30 s and this one began 10 s ago: about 20 s are left.
    earlier = _instance("old", "stopped", now - 100, now - 70)
    table.instances_changed([earlier, _instance("a", "loading", now - 10, None)])
    left = _loading_retry_after(table)
    assert left is not None and 19.0 <= left <= 20.5, left
    # Overdue (40 s into a 30 s load): the constant again, never 0 or negative.
    table.instances_changed([earlier, _instance("a", "starting", now - 40, None)])
    assert _loading_retry_after(table) == LOADING_RETRY_AFTER_S
    # A draining instance is not loading: the constant.
    table.instances_changed([earlier, _instance("a", "draining", now - 10, None)])
    assert _loading_retry_after(table) == LOADING_RETRY_AFTER_S
