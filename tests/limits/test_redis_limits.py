"""The Redis backend against a real redis-server: limits shared by several limiters (as by
several replicas), slot leases (expiry, renewal), exact large numbers, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from redis_server import RedisServer
from studioctl.errors import GatewayError
from studioctl.gateway.limits_lua import MAX_LIMIT, UNIT_PER_TOKEN
from studioctl.gateway.limits_redis import RedisGrant
from studioctl.gateway.redis_client import RedisClient

from .helpers import acquire, bucket, redis_limiter, slots, tenant

_ns = itertools.count()


def ns() -> str:
    return f"unit{next(_ns)}"


def test_three_limiters_share_one_tenants_concurrency_and_rpm(redis_server: RedisServer) -> None:
    async def run() -> None:
        space = ns()
        replicas = [redis_limiter(redis_server.url, namespace=space) for _ in range(3)]
        ctx = tenant(max_concurrent=4, rpm=10)
        try:
            held: list[RedisGrant] = []
            codes = []
            for i in range(6):  # round robin over the replicas
                code, g = await acquire(replicas[i % 3], ctx)
                codes.append(code)
                if g is not None:
                    held.append(g)  # type: ignore[arg-type]
            assert codes == ["ok"] * 4 + ["limit_concurrent"] * 2
            assert sum(r.inflight(ctx.tenant_id) for r in replicas) == 4
            assert slots(redis_server.url, space, ctx.name) == 4
            for g in held:
                g.finish(actual_tokens=0)
            for r in replicas:
                await r.flush()
            assert slots(redis_server.url, space, ctx.name) == 0
            admitted = 0
            for i in range(30):  # 10 a minute: 4 spent, 6 left, whichever replica asks
                code, g = await acquire(replicas[i % 3], ctx)
                if g is not None:
                    admitted += 1
                    g.finish(actual_tokens=0)
                else:
                    assert code == "limit_rpm"
            assert admitted == 6
        finally:
            for r in replicas:
                await r.close()

    asyncio.run(run())


def test_a_dead_replicas_slots_come_back_within_the_lease(redis_server: RedisServer) -> None:
    """A limiter closed with its requests still admitted (as a process killed with -9 never
    releases): its slots expire after lease_s, and the next admission purges them."""

    async def run() -> float:
        space = ns()
        dead = redis_limiter(redis_server.url, namespace=space, lease_s=1.0)
        alive = redis_limiter(redis_server.url, namespace=space, lease_s=1.0)
        ctx = tenant(max_concurrent=2)
        try:
            for _ in range(2):
                assert (await acquire(dead, ctx))[0] == "ok"
            await dead.close()  # gone: no release, no renewal
            t0 = time.monotonic()
            assert (await acquire(alive, ctx))[0] == "limit_concurrent"
            while True:
                code, g = await acquire(alive, ctx)
                if g is not None:
                    g.finish(actual_tokens=0)
                    return time.monotonic() - t0
                assert code == "limit_concurrent"
                assert time.monotonic() - t0 < 3.0, "the dead replica's slots never came back"
                await asyncio.sleep(0.05)
        finally:
            await alive.close()

    waited = asyncio.run(run())
    assert 0.5 < waited < 1.6


def test_a_live_request_keeps_its_slot_past_the_lease(redis_server: RedisServer) -> None:
    """Renewed every lease_s / 3: held for 3 leases, the slot is still counted."""

    async def run() -> None:
        space = ns()
        owner = redis_limiter(redis_server.url, namespace=space, lease_s=0.6)
        other = redis_limiter(redis_server.url, namespace=space, lease_s=0.6)
        ctx = tenant(max_concurrent=1)
        try:
            code, g = await acquire(owner, ctx)
            assert g is not None
            await asyncio.sleep(1.8)
            assert (await acquire(other, ctx))[0] == "limit_concurrent"
            g.finish(actual_tokens=0)
            await owner.flush()
            code, g2 = await acquire(other, ctx)
            assert code == "ok" and g2 is not None
            g2.finish(actual_tokens=0)
            await other.flush()
        finally:
            await owner.close()
            await other.close()

    asyncio.run(run())


def test_tpm_reserve_refund_and_debit_are_exact_at_large_numbers(
    redis_server: RedisServer,
) -> None:
    """Levels near 6·10^14 units (above Lua's %.14g and far from 2^53's margin): each stored
    level is exactly the previous one refilled for the elapsed Redis milliseconds, minus the
    reservation, plus the refund (computed here with Python integers)."""
    tpm = MAX_LIMIT - 3  # odd sizes: nothing lines up by chance
    cap = tpm * UNIT_PER_TOKEN

    def expected(before: dict[str, int], after_at: int, delta_tokens: int) -> int:
        level = min(before["t"] + (after_at - before["at"]) * tpm, cap)
        return min(level + delta_tokens * UNIT_PER_TOKEN, cap)

    async def run() -> None:
        space = ns()
        lim = redis_limiter(redis_server.url, namespace=space)
        ctx = tenant(tpm=tpm)
        try:
            g = await lim.acquire(ctx)
            await g.reserve_tokens(prompt_tokens=tpm - 7, max_output_tokens=0)
            b1 = bucket(redis_server.url, space, ctx.name)
            # the first reservation starts from a full bucket (absent: full)
            assert b1["t"] == cap - (tpm - 7) * UNIT_PER_TOKEN
            g.finish(actual_tokens=1_234_567_891)  # refund of tpm - 7 - 1,234,567,891
            await lim.flush()
            b2 = bucket(redis_server.url, space, ctx.name)
            assert b2["t"] == expected(b1, b2["at"], tpm - 7 - 1_234_567_891)
            g = await lim.acquire(ctx)
            await g.reserve_tokens(prompt_tokens=5, max_output_tokens=0)
            b3 = bucket(redis_server.url, space, ctx.name)
            assert b3["t"] == expected(b2, b3["at"], -5)
            g.finish(actual_tokens=9_999_999_995)  # a debit far beyond the reservation
            await lim.flush()
            b4 = bucket(redis_server.url, space, ctx.name)
            assert b4["t"] == expected(b3, b4["at"], 5 - 9_999_999_995)
            assert b2["t"] > 10**14 and b4["t"] < 0  # exact above %.14g, and in debt
        finally:
            await lim.close()

    asyncio.run(run())


def test_a_cancelled_call_leaves_no_reply_behind(redis_server: RedisServer) -> None:
    """One connection, a call cancelled while Redis still works on it: the next call gets
    its own answer (not the cancelled one's)."""

    async def run() -> None:
        client = RedisClient(redis_server.url, timeout_s=2.0)
        try:
            slow = asyncio.ensure_future(client.execute("DEBUG", "SLEEP", "0.3"))
            await asyncio.sleep(0.05)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            for word in ("mine", "yours", "theirs"):
                assert await client.execute("ECHO", word) == word.encode()
        finally:
            await client.close()

    asyncio.run(run())


def test_a_cancelled_admission_gives_its_slot_back(redis_server: RedisServer) -> None:
    """Cancelled while Redis is busy (DEBUG SLEEP on another connection): the admission the
    script made once Redis got to it is released, locally and in Redis."""

    async def run() -> None:
        space = ns()
        lim = redis_limiter(redis_server.url, namespace=space, timeout_s=2.0)
        blocker = RedisClient(redis_server.url, timeout_s=2.0)
        ctx = tenant(max_concurrent=1)
        try:
            sleeping = asyncio.ensure_future(blocker.execute("DEBUG", "SLEEP", "0.3"))
            await asyncio.sleep(0.05)
            entering = asyncio.ensure_future(lim.acquire(ctx))
            await asyncio.sleep(0.05)
            entering.cancel()
            with pytest.raises(asyncio.CancelledError):
                await entering
            assert lim.inflight() == 0
            await sleeping
            deadline = time.monotonic() + 2
            while slots(redis_server.url, space, ctx.name) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert slots(redis_server.url, space, ctx.name) == 0
            code, g = await acquire(lim, ctx)
            assert code == "ok" and g is not None
            g.finish(actual_tokens=0)
        finally:
            await lim.close()
            await blocker.close()

    asyncio.run(run())


def test_keys_are_namespaced(redis_server: RedisServer) -> None:
    """Two deployments (two namespaces) on one Redis never share a tenant's state."""

    async def run() -> None:
        a = redis_limiter(redis_server.url, namespace=ns())
        b = redis_limiter(redis_server.url, namespace=ns())
        ctx = tenant(max_concurrent=1, rpm=1)
        try:
            assert (await acquire(a, ctx))[0] == "ok"
            assert (await acquire(b, ctx))[0] == "ok"
            with pytest.raises(GatewayError):
                await a.acquire(ctx)
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())
