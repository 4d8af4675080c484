"""The memory and the Redis backend give the same decisions on the same sequence of calls
(the contract of ``studioctl.gateway.limits``), against a real redis-server."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from redis_server import RedisServer
from studioctl.errors import GatewayBusy, GatewayError
from studioctl.gateway.limiting import Grant, LimitsBackend

from .helpers import acquire, make_backend, outcome, settle, tenant, with_limits

BACKENDS = ["memory", "redis"]
_ns = itertools.count()


async def _sequence(backend: LimitsBackend) -> list[str]:
    """Concurrency, RPM, TPM reserve / refund / debit, and limit changes, in one story."""
    ctx = tenant(max_concurrent=2, rpm=4, tpm=100)
    seen: list[str] = []
    code, a = await acquire(backend, ctx)
    seen.append(code)
    code, b = await acquire(backend, ctx)
    seen.append(code)
    seen.append((await acquire(backend, ctx))[0])  # a third: over max_concurrent
    assert a is not None and b is not None
    seen.append(await outcome(a.reserve_tokens(prompt_tokens=60, max_output_tokens=0)))
    seen.append(await outcome(b.reserve_tokens(prompt_tokens=30, max_output_tokens=20)))
    a.finish(actual_tokens=20)  # 40 of 60 given back: 80 left
    await settle(backend)
    seen.append(await outcome(b.reserve_tokens(prompt_tokens=30, max_output_tokens=20)))
    code, c = await acquire(backend, ctx)  # the 3rd request of 4/min
    seen.append(code)
    assert c is not None
    seen.append(await outcome(c.reserve_tokens(prompt_tokens=40, max_output_tokens=0)))
    b.finish(actual_tokens=80)  # 30 more than reserved: a debit, the bucket at 0
    c.finish(actual_tokens=0)
    await settle(backend)
    code, d = await acquire(backend, ctx)  # the 4th
    seen.append(code)
    assert d is not None
    seen.append(await outcome(d.reserve_tokens(prompt_tokens=1, max_output_tokens=0)))
    d.finish(actual_tokens=0)
    await settle(backend)
    seen.append((await acquire(backend, ctx))[0])  # a 5th: over 4/min
    raised = with_limits(ctx, rpm=6)  # the bucket gains the difference, 2
    for _ in range(3):
        code, g = await acquire(backend, raised)
        seen.append(code)
        if g is not None:
            g.finish(actual_tokens=0)
            await settle(backend)
    # TPM raised by 900 (the bucket, at 0, gains them), RPM by 1 more
    more = with_limits(raised, rpm=7, tpm=1000)
    code, e = await acquire(backend, more)
    seen.append(code)
    assert e is not None
    seen.append(await outcome(e.reserve_tokens(prompt_tokens=900, max_output_tokens=0)))
    seen.append(await outcome(e.reserve_tokens(prompt_tokens=1, max_output_tokens=0)))
    e.finish(actual_tokens=900)
    # lowered: the RPM bucket is clipped to 1 a minute (empty, it stays empty)
    seen.append((await acquire(backend, with_limits(more, rpm=1)))[0])
    await settle(backend)
    return seen


EXPECTED = [
    "ok",
    "ok",
    "limit_concurrent",
    "ok",  # 60 of 100
    "limit_tpm",  # 50 > 40 left
    "ok",  # 50 of 80
    "ok",
    "limit_tpm",  # 40 > 30 left
    "ok",
    "limit_tpm",  # in debt
    "limit_rpm",
    "ok",
    "ok",
    "limit_rpm",
    "ok",
    "ok",  # 900 of the 900 gained
    "already",
    "limit_rpm",
]


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_same_sequence_gives_the_same_decisions(kind: str, redis_server: RedisServer) -> None:
    async def run() -> list[str]:
        backend = make_backend(kind, redis_server.url, f"parity{next(_ns)}")
        try:
            return await _sequence(backend)
        finally:
            await backend.close()

    assert asyncio.run(run()) == EXPECTED


@pytest.mark.parametrize("kind", BACKENDS)
def test_refusals_carry_the_same_retry_after(kind: str, redis_server: RedisServer) -> None:
    """RPM: the seconds until one token is back (60 / rpm when just emptied); TPM: until the
    request fits; concurrency: the fixed hint."""

    async def run() -> dict[str, float]:
        backend = make_backend(kind, redis_server.url, f"retry{next(_ns)}")
        ctx = tenant(max_concurrent=3, rpm=3, tpm=120)  # 1 request per 20 s, 2 tokens/s
        out: dict[str, float] = {}
        try:
            grants = [(await acquire(backend, ctx))[1] for _ in range(3)]
            for code in ("limit_concurrent",):
                with pytest.raises(GatewayError) as info:
                    await backend.acquire(ctx)
                assert info.value.code == code
                out[code] = float(info.value.retry_after or 0)
            first = grants[0]
            assert first is not None
            await first.reserve_tokens(prompt_tokens=100, max_output_tokens=0)  # 20 left
        except BaseException:
            await backend.close()
            raise
        second = grants[1]
        assert second is not None
        with pytest.raises(GatewayError) as info:
            await second.reserve_tokens(prompt_tokens=30, max_output_tokens=0)  # 10 missing
        out["limit_tpm"] = float(info.value.retry_after or 0)
        for g in grants:
            assert g is not None
            g.finish(actual_tokens=0)
        await settle(backend)
        with pytest.raises(GatewayError) as info:
            await backend.acquire(ctx)
        out["limit_rpm"] = float(info.value.retry_after or 0)
        await backend.close()
        return out

    got = asyncio.run(run())
    assert got["limit_concurrent"] == 1.0
    assert got["limit_tpm"] == pytest.approx(5.0, abs=0.1)  # 10 tokens at 2/s
    assert got["limit_rpm"] == pytest.approx(20.0, abs=0.1)


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_gateway_limit_comes_last_and_takes_nothing(
    kind: str, redis_server: RedisServer
) -> None:
    """Global max 1: a second tenant is refused as GatewayBusy (parkable); a tenant over its
    own RPM is refused with limit_rpm first, and nothing is taken by either refusal."""

    async def run() -> None:
        backend = make_backend(kind, redis_server.url, f"busy{next(_ns)}", global_max=1)
        one, two, spent = tenant(), tenant(), tenant(rpm=1)
        try:
            (_, held) = await acquire(backend, one)
            assert held is not None
            with pytest.raises(GatewayBusy):
                await backend.acquire(two)
            assert backend.inflight() == 1 and backend.inflight(two.tenant_id) == 0
            held.finish(actual_tokens=0)
            await settle(backend)
            (_, g) = await acquire(backend, spent)  # its one request a minute
            assert g is not None
            g.finish(actual_tokens=0)
            (_, held) = await acquire(backend, one)
            assert held is not None
            with pytest.raises(GatewayError) as info:
                await backend.acquire(spent)
            assert info.value.code == "limit_rpm" and not isinstance(info.value, GatewayBusy)
            held.finish(actual_tokens=0)
            await settle(backend)
            assert backend.inflight() == 0
        finally:
            await backend.close()

    asyncio.run(run())


async def _one_step(backend: LimitsBackend) -> list[object]:
    """``acquire(tenant, tokens)``: slot, RPM token and TPM in one step (what the gateway
    does when the body alone tells a request's size)."""
    ctx = tenant(max_concurrent=2, rpm=4, tpm=100)
    seen: list[object] = []

    async def step(tokens: int) -> Grant | None:
        try:
            grant = await backend.acquire(ctx, tokens)
        except GatewayError as exc:
            seen.append((exc.code, backend.inflight()))
            return None
        seen.append(("ok", grant.reserved_tokens, backend.inflight()))
        return grant

    a = await step(60)  # 40 left
    assert await step(50) is None  # TPM refused: no slot taken, the RPM token spent
    c = await step(40)  # the second slot: the refusal took none; TPM at 0
    assert a is not None and c is not None
    a.finish(actual_tokens=10)  # 50 back
    await settle(backend)
    d = await step(50)  # the 4th request of 4/min: the 50 given back
    await step(0)  # both slots held: concurrency refuses first (takes nothing)
    for g in (c, d):
        assert g is not None
        g.finish(actual_tokens=0)
    await settle(backend)
    await step(0)  # a 5th request of 4/min: RPM refuses
    return seen


@pytest.mark.parametrize("kind", BACKENDS)
def test_one_step_admission_gives_the_same_decisions(kind: str, redis_server: RedisServer) -> None:
    async def run() -> list[object]:
        backend = make_backend(kind, redis_server.url, f"onestep{next(_ns)}")
        try:
            return await _one_step(backend)
        finally:
            await backend.close()

    assert asyncio.run(run()) == [
        ("ok", 60, 1),
        ("limit_tpm", 1),
        ("ok", 40, 2),
        ("ok", 50, 2),
        ("limit_concurrent", 2),
        ("limit_rpm", 0),
    ]
