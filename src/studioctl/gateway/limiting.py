"""The limits backend the gateway's admission path awaits, whatever holds the state.

Two implementations: ``limits.Limiter`` (``limits.backend: memory``, this process alone; its
awaited methods never suspend) and ``limits_redis.RedisLimiter`` (``limits.backend: redis``,
shared by every replica). Both keep the same contract (see ``limits``'s docstring): integer
bucket units, a refusal takes nothing, ``finish`` gives back on every path.

``finish`` is synchronous on purpose: it is called from ``finally`` blocks, on cancellation
too, and must never wait. The Redis backend releases its local counts at once and sends the
release to Redis in the background (a lost one is reclaimed by the slot's lease).
"""

from __future__ import annotations

from typing import Protocol

from studioctl.tenants import TenantContext

__all__ = ["Grant", "LimitsBackend"]


class Grant(Protocol):
    """An admitted request: a tenant slot and an RPM token taken, then TPM reserved."""

    tenant_id: str
    reserved_tokens: int
    done: bool

    async def reserve_tokens(self, *, prompt_tokens: int, max_output_tokens: int) -> None:
        """Reserve ``prompt + max_output`` TPM tokens, or raise 429 ``limit_tpm`` (nothing
        taken; the slot stays held until :meth:`finish`)."""
        ...

    def finish(self, *, actual_tokens: int) -> None:
        """Release the slot, reconcile TPM with the tokens really used. Idempotent."""
        ...


class LimitsBackend(Protocol):
    """Admission control: per-tenant limits (the backend's) and the gateway's own
    concurrency (``global_max_concurrent``, always per process)."""

    global_max_concurrent: int

    async def acquire(self, tenant: TenantContext, tokens: int | None = None) -> Grant:
        """A slot and an RPM token, or 429 (``GatewayBusy`` when only the gateway is full,
        last), or 503 ``limits_unavailable``. The caller finishes the grant on every path.

        ``tokens`` (when the request's size is known already): the TPM reservation is made
        in the same step (one Redis round trip), after the gateway's concurrency; its 429
        ``limit_tpm`` leaves the RPM token spent, as a refusal by ``reserve_tokens`` does.
        Then ``reserve_tokens`` is not called."""
        ...

    def inflight(self, tenant_id: str | None = None) -> int:
        """Requests of this process admitted and not finished: all, or one tenant's."""
        ...

    def prune(self) -> int:
        """Forget idle local state; how many entries were dropped."""
        ...

    def health(self) -> str:
        """``"ok"``, or what ``/healthz`` reports (``"redis unreachable"``)."""
        ...

    def serving(self) -> bool:
        """Whether requests can be admitted now (false: every one gets a 503)."""
        ...

    async def close(self) -> None:
        """At shutdown: stop background work, release what can be, close connections."""
        ...
