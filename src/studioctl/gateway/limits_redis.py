"""Tenant limits shared by every gateway replica, held in Redis (``limits.backend: redis``).

The same contract as the memory backend (``limits``: the order of the checks, the messages,
Retry-After, refusals take nothing, refunds and debits on every path, limit changes), with
the state in Redis and every step one atomic server-side script (``limits_lua``; exactness
of the numbers is explained there). A request costs two: ``acquire`` (tenant slot, RPM token
and, given ``tokens`` as the gateway does when the body alone tells the request's size, its
TPM reservation) and ``finish`` (sent without waiting, with the other commands of the same
turn of the event loop). ``Grant.reserve_tokens`` is a third only for a prompt the engine had
to count first (near ``max_context_tokens``). None of TPM when the tenant's TPM is
``MAX_LIMIT`` or more (no limit in practice). Time is Redis's own (``TIME`` inside the
scripts): replicas' clocks may differ.

Slots are leases: each admitted request is a member of its tenant's slot ZSET with an expiry
``lease_s`` ahead; this process pushes all its live leases forward in one round trip every
``lease_s / 3``, so a long request keeps its slot, and a replica killed with -9 loses its
slots within ``lease_s`` (the admission script purges expired members). A release that
cannot be sent (Redis down), and the release of an admission that timed out (a paused Redis
still runs what waits in its socket when it resumes), are kept (up to ``MAX_UNSETTLED``) and
sent once Redis answers again; beyond that bound the lease reclaims the slot.

``gateway.max_concurrent`` stays per process: counted here, in memory. It is checked first
without taking anything from Redis; when it is full the tenant's own limits are still
answered first (a dry run of the admission script), so that what ``queue_when_busy`` parks
is only ever the gateway's refusal.

Redis unreachable (refused, timed out: ``redis_client``'s bounds, 0.5 s): the request gets
503 ``limits_unavailable`` with Retry-After, or, with ``fail_open``, is admitted by this
process's own in-memory limiter; from then on no request waits on Redis: a background task
PINGs it with backoff (0.1 s doubling to 2 s) and Redis is used again once it answers.
``health()`` says ``redis unreachable`` meanwhile (``/healthz``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from typing import Any

from studioctl.errors import GatewayError
from studioctl.gateway.limits import (
    Admission,
    Limiter,
    concurrency_refused,
    gateway_busy,
    rpm_refused,
    tpm_refused,
)
from studioctl.gateway.limits_lua import ENTER, FINISH, MAX_LIMIT, MAX_TOKENS, RENEW, RESERVE
from studioctl.gateway.redis_client import RedisClient
from studioctl.tenants import TenantContext

__all__ = ["BACKOFF_MAX_S", "RedisGrant", "RedisLimiter", "limits_unavailable"]

log = logging.getLogger("studioctl.gateway")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
UNAVAILABLE_RETRY_AFTER_S = 1.0
#: Releases kept while Redis is away, sent once it answers (beyond: left to the leases).
MAX_UNSETTLED = 10_000


def limits_unavailable(where: str) -> GatewayError:
    """503 ``limits_unavailable``: the shared limits cannot be checked (fail closed)."""
    return GatewayError(
        503,
        "limits_unavailable",
        f"the tenant limits (Redis at {where}) cannot be checked; retry shortly",
        retry_after=UNAVAILABLE_RETRY_AFTER_S,
    )


def _clamp(n: int, top: int) -> int:
    return 0 if n < 0 else top if n > top else n


def _wait_s(missing_units: int, per_ms: int) -> float:
    """Seconds until a bucket gaining ``per_ms`` units a ms has ``missing_units`` more."""
    return -(-int(missing_units) // per_ms) / 1000


class RedisGrant:
    """One admitted request: a lease in Redis (or, failed open, a local admission)."""

    __slots__ = ("_limiter", "_local", "_member", "_tenant", "done", "reserved_tokens", "tenant_id")

    def __init__(
        self,
        limiter: RedisLimiter,
        tenant: TenantContext,
        member: str,
        local: Admission | None = None,
        reserved: int = 0,
    ) -> None:
        """``reserved``: the TPM tokens the admission took with the slot."""
        self._limiter = limiter
        self._tenant = tenant
        self._member = member  # "" when failed open
        self._local = local
        self.tenant_id = tenant.tenant_id
        self.reserved_tokens = reserved if local is None else local.reserved_tokens
        self.done = False

    async def reserve_tokens(self, *, prompt_tokens: int, max_output_tokens: int) -> None:
        """TPM: ``prompt + max_output`` tokens, or 429 ``limit_tpm`` (nothing taken), or
        503 ``limits_unavailable`` (failed closed; failed open: admitted without TPM)."""
        if self.done or self.reserved_tokens:
            raise RuntimeError("RedisGrant.reserve_tokens: already finished or reserved")
        if self._local is not None:
            self._local.reserve(prompt_tokens=prompt_tokens, max_output_tokens=max_output_tokens)
            self.reserved_tokens = self._local.reserved_tokens
            return
        tenant = self._tenant
        need = _clamp(prompt_tokens + max_output_tokens, MAX_TOKENS)
        limiter = self._limiter
        rpm, tpm = limiter.rates(tenant)
        if tpm >= MAX_LIMIT:
            return  # no TPM limit to speak of: no round trip (and nothing to give back)
        bucket = limiter.key(tenant, "bucket")

        def orphan(result: Any) -> None:  # cancelled after Redis reserved: give it back
            if result[0] == 0:
                limiter.send_finish(tenant, "", need)

        try:
            result = await limiter.call(limiter.reserve_script, [bucket], [rpm, tpm, need], orphan)
        except ConnectionError:
            if limiter.fail_open:
                return
            raise limits_unavailable(limiter.where) from None
        if result[0] != 0:
            raise tpm_refused(tenant, need, _wait_s(result[1], tpm))
        self.reserved_tokens = need

    def finish(self, *, actual_tokens: int) -> None:
        """Release the slot and reconcile TPM (sent in the background). Idempotent."""
        if self.done:
            return
        self.done = True
        limiter = self._limiter
        limiter.release_local(self.tenant_id, self._member)
        if self._local is not None:
            self._local.finish(actual_tokens=actual_tokens)
            return
        back = 0
        if self.reserved_tokens:
            back = self.reserved_tokens - _clamp(actual_tokens, MAX_TOKENS)
        limiter.send_finish(self._tenant, self._member, back)


class RedisLimiter:
    """``LimitsBackend`` over Redis (see the module docstring)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        global_max_concurrent: int,
        lease_s: float,
        namespace: str = "default",
        fail_open: bool = False,
    ) -> None:
        if global_max_concurrent < 1:
            raise ValueError("global_max_concurrent must be at least 1")
        self.global_max_concurrent = global_max_concurrent
        self.fail_open = fail_open
        self.where = client.shown
        self._client = client
        self._enter = client.script(ENTER)
        self.reserve_script = client.script(RESERVE)
        self._finish = client.script(FINISH)
        self._renew = client.script(RENEW)
        self.lease_ms = max(int(lease_s * 1000), 1)
        self._prefix = f"studioctl:{namespace}:limits:"
        # Lease ids: this process's random token and a counter (bounded, never reused).
        self._token = secrets.token_hex(6)
        self._ids = itertools.count()
        self._inflight = 0
        self._tenants: dict[str, int] = {}  # tenant id → requests of this process
        self._leases: dict[str, str] = {}  # member → its slot key, while the request runs
        # fail_open's stand-in: this process's own tenant limits (the global one is ours).
        self._local = Limiter(global_max_concurrent=2**62)
        self._pending: set[asyncio.Task[Any]] = set()  # releases kept through an outage
        # Releases Redis did not get (down, or a timed-out admission it may still apply once
        # it reads it: a paused server executes what is in its socket when it resumes).
        self._unsettled: list[tuple[TenantContext, str, int]] = []
        self._probe: asyncio.Task[None] | None = None  # while Redis is unreachable
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    # -- the backend interface ------------------------------------------------------------

    async def acquire(self, tenant: TenantContext, tokens: int | None = None) -> RedisGrant:
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        if self._inflight >= self.global_max_concurrent:
            await self._check_only(tenant)  # the tenant's own 429 first
            raise gateway_busy(self.global_max_concurrent)
        tid = tenant.tenant_id
        self._inflight += 1  # taken before any await: a freed slot goes to one request
        self._tenants[tid] = self._tenants.get(tid, 0) + 1
        try:
            return await self._enter_remote(tenant, tokens)
        except BaseException:
            self.release_local(tid, "")
            raise

    def inflight(self, tenant_id: str | None = None) -> int:
        if tenant_id is None:
            return self._inflight
        return self._tenants.get(tenant_id, 0)

    def prune(self) -> int:
        return self._local.prune()

    def health(self) -> str:
        return "redis unreachable" if self._probe is not None else "ok"

    def serving(self) -> bool:
        """Failing open, requests are still admitted (by the local limits) meanwhile."""
        return self._probe is None or self.fail_open

    async def close(self) -> None:
        self._closed = True
        for task in (self._renewer, self._probe):
            if task is not None:
                task.cancel()
        if self._pending:  # the last releases, briefly
            await asyncio.wait(set(self._pending), timeout=1.0)
        await self._client.close()

    async def flush(self) -> None:
        """Wait for the releases sent so far (tests compare backends step by step)."""
        while self._pending:
            await asyncio.wait(set(self._pending))
        if self._probe is None:
            with contextlib.suppress(ConnectionError):
                await self._client.settle()

    # -- what the grants call ---------------------------------------------------------------

    def key(self, tenant: TenantContext, kind: str) -> str:
        """A tenant's key, by name: replicas with stores of their own (each its own id for
        the tenant) share its limits; names are unique and bounded (1-64 of [A-Za-z0-9._-])."""
        return f"{self._prefix}{{{tenant.name}}}:{kind}"

    @staticmethod
    def rates(tenant: TenantContext) -> tuple[int, int]:
        limits = tenant.limits
        return _clamp(limits.rpm, MAX_LIMIT) or 1, _clamp(limits.tpm, MAX_LIMIT) or 1

    async def call(
        self, script: Any, keys: list[str], args: list[str | int], orphan: Any = None
    ) -> Any:
        """One script round trip; ``ConnectionError`` when Redis is (or just went) away."""
        if self._probe is not None:
            raise ConnectionError(f"redis at {self.where} unreachable")
        try:
            return await self._client.run(script, keys, args, orphan)
        except ConnectionError as exc:
            self._went_down(exc)
            raise

    def release_local(self, tenant_id: str, member: str) -> None:
        self._inflight -= 1
        left = self._tenants.get(tenant_id, 1) - 1
        if left > 0:
            self._tenants[tenant_id] = left
        else:
            self._tenants.pop(tenant_id, None)
        if member:
            self._leases.pop(member, None)

    def send_finish(self, tenant: TenantContext, member: str, back: int) -> None:
        """Release ``member``'s slot and give ``back`` TPM tokens (negative: a debit), sent
        without waiting (written with the other commands of this turn of the event loop).
        Redis away: kept and sent once it answers (beyond the bound, left to the lease)."""
        if not member and not back:
            return
        if self._probe is not None:
            self._keep(tenant, member, back)
            return
        keys, args = self._finish_call(tenant, member, back)

        def done(reply: Any) -> None:
            if isinstance(reply, ConnectionError):  # sent again once Redis answers
                self._went_down(reply)
                self._keep(tenant, member, back)
            elif isinstance(reply, BaseException):
                log.error("limits: releasing a slot in Redis failed: %s", reply)

        self._client.send(self._finish, keys, args, done)

    # -- inside -----------------------------------------------------------------------------

    async def _enter_remote(self, tenant: TenantContext, tokens: int | None) -> RedisGrant:
        """ENTER: slot and RPM token, and with ``tokens`` their TPM (none to reserve when
        the tenant's TPM is ``MAX_LIMIT`` or more: no limit in practice)."""
        member = f"{self._token}:{next(self._ids)}"
        slots = self.key(tenant, "slots")
        rpm, tpm = self.rates(tenant)
        need = -1 if tokens is None or tpm >= MAX_LIMIT else _clamp(tokens, MAX_TOKENS)
        limits = tenant.limits
        args: list[str | int] = [limits.max_concurrent, rpm, tpm, self.lease_ms, member, 0, need]

        def orphan(result: Any) -> None:  # cancelled after Redis admitted: give it back
            if result[0] == 0:
                self.send_finish(tenant, member, max(need, 0))

        try:
            if self._probe is not None:  # known down: not even tried
                raise ConnectionError(self.where)
            try:
                result = await self.call(
                    self._enter, [slots, self.key(tenant, "bucket")], args, orphan
                )
            except ConnectionError:
                # Timed out, the script may still run once Redis reads it: release it then
                # (ZREM of a member never added changes nothing; its TPM is not given back).
                self._keep(tenant, member, 0)
                raise
        except ConnectionError:
            if not self.fail_open:
                raise limits_unavailable(self.where) from None
            local = self._local.acquire_now(tenant, tokens)
            return RedisGrant(self, tenant, "", local)
        code = result[0]
        if code == 1:
            raise concurrency_refused(tenant)
        if code == 2:
            raise rpm_refused(tenant, _wait_s(result[1], rpm))
        if code == 4:
            raise tpm_refused(tenant, need, _wait_s(result[1], tpm))
        self._leases[member] = slots
        return RedisGrant(self, tenant, member, reserved=max(need, 0))

    async def _check_only(self, tenant: TenantContext) -> None:
        """The admission script's verdict without taking anything (the gateway is full)."""
        rpm, tpm = self.rates(tenant)
        limits = tenant.limits
        args: list[str | int] = [limits.max_concurrent, rpm, tpm, self.lease_ms, "", 1, -1]
        try:
            result = await self.call(
                self._enter, [self.key(tenant, "slots"), self.key(tenant, "bucket")], args
            )
        except ConnectionError:
            return  # the gateway's own refusal stands
        if result[0] == 1:
            raise concurrency_refused(tenant)
        if result[0] == 2:
            raise rpm_refused(tenant, _wait_s(result[1], rpm))

    async def _release(self, tenant: TenantContext, member: str, back: int) -> None:
        """One release, waited for (what :meth:`_settle` sends after an outage)."""
        keys, args = self._finish_call(tenant, member, back)
        try:
            await self.call(self._finish, keys, args)
        except ConnectionError:  # marked down by call(): sent again once Redis answers
            self._keep(tenant, member, back)

    def _finish_call(
        self, tenant: TenantContext, member: str, back: int
    ) -> tuple[list[str], list[str | int]]:
        """FINISH's keys and arguments."""
        rpm, tpm = self.rates(tenant)
        return [self.key(tenant, "slots"), self.key(tenant, "bucket")], [member, rpm, tpm, back]

    def _keep(self, tenant: TenantContext, member: str, back: int) -> None:
        if len(self._unsettled) < MAX_UNSETTLED:
            self._unsettled.append((tenant, member, back))

    def _went_down(self, exc: BaseException) -> None:
        if self._probe is None and not self._closed:
            log.warning("limits: %s; %s until it answers", exc, self._mode())
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    def _mode(self) -> str:
        return "admitting with local limits" if self.fail_open else "answering 503"

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self._client.execute("PING")
            except ConnectionError:
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            except Exception:
                log.exception("limits: PING to Redis failed")
                delay = BACKOFF_MAX_S
                continue
            log.warning("limits: Redis at %s answers again", self.where)
            self._probe = None
            task = asyncio.get_running_loop().create_task(self._settle())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return

    async def _settle(self) -> None:
        """The releases kept through an outage, one after the other (not thousands of
        calls at once competing with the requests for connections)."""
        unsettled, self._unsettled = self._unsettled, []
        for i, (tenant, member, back) in enumerate(unsettled):
            if self._probe is not None:  # down again: keep the rest for next time
                self._unsettled.extend(unsettled[i:])
                return
            await self._release(tenant, member, back)

    async def _renew_forever(self) -> None:
        """Every lease_s / 3: all this process's live leases pushed forward, one round trip."""
        period = self.lease_ms / 3000
        while True:
            await asyncio.sleep(period)
            if not self._leases or self._probe is not None:
                continue
            groups: dict[str, list[str]] = {}
            for member, slots in self._leases.items():
                groups.setdefault(slots, []).append(member)
            args: list[str | int] = [self.lease_ms]
            for members in groups.values():
                args += [len(members), *members]
            try:
                await self.call(self._renew, list(groups), args)
            except ConnectionError:
                pass  # marked down; renewed again once Redis answers
            except Exception:
                log.exception("limits: renewing the slot leases failed")
