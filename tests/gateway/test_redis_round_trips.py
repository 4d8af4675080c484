"""How many times a request goes to Redis (``limits.backend: redis``), counted by a real
``redis-server`` (INFO commandstats): two per request when the body alone tells its size —
the admission (slot, RPM token and TPM together) and the release — and a third only when the
engine must count the prompt first. The TPM bucket ends where the engine's usage says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from redis_server import RedisServer, redis_server_or_skip
from studioctl.gateway.limits_redis import RedisLimiter
from studioctl.gateway.redis_client import RedisClient

from .conftest import MODEL, GatewayFactory
from .test_proxy import MESSAGES, chat, limits

N = 12


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with redis_server_or_skip() as server:
        yield server


def _evalsha_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0))
    finally:
        client.close()


@pytest.mark.parametrize("stream", [False, True])
def test_two_round_trips_per_request(
    make_gateway: GatewayFactory, redis_server: RedisServer, stream: bool
) -> None:
    limiter = RedisLimiter(
        RedisClient(redis_server.url), global_max_concurrent=8, lease_s=60, namespace=f"rt{stream}"
    )
    gw = make_gateway(limiter=limiter, tenant_limits=limits(tpm=1_000_000, max_context_tokens=1024))
    before = _evalsha_calls(redis_server.url)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "stream": stream}
    for _ in range(N):
        r = chat(gw, body)
        assert r.status_code == 200, r.text
    gw.lt.run(limiter.flush())
    assert _evalsha_calls(redis_server.url) - before == 2 * N
    assert gw.engine.tokenize_calls == 0
    # A prompt near max_context_tokens: the engine counts it, then TPM is reserved: three.
    before = _evalsha_calls(redis_server.url)
    long = {**body, "messages": [{"role": "user", "content": "word " * 120}]}  # bound > 1024
    r = chat(gw, long)
    assert r.status_code == 200, r.text
    gw.lt.run(limiter.flush())
    assert _evalsha_calls(redis_server.url) - before == 3
    assert gw.engine.tokenize_calls == 1
    assert gw.lt.call(lambda: limiter.inflight()) == 0


def test_a_tpm_refusal_at_admission_holds_nothing(
    make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    limiter = RedisLimiter(
        RedisClient(redis_server.url), global_max_concurrent=8, lease_s=60, namespace="tpm0"
    )
    gw = make_gateway(limiter=limiter, tenant_limits=limits(tpm=100, max_concurrent=1))
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 90}
    assert chat(gw, body).status_code == 200  # reserved ~95 of 100; the engine used fewer
    big = {**body, "max_tokens": 99}
    r = chat(gw, big)
    assert r.status_code == 429 and r.json()["error"]["code"] == "limit_tpm", r.text
    assert int(r.headers["retry-after"]) >= 1
    assert gw.lt.call(lambda: limiter.inflight()) == 0
    gw.lt.run(limiter.flush())
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.zcard("studioctl:tpm0:limits:{acme}:slots") == 0
    finally:
        client.close()
    assert gw.lt.call(limiter.health) == "ok"
