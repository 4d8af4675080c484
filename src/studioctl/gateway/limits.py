"""Per-tenant admission: concurrency (global and per tenant), requests/min and tokens/min.

All state lives in memory and is touched only from the gateway's asyncio thread: no locks,
no I/O, O(1) per call. After a daemon restart buckets start full and concurrency at 0.

Token buckets
    A bucket's capacity is the per-minute limit and it refills continuously at
    ``limit / 60`` per second, so a tenant may burst up to a minute's worth and then
    proceeds at the steady rate. Buckets start full.

Order (``Limiter.admit``)
    1. concurrency, global then tenant → 429 ``limit_concurrent`` (Retry-After 1 s: a slot
       frees when some request ends, which cannot be predicted);
    2. RPM bucket holds 1 → else 429 ``limit_rpm``;
    3. TPM bucket holds ``prompt_tokens + max_output_tokens`` → else 429 ``limit_tpm``.
    Every check is made before anything is taken, so a request refused by one limit
    consumes nothing of the others. Retry-After is the number of seconds until the refused
    bucket holds enough (a float here; the proxy sends its ceiling as an integer).

TPM reservation
    Admission reserves ``prompt + max_output`` tokens; ``Admission.finish(actual_tokens=…)``
    gives back what was not used (or takes the excess, when the prompt count was an
    estimate), on success, error, timeout and client disconnect alike. A bucket may go
    below zero (a debt) after such a debit; it refills from there.
    A request needing more than the whole bucket (prompt + max_output > tpm) would never
    fit; it is admitted when the bucket is full and leaves the bucket in debt.

Limit changes
    Limits come from the ``TenantContext`` of each call, so a change applies to the very
    next request. When a limit rises, the bucket gains the difference (what was used stays
    used); when it falls, the bucket is clipped to the new capacity.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from studioctl.errors import GatewayError
from studioctl.gateway.tenants import TenantContext

__all__ = ["CONCURRENCY_RETRY_AFTER_S", "Admission", "Limiter"]

# A concurrency slot frees when another request ends: unknowable, so a short fixed hint.
CONCURRENCY_RETRY_AFTER_S = 1.0


class _TenantState:
    """Buckets and in-flight count of one tenant."""

    __slots__ = ("inflight", "rpm_cap", "rpm_tokens", "stamp", "tpm_cap", "tpm_tokens")

    def __init__(self, rpm: int, tpm: int, now: float) -> None:
        self.inflight = 0
        self.rpm_cap = float(rpm)
        self.rpm_tokens = float(rpm)
        self.tpm_cap = float(tpm)
        self.tpm_tokens = float(tpm)
        self.stamp = now

    def refill(self, now: float, rpm: int, tpm: int) -> None:
        """Bring both buckets to ``now`` and adapt their capacity to the current limits."""
        elapsed = now - self.stamp
        if elapsed > 0.0:
            self.stamp = now
        else:
            elapsed = 0.0  # a clock that stood still (or an injected one going back)
        if rpm != self.rpm_cap:
            self.rpm_tokens = _resize(self.rpm_tokens, self.rpm_cap, float(rpm))
            self.rpm_cap = float(rpm)
        if tpm != self.tpm_cap:
            self.tpm_tokens = _resize(self.tpm_tokens, self.tpm_cap, float(tpm))
            self.tpm_cap = float(tpm)
        if elapsed:
            tokens = self.rpm_tokens + elapsed * self.rpm_cap / 60.0
            self.rpm_tokens = tokens if tokens < self.rpm_cap else self.rpm_cap
            tokens = self.tpm_tokens + elapsed * self.tpm_cap / 60.0
            self.tpm_tokens = tokens if tokens < self.tpm_cap else self.tpm_cap


def _resize(tokens: float, old_cap: float, new_cap: float) -> float:
    if new_cap > old_cap:
        return tokens + (new_cap - old_cap)  # more room now; what was used stays used
    return tokens if tokens < new_cap else new_cap


class Admission:
    """A granted request: holds a concurrency slot and a TPM reservation until ``finish``."""

    __slots__ = ("_limiter", "_state", "done", "reserved_tokens", "tenant_id")

    def __init__(
        self, limiter: Limiter, state: _TenantState, tenant_id: str, reserved_tokens: int
    ) -> None:
        self._limiter = limiter
        self._state = state
        self.tenant_id = tenant_id
        self.reserved_tokens = reserved_tokens
        self.done = False

    def finish(self, *, actual_tokens: int) -> None:
        """Release the slot and reconcile TPM with the tokens really used. Idempotent.

        ``actual_tokens`` is prompt + completion tokens as finally counted (for a client
        disconnect: the prompt plus the completion chunks seen so far).
        """
        if self.done:
            return
        self.done = True
        limiter = self._limiter
        state = self._state
        state.inflight -= 1
        limiter._inflight -= 1
        # Bring the bucket to now first, so a debit is taken from the current level.
        now = limiter._clock()
        elapsed = now - state.stamp
        if elapsed > 0.0:
            state.stamp = now
            tokens = state.rpm_tokens + elapsed * state.rpm_cap / 60.0
            state.rpm_tokens = tokens if tokens < state.rpm_cap else state.rpm_cap
            tokens = state.tpm_tokens + elapsed * state.tpm_cap / 60.0
            state.tpm_tokens = tokens if tokens < state.tpm_cap else state.tpm_cap
        tokens = state.tpm_tokens + (self.reserved_tokens - max(actual_tokens, 0))
        state.tpm_tokens = tokens if tokens < state.tpm_cap else state.tpm_cap


class Limiter:
    """Admission control for the gateway (single asyncio thread; no locks)."""

    __slots__ = ("_clock", "_inflight", "_states", "global_max_concurrent")

    def __init__(
        self, *, global_max_concurrent: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if global_max_concurrent < 1:
            raise ValueError("global_max_concurrent must be at least 1")
        self.global_max_concurrent = global_max_concurrent
        self._clock = clock
        self._inflight = 0
        self._states: dict[str, _TenantState] = {}

    def admit(
        self, tenant: TenantContext, *, prompt_tokens: int, max_output_tokens: int
    ) -> Admission:
        """Grant a request or raise ``GatewayError`` 429 (see the module docstring)."""
        limits = tenant.limits
        tid = tenant.tenant_id
        now = self._clock()
        state = self._states.get(tid)
        if state is None:
            state = self._states[tid] = _TenantState(limits.rpm, limits.tpm, now)

        # 1. Concurrency: nothing is taken yet.
        if self._inflight >= self.global_max_concurrent:
            raise GatewayError(
                429,
                "limit_concurrent",
                f"the gateway is at its limit of {self.global_max_concurrent} concurrent "
                "requests; retry shortly",
                retry_after=CONCURRENCY_RETRY_AFTER_S,
            )
        if state.inflight >= limits.max_concurrent:
            raise GatewayError(
                429,
                "limit_concurrent",
                f"tenant {tenant.name!r} is at its limit of {limits.max_concurrent} "
                "concurrent requests; retry when one finishes",
                retry_after=CONCURRENCY_RETRY_AFTER_S,
            )

        state.refill(now, limits.rpm, limits.tpm)

        # 2. RPM: one token per request.
        if state.rpm_tokens < 1.0:
            wait = (1.0 - state.rpm_tokens) * 60.0 / state.rpm_cap
            raise GatewayError(
                429,
                "limit_rpm",
                f"tenant {tenant.name!r} exceeded its limit of {limits.rpm} requests per "
                f"minute; retry in {wait:.1f} s",
                retry_after=wait,
            )

        # 3. TPM: reserve prompt + the most the reply may use.
        need = prompt_tokens + max_output_tokens
        if need < 0:
            need = 0
        # A request larger than the whole bucket is let through when the bucket is full.
        fit = need if need < state.tpm_cap else state.tpm_cap
        if state.tpm_tokens < fit:
            wait = (fit - state.tpm_tokens) * 60.0 / state.tpm_cap
            raise GatewayError(
                429,
                "limit_tpm",
                f"tenant {tenant.name!r} exceeded its limit of {limits.tpm} tokens per "
                f"minute (this request reserves {need}); retry in {wait:.1f} s",
                retry_after=wait,
            )

        # Granted: take from everything at once.
        state.rpm_tokens -= 1.0
        state.tpm_tokens -= need
        state.inflight += 1
        self._inflight += 1
        return Admission(self, state, tid, need)

    def inflight(self, tenant_id: str | None = None) -> int:
        """Requests admitted and not finished: all, or one tenant's."""
        if tenant_id is None:
            return self._inflight
        state = self._states.get(tenant_id)
        return state.inflight if state is not None else 0

    def available(self, tenant: TenantContext) -> tuple[float, float]:
        """The ``(rpm, tpm)`` tokens the tenant's buckets hold now (for admin views, tests)."""
        limits = tenant.limits
        now = self._clock()
        state = self._states.get(tenant.tenant_id)
        if state is None:
            return float(limits.rpm), float(limits.tpm)
        state.refill(now, limits.rpm, limits.tpm)
        return state.rpm_tokens, state.tpm_tokens

    def prune(self) -> int:
        """Forget idle tenants whose buckets are full again (equal to a fresh state).

        Keeps the table as small as the set of recently active tenants; returns how many
        entries were dropped. Cheap enough to call every minute.
        """
        now = self._clock()
        drop = []
        for tid, state in self._states.items():
            if state.inflight:
                continue
            state.refill(now, int(state.rpm_cap), int(state.tpm_cap))
            if state.rpm_tokens >= state.rpm_cap and state.tpm_tokens >= state.tpm_cap:
                drop.append(tid)
        for tid in drop:
            del self._states[tid]
        return len(drop)
