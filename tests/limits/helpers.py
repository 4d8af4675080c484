"""Tenants, limiters and outcome recording for the limits tests (real Redis, no mocks)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import redis

from studioctl.errors import GatewayError
from studioctl.gateway.limiting import Grant, LimitsBackend
from studioctl.gateway.limits import Limiter
from studioctl.gateway.limits_redis import RedisLimiter
from studioctl.gateway.redis_client import RedisClient
from studioctl.tenants import TenantContext, TenantLimits

_names = itertools.count()


def tenant(
    *, max_concurrent: int = 100, rpm: int = 1_000_000, tpm: int = 1_000_000_000
) -> TenantContext:
    """A tenant with an id of its own (tests sharing one Redis never share a bucket)."""
    limits = TenantLimits(
        max_concurrent=max_concurrent,
        rpm=rpm,
        tpm=tpm,
        max_context_tokens=8192,
        max_output_tokens=512,
    )
    n = next(_names)
    return TenantContext(
        tenant_id=f"t_{n}", name=f"acme{n}", enabled=True, limits=limits, key_prefix="sk-st-x"
    )


def with_limits(ctx: TenantContext, **changes: int) -> TenantContext:
    return dataclasses.replace(ctx, limits=dataclasses.replace(ctx.limits, **changes))


def redis_limiter(
    url: str,
    *,
    namespace: str,
    lease_s: float = 30.0,
    fail_open: bool = False,
    global_max: int = 1000,
    timeout_s: float = 0.5,
) -> RedisLimiter:
    return RedisLimiter(
        RedisClient(url, timeout_s=timeout_s),
        global_max_concurrent=global_max,
        lease_s=lease_s,
        namespace=namespace,
        fail_open=fail_open,
    )


def make_backend(kind: str, url: str, namespace: str, global_max: int = 1000) -> LimitsBackend:
    if kind == "memory":
        return Limiter(global_max_concurrent=global_max)
    return redis_limiter(url, namespace=namespace, global_max=global_max)


async def settle(backend: LimitsBackend) -> None:
    """Every release sent (Redis sends them in the background)."""
    if isinstance(backend, RedisLimiter):
        await backend.flush()


async def outcome(step: Any) -> str:
    """``"ok"`` or the refusal's code."""
    try:
        await step
    except GatewayError as exc:
        return exc.code
    except RuntimeError:  # reserving twice
        return "already"
    return "ok"


async def acquire(backend: LimitsBackend, ctx: TenantContext) -> tuple[str, Grant | None]:
    try:
        return "ok", await backend.acquire(ctx)
    except GatewayError as exc:
        return exc.code, None


def bucket(url: str, namespace: str, name: str) -> dict[str, int]:
    """The tenant's bucket hash as Redis holds it (empty: both buckets full)."""
    client = redis.Redis.from_url(url)
    try:
        raw = client.hgetall(f"studioctl:{namespace}:limits:{{{name}}}:bucket")
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in raw.items()}


def slots(url: str, namespace: str, name: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.zcard(f"studioctl:{namespace}:limits:{{{name}}}:slots"))
    finally:
        client.close()
