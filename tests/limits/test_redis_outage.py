"""Redis unreachable (ended, or paused with SIGSTOP): 503 ``limits_unavailable`` with
Retry-After within the command timeout, or admission by the local limits with fail_open;
``health()`` says so; the limiter uses Redis again by itself once it answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from redis_server import RedisServer
from studioctl.errors import GatewayError
from studioctl.gateway.limits_redis import BACKOFF_MAX_S, RedisLimiter

from .helpers import acquire, redis_limiter, slots, tenant

TIMEOUT_S = 0.3  # the limiter's connect and command timeout in these tests


async def _refused_fast(lim: RedisLimiter, ctx: object) -> float:
    t0 = time.monotonic()
    with pytest.raises(GatewayError) as info:
        await lim.acquire(ctx)  # type: ignore[arg-type]
    err = info.value
    assert err.http_status == 503 and err.code == "limits_unavailable", err
    assert err.retry_after == 1.0
    assert "redis://127.0.0.1" in err.message
    return time.monotonic() - t0


async def _back(lim: RedisLimiter, timeout: float) -> float:
    t0 = time.monotonic()
    while lim.health() != "ok":
        assert time.monotonic() - t0 < timeout, "the limiter did not reconnect by itself"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.parametrize("outage", ["ended", "paused"])
def test_fail_closed_answers_503_fast_and_recovers(own_redis: RedisServer, outage: str) -> None:
    async def run() -> None:
        lim = redis_limiter(own_redis.url, namespace="out", timeout_s=TIMEOUT_S)
        ctx = tenant(max_concurrent=2)
        try:
            code, g = await acquire(lim, ctx)
            assert code == "ok" and g is not None
            if outage == "ended":
                own_redis.stop()
            else:
                own_redis.pause()
            g.finish(actual_tokens=0)  # sent into the outage: never waits, never raises
            first = await _refused_fast(lim, ctx)
            assert first < TIMEOUT_S + 0.4
            assert lim.health() == "redis unreachable" and not lim.serving()
            assert await _refused_fast(lim, ctx) < 0.05  # known down: no wait at all
            assert lim.inflight() == 0  # nothing held by the refusals
            await asyncio.sleep(1.0)
            assert await _refused_fast(lim, ctx) < 0.05
            if outage == "ended":
                own_redis.start()  # the same port, empty
            else:
                own_redis.resume()
            await _back(lim, BACKOFF_MAX_S + 2 * TIMEOUT_S + 1.0)
            # The release sent into the outage, and the admission that timed out (a paused
            # Redis runs it on resuming), are both given back once Redis answers.
            deadline = time.monotonic() + 2.0
            while slots(own_redis.url, "out", ctx.name) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert slots(own_redis.url, "out", ctx.name) == 0
            both = [await acquire(lim, ctx) for _ in range(2)]
            assert [code for code, _ in both] == ["ok", "ok"]
            for _, g in both:
                assert g is not None
                g.finish(actual_tokens=0)
        finally:
            if outage == "paused" and own_redis.proc is not None:
                own_redis.resume()
            await lim.close()

    asyncio.run(run())


def test_fail_open_admits_with_local_limits(own_redis: RedisServer) -> None:
    async def run() -> None:
        lim = redis_limiter(own_redis.url, namespace="open", fail_open=True, timeout_s=TIMEOUT_S)
        ctx = tenant(max_concurrent=5, rpm=3, tpm=100)
        try:
            own_redis.stop()
            codes = []
            grants = []
            for _ in range(5):
                code, g = await acquire(lim, ctx)
                codes.append(code)
                if g is not None:
                    grants.append(g)
            # admitted by this process's own buckets: 3 a minute
            assert codes == ["ok", "ok", "ok", "limit_rpm", "limit_rpm"]
            assert lim.health() == "redis unreachable" and lim.serving()
            await grants[0].reserve_tokens(prompt_tokens=90, max_output_tokens=0)
            with pytest.raises(GatewayError) as info:
                await grants[1].reserve_tokens(prompt_tokens=20, max_output_tokens=0)
            assert info.value.code == "limit_tpm"
            for g in grants:
                g.finish(actual_tokens=0)
            assert lim.inflight() == 0
            own_redis.start()
            await _back(lim, BACKOFF_MAX_S + 2 * TIMEOUT_S + 1.0)
            code, g = await acquire(lim, ctx)  # Redis's buckets again (fresh: full)
            assert code == "ok" and g is not None
            g.finish(actual_tokens=0)
        finally:
            await lim.close()

    asyncio.run(run())


def test_redis_down_between_admission_and_reservation(own_redis: RedisServer) -> None:
    """Fail closed: the reservation is refused 503 and the grant still finishes cleanly."""

    async def run() -> None:
        lim = redis_limiter(own_redis.url, namespace="mid", timeout_s=TIMEOUT_S)
        ctx = tenant()
        try:
            g = await lim.acquire(ctx)
            own_redis.stop()
            with pytest.raises(GatewayError) as info:
                await g.reserve_tokens(prompt_tokens=10, max_output_tokens=10)
            assert info.value.code == "limits_unavailable"
            g.finish(actual_tokens=20)
            assert lim.inflight() == 0
        finally:
            await lim.close()

    asyncio.run(run())
