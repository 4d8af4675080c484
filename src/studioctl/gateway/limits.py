"""Per-tenant admission: concurrency (global and per tenant), requests/min and tokens/min.

The memory backend of ``limiting.LimitsBackend`` (``limits.backend: memory``, the default;
``limits_redis`` is the shared one): the gateway awaits :meth:`Limiter.acquire` and
:meth:`Admission.reserve_tokens`, which here run the synchronous :meth:`Limiter.enter` and
:meth:`Admission.reserve` without ever suspending. All state lives in memory and is touched
only from the gateway's asyncio thread: no locks, no I/O, O(1) per call. After a daemon
restart buckets start full and concurrency at 0.

Token buckets
    A bucket's capacity is the per-minute limit and it refills continuously at
    ``limit / 60`` per second, so a tenant may burst up to a minute's worth and then
    proceeds at the steady rate. Buckets start full.

    Levels are integers (Python ints, unbounded): one token is ``UNIT`` = 60·10⁹ units, so a
    bucket of ``limit`` tokens per minute gains exactly ``limit`` units per nanosecond.
    Refill, reservation, refund and debit are all exact; no rounding can drift a bucket, however
    large the numbers a client sends (a float bucket once lost 524,288 tokens to one refund).

Two steps, so that nothing costly happens before the cheap limits are checked
    1. ``Limiter.enter(tenant)``: the tenant's concurrency → 429 ``limit_concurrent``
       (Retry-After 1 s: a slot frees when some request ends, which cannot be predicted);
       the RPM bucket must hold 1 → else 429 ``limit_rpm``; then the gateway's concurrency
       → 429 ``limit_concurrent`` raised as ``GatewayBusy`` (last, so that a request the
       tenant's own limits refuse is never parked by ``gateway.queue_when_busy``). Granted:
       a slot and one RPM token are taken and an ``Admission`` returned. Nothing is taken
       by a refusal.
    2. ``Admission.reserve(prompt_tokens=…, max_output_tokens=…)`` once the prompt is
       counted: the TPM bucket must hold ``prompt_tokens + max_output_tokens`` → else 429
       ``limit_tpm`` (nothing of TPM taken; the slot stays held until ``finish``).
    The RPM token of step 1 is spent whatever follows: a request refused after step 1 (an
    unknown model, a prompt too long, TPM) still counted as a request, so refusals cost a
    tenant's budget like answers do. ``Limiter.admit`` runs both steps at once (and releases
    the slot when step 2 refuses): ``acquire(tenant, tokens)``, what the gateway calls when
    the request's body alone tells its size (the usual case). Retry-After is the number of
    seconds until the refused bucket holds enough (a float here; the proxy sends its ceiling
    as an integer).

TPM reservation
    ``reserve`` takes ``prompt + max_output`` tokens; ``Admission.finish(actual_tokens=…)``
    releases the slot and gives back what was not used (or takes the excess, when the prompt
    count was an estimate), on success, error, timeout and client disconnect alike. A bucket
    may go below zero (a debt) after such a debit; it refills from there.
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

from studioctl.errors import GatewayBusy, GatewayError
from studioctl.tenants import TenantContext

__all__ = [
    "CONCURRENCY_RETRY_AFTER_S",
    "UNIT",
    "Admission",
    "GatewayBusy",
    "Limiter",
    "concurrency_refused",
    "gateway_busy",
    "rpm_refused",
    "tpm_refused",
]

# A concurrency slot frees when another request ends: unknowable, so a short fixed hint.
CONCURRENCY_RETRY_AFTER_S = 1.0
# Bucket units per token: nanoseconds per minute, so that ``limit`` tokens/min refill
# exactly ``limit`` units per nanosecond.
UNIT = 60_000_000_000


class _TenantState:
    """Buckets (in units) and in-flight count of one tenant."""

    __slots__ = (
        "inflight",
        "rpm",
        "rpm_cap",
        "rpm_level",
        "stamp",
        "tpm",
        "tpm_cap",
        "tpm_level",
    )

    def __init__(self, rpm: int, tpm: int, now: int) -> None:
        self.inflight = 0
        self.rpm = rpm  # the limits the levels were last computed for
        self.tpm = tpm
        self.rpm_cap = self.rpm_level = rpm * UNIT
        self.tpm_cap = self.tpm_level = tpm * UNIT
        self.stamp = now  # nanoseconds

    def refill(self, now: int, rpm: int, tpm: int) -> None:
        """Bring both buckets to ``now`` and adapt their capacity to the current limits."""
        if rpm != self.rpm or tpm != self.tpm:
            self._resize(rpm, tpm)
        elapsed = now - self.stamp
        if elapsed > 0:  # else a clock that stood still (or an injected one going back)
            self.stamp = now
            level = self.rpm_level + elapsed * rpm
            cap = self.rpm_cap
            self.rpm_level = level if level < cap else cap
            level = self.tpm_level + elapsed * tpm
            cap = self.tpm_cap
            self.tpm_level = level if level < cap else cap

    def _resize(self, rpm: int, tpm: int) -> None:
        """A limit changed: more room when it rose (what was used stays used); clipped to
        the new capacity when it fell."""
        if rpm != self.rpm:
            cap = rpm * UNIT
            if rpm > self.rpm:
                self.rpm_level += cap - self.rpm_cap
            elif self.rpm_level > cap:
                self.rpm_level = cap
            self.rpm, self.rpm_cap = rpm, cap
        if tpm != self.tpm:
            cap = tpm * UNIT
            if tpm > self.tpm:
                self.tpm_level += cap - self.tpm_cap
            elif self.tpm_level > cap:
                self.tpm_level = cap
            self.tpm, self.tpm_cap = tpm, cap


def concurrency_refused(tenant: TenantContext) -> GatewayError:
    """429 ``limit_concurrent``: the tenant's own concurrency (every backend's words)."""
    return GatewayError(
        429,
        "limit_concurrent",
        f"tenant {tenant.name!r} is at its limit of {tenant.limits.max_concurrent} "
        "concurrent requests; retry when one finishes",
        retry_after=CONCURRENCY_RETRY_AFTER_S,
    )


def rpm_refused(tenant: TenantContext, wait: float) -> GatewayError:
    """429 ``limit_rpm``, to retry in ``wait`` seconds."""
    return GatewayError(
        429,
        "limit_rpm",
        f"tenant {tenant.name!r} exceeded its limit of {tenant.limits.rpm} requests per "
        f"minute; retry in {wait:.1f} s",
        retry_after=wait,
    )


def tpm_refused(tenant: TenantContext, need: int, wait: float) -> GatewayError:
    """429 ``limit_tpm`` for a request reserving ``need`` tokens, to retry in ``wait`` s."""
    return GatewayError(
        429,
        "limit_tpm",
        f"tenant {tenant.name!r} exceeded its limit of {tenant.limits.tpm} tokens per minute "
        f"(this request reserves {need}); retry in {wait:.1f} s",
        retry_after=wait,
    )


def gateway_busy(global_max_concurrent: int) -> GatewayBusy:
    """429 ``limit_concurrent`` for the gateway's own (per-process) limit."""
    return GatewayBusy(
        429,
        "limit_concurrent",
        f"the gateway is at its limit of {global_max_concurrent} concurrent "
        "requests; retry shortly",
        retry_after=CONCURRENCY_RETRY_AFTER_S,
    )


def _seconds(missing_units: int, per_ns: int) -> float:
    """Seconds until a bucket gaining ``per_ns`` units per ns has ``missing_units`` more."""
    return -(-missing_units // per_ns) / 1e9  # ceil to the nanosecond


class Admission:
    """A granted request: holds a concurrency slot (and, after ``reserve``, a TPM
    reservation) until ``finish``."""

    __slots__ = ("_limiter", "_state", "_tenant", "done", "reserved_tokens", "tenant_id")

    def __init__(self, limiter: Limiter, state: _TenantState, tenant: TenantContext) -> None:
        self._limiter = limiter
        self._state = state
        self._tenant = tenant
        self.tenant_id = tenant.tenant_id
        self.reserved_tokens = 0
        self.done = False

    def reserve(self, *, prompt_tokens: int, max_output_tokens: int) -> None:
        """Step 2: reserve ``prompt + max_output`` TPM tokens, or raise 429 ``limit_tpm``.

        A refusal takes nothing of TPM; the slot stays held until ``finish``.
        """
        if self.done or self.reserved_tokens:
            raise RuntimeError("Admission.reserve: already finished or reserved")
        tenant = self._tenant
        tpm = tenant.limits.tpm
        state = self._state
        state.refill(self._limiter._now(), state.rpm, tpm)
        need = prompt_tokens + max_output_tokens
        if need < 0:
            need = 0
        # A request larger than the whole bucket is let through when the bucket is full.
        fit = (need if need < tpm else tpm) * UNIT
        if state.tpm_level < fit:
            raise tpm_refused(tenant, need, _seconds(fit - state.tpm_level, tpm))
        state.tpm_level -= need * UNIT
        self.reserved_tokens = need

    async def reserve_tokens(self, *, prompt_tokens: int, max_output_tokens: int) -> None:
        """The backend interface (``limiting.Grant``): :meth:`reserve`, awaited."""
        self.reserve(prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)

    def finish(self, *, actual_tokens: int) -> None:
        """Release the slot and reconcile TPM with the tokens really used. Idempotent.

        ``actual_tokens`` is prompt + completion tokens as finally counted (for a client
        disconnect: the prompt plus the completion chunks seen so far). Before ``reserve``
        (a request refused or failed early) nothing was reserved and nothing is debited.
        """
        if self.done:
            return
        self.done = True
        limiter = self._limiter
        state = self._state
        state.inflight -= 1
        limiter._inflight -= 1
        if not self.reserved_tokens:
            return
        back = self.reserved_tokens - max(actual_tokens, 0)
        if back < 0:
            # A debit is taken from the level brought to now (not from one that would
            # still gain what the full bucket could not hold). A refund needs no refill:
            # refunding then refilling gives the same level as the other way round.
            state.refill(limiter._now(), state.rpm, state.tpm)
        level = state.tpm_level + back * UNIT
        cap = state.tpm_cap
        state.tpm_level = level if level < cap else cap


class Limiter:
    """Admission control for the gateway (single asyncio thread; no locks)."""

    __slots__ = ("_clock", "_inflight", "_now", "_states", "global_max_concurrent")

    def __init__(
        self, *, global_max_concurrent: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``clock``: seconds (an injected one in tests; the real one is read in ns)."""
        if global_max_concurrent < 1:
            raise ValueError("global_max_concurrent must be at least 1")
        self.global_max_concurrent = global_max_concurrent
        self._clock = clock
        # The clock in integer nanoseconds (an injected one rounded: exact for its steps).
        self._now: Callable[[], int] = (
            time.monotonic_ns if clock is time.monotonic else lambda: round(clock() * 1e9)
        )
        self._inflight = 0
        self._states: dict[str, _TenantState] = {}

    def enter(self, tenant: TenantContext) -> Admission:
        """Step 1: take a concurrency slot and one RPM token, or raise 429 (see the module
        docstring). The caller must ``finish`` the admission on every path."""
        limits = tenant.limits
        tid = tenant.tenant_id
        now = self._now()
        state = self._states.get(tid)
        if state is None:
            state = self._states[tid] = _TenantState(limits.rpm, limits.tpm, now)

        # Concurrency, RPM, then the gateway's concurrency: nothing is taken yet.
        if state.inflight >= limits.max_concurrent:
            raise concurrency_refused(tenant)

        rpm = limits.rpm
        state.refill(now, rpm, limits.tpm)
        # RPM: one token per request.
        if state.rpm_level < UNIT:
            raise rpm_refused(tenant, _seconds(UNIT - state.rpm_level, rpm))
        if self._inflight >= self.global_max_concurrent:
            raise gateway_busy(self.global_max_concurrent)

        state.rpm_level -= UNIT
        state.inflight += 1
        self._inflight += 1
        return Admission(self, state, tenant)

    async def acquire(self, tenant: TenantContext, tokens: int | None = None) -> Admission:
        """The backend interface (``limiting.LimitsBackend``): :meth:`enter` (or with
        ``tokens``, :meth:`admit`), awaited (it never suspends: the memory backend's speed
        is the synchronous path's)."""
        return self.acquire_now(tenant, tokens)

    def acquire_now(self, tenant: TenantContext, tokens: int | None = None) -> Admission:
        """:meth:`acquire` without the await (the Redis backend's fail_open stand-in)."""
        if tokens is None:
            return self.enter(tenant)
        return self.admit(tenant, prompt_tokens=tokens, max_output_tokens=0)

    def health(self) -> str:
        """``/healthz``'s word for the limits: memory is always there."""
        return "ok"

    def serving(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to close (the backend interface's shutdown hook)."""

    def admit(
        self, tenant: TenantContext, *, prompt_tokens: int, max_output_tokens: int
    ) -> Admission:
        """Both steps at once: ``enter`` then ``reserve``; a TPM refusal releases the slot
        (the RPM token stays spent, as in the two-step use)."""
        admission = self.enter(tenant)
        try:
            admission.reserve(prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)
        except BaseException:
            admission.finish(actual_tokens=0)
            raise
        return admission

    def inflight(self, tenant_id: str | None = None) -> int:
        """Requests admitted and not finished: all, or one tenant's."""
        if tenant_id is None:
            return self._inflight
        state = self._states.get(tenant_id)
        return state.inflight if state is not None else 0

    def available(self, tenant: TenantContext) -> tuple[float, float]:
        """The ``(rpm, tpm)`` tokens the tenant's buckets hold now (for admin views, tests)."""
        limits = tenant.limits
        state = self._states.get(tenant.tenant_id)
        if state is None:
            return float(limits.rpm), float(limits.tpm)
        state.refill(self._now(), limits.rpm, limits.tpm)
        return state.rpm_level / UNIT, state.tpm_level / UNIT

    def prune(self) -> int:
        """Forget idle tenants whose buckets are full again (equal to a fresh state).

        Keeps the table as small as the set of recently active tenants; returns how many
        entries were dropped. Cheap enough to call every minute.
        """
        now = self._now()
        drop = []
        for tid, state in self._states.items():
            if state.inflight:
                continue
            state.refill(now, state.rpm, state.tpm)
            if state.rpm_level >= state.rpm_cap and state.tpm_level >= state.tpm_cap:
                drop.append(tid)
        for tid in drop:
            del self._states[tid]
        return len(drop)
