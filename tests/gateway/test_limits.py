"""Limiter: concurrency, RPM and TPM token buckets, with an injected clock."""

from __future__ import annotations

import dataclasses

import pytest

from studioctl.errors import GatewayError
from studioctl.gateway.limits import Admission, Limiter
from studioctl.tenants import TenantContext, TenantLimits


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def tenant(
    name: str = "acme",
    *,
    max_concurrent: int = 100,
    rpm: int = 1_000_000,
    tpm: int = 1_000_000_000,
) -> TenantContext:
    limits = TenantLimits(
        max_concurrent=max_concurrent,
        rpm=rpm,
        tpm=tpm,
        max_context_tokens=8192,
        max_output_tokens=512,
    )
    return TenantContext(
        tenant_id=f"t_{name}", name=name, enabled=True, limits=limits, key_prefix="sk-st-x"
    )


def with_limits(ctx: TenantContext, **changes: int) -> TenantContext:
    return dataclasses.replace(ctx, limits=dataclasses.replace(ctx.limits, **changes))


def refused(limiter: Limiter, ctx: TenantContext, prompt: int = 0, out: int = 0) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        limiter.admit(ctx, prompt_tokens=prompt, max_output_tokens=out)
    err = info.value
    assert err.http_status == 429
    assert err.error_type == "rate_limit_error"
    assert err.retry_after is not None and err.retry_after > 0
    return err


# -- RPM -----------------------------------------------------------------------------------


def test_rpm_bucket_allows_a_minute_burst_then_refills_continuously() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(rpm=60)  # capacity 60, one token per second
    for _ in range(60):
        lim.admit(ctx, prompt_tokens=1, max_output_tokens=1).finish(actual_tokens=2)
    err = refused(lim, ctx)
    assert err.code == "limit_rpm"
    assert err.retry_after == pytest.approx(1.0)
    assert "60 requests per minute" in err.message

    clock.t += 0.5
    assert refused(lim, ctx).retry_after == pytest.approx(0.5)  # computed, not a constant
    clock.t += 0.5
    lim.admit(ctx, prompt_tokens=1, max_output_tokens=1).finish(actual_tokens=2)
    assert refused(lim, ctx).retry_after == pytest.approx(1.0)


def test_rpm_retry_after_scales_with_the_rate() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(rpm=120)  # two tokens per second
    for _ in range(120):
        lim.admit(ctx, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)
    assert refused(lim, ctx).retry_after == pytest.approx(0.5)


def test_rpm_admits_exactly_burst_plus_refill_over_a_long_run() -> None:
    # 4 requests/s against 60/min: the bucket starts full (60) and refills 1/s; after 100 s
    # exactly 60 + 100 requests got through, none more, none fewer.
    clock = Clock(0.0)
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(rpm=60)
    admitted = 0
    for step in range(401):  # t = 0, 0.25, …, 100.0 (exact in binary floating point)
        clock.t = step * 0.25
        try:
            lim.admit(ctx, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)
        except GatewayError as exc:
            assert exc.code == "limit_rpm"
        else:
            admitted += 1
    assert admitted == 160


@pytest.mark.parametrize(("rpm", "burst"), [(60, 60), (7, 7), (600, 600)])
def test_waiting_exactly_retry_after_is_enough_and_a_bit_less_is_not(rpm: int, burst: int) -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=10_000, clock=clock)
    ctx = tenant(rpm=rpm)
    for _ in range(burst):
        lim.admit(ctx, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)
    wait = refused(lim, ctx).retry_after
    assert wait == pytest.approx(60.0 / rpm)
    start = clock.t
    clock.t = start + wait * 0.99
    refused(lim, ctx)
    clock.t = start + wait * 1.0000001
    lim.admit(ctx, prompt_tokens=0, max_output_tokens=0)


# -- TPM -----------------------------------------------------------------------------------


def test_tpm_reserves_prompt_plus_max_output_and_computes_retry_after() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(tpm=6000)  # 100 tokens per second
    held = [lim.admit(ctx, prompt_tokens=1000, max_output_tokens=1000) for _ in range(3)]
    assert lim.available(ctx)[1] == pytest.approx(0.0)
    err = refused(lim, ctx, prompt=1000, out=1000)
    assert err.code == "limit_tpm"
    assert err.retry_after == pytest.approx(20.0)  # 2000 tokens at 100/s
    assert "6000 tokens per minute" in err.message
    # A smaller request needs less waiting.
    assert refused(lim, ctx, prompt=100, out=100).retry_after == pytest.approx(2.0)
    for adm in held:
        adm.finish(actual_tokens=2000)


def test_tpm_refund_on_finish_gives_back_the_unused_reservation() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(tpm=6000)
    adm = lim.admit(ctx, prompt_tokens=1000, max_output_tokens=5000)
    assert lim.available(ctx)[1] == pytest.approx(0.0)
    adm.finish(actual_tokens=1200)  # the model stopped early
    assert lim.available(ctx)[1] == pytest.approx(4800.0)
    err = refused(lim, ctx, prompt=2000, out=3000)
    assert err.retry_after == pytest.approx(2.0)  # 200 missing at 100/s


def test_tpm_debit_when_actual_exceeds_the_reservation() -> None:
    # The prompt count may be an estimate: the real usage is taken even beyond the reserve.
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(tpm=6000)
    lim.admit(ctx, prompt_tokens=100, max_output_tokens=100).finish(actual_tokens=900)
    assert lim.available(ctx)[1] == pytest.approx(5100.0)


@pytest.mark.parametrize(
    ("outcome", "actual"),
    [("success", 700), ("upstream error", 400), ("timeout", 400), ("client disconnect", 437)],
)
def test_reconcile_happens_on_every_outcome(outcome: str, actual: int) -> None:
    # Whatever ended the request, finish() with what was really used settles the bucket
    # (errors and timeouts: the prompt; a disconnect: prompt + chunks seen).
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(tpm=60_000)
    adm = lim.admit(ctx, prompt_tokens=400, max_output_tokens=1024)
    assert lim.available(ctx)[1] == pytest.approx(60_000 - 1424)
    clock.t += 0.0  # no refill: the numbers are the reconciliation alone
    adm.finish(actual_tokens=actual)
    assert lim.available(ctx)[1] == pytest.approx(60_000 - actual), outcome
    assert lim.inflight() == 0


def test_debit_is_taken_from_the_refilled_level() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(tpm=6000)  # 100/s
    adm = lim.admit(ctx, prompt_tokens=3000, max_output_tokens=3000)  # bucket 0
    clock.t += 10  # +1000
    adm.finish(actual_tokens=6500)  # 500 more than reserved
    assert lim.available(ctx)[1] == pytest.approx(500.0)


def test_refund_never_overfills_the_bucket() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(tpm=6000)
    adm = lim.admit(ctx, prompt_tokens=10, max_output_tokens=4000)
    clock.t += 3600
    adm.finish(actual_tokens=20)
    assert lim.available(ctx)[1] == pytest.approx(6000.0)


def test_a_request_larger_than_the_bucket_passes_only_when_the_bucket_is_full() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=1000, clock=clock)
    ctx = tenant(tpm=600)  # 10/s
    lim.admit(ctx, prompt_tokens=500, max_output_tokens=300).finish(actual_tokens=800)
    assert lim.available(ctx)[1] == pytest.approx(-200.0)  # in debt
    err = refused(lim, ctx, prompt=500, out=300)
    assert err.retry_after == pytest.approx(80.0)  # back to full: 800 tokens at 10/s
    clock.t += 80
    lim.admit(ctx, prompt_tokens=500, max_output_tokens=300)


# -- concurrency -----------------------------------------------------------------------------


def test_tenant_concurrency_limit_refuses_at_once_and_frees_on_finish() -> None:
    lim = Limiter(global_max_concurrent=100, clock=Clock())
    ctx = tenant(max_concurrent=2)
    a = lim.admit(ctx, prompt_tokens=1, max_output_tokens=1)
    b = lim.admit(ctx, prompt_tokens=1, max_output_tokens=1)
    assert lim.inflight() == 2 and lim.inflight(ctx.tenant_id) == 2
    err = refused(lim, ctx)
    assert err.code == "limit_concurrent"
    assert "'acme'" in err.message and "2 concurrent" in err.message
    a.finish(actual_tokens=2)
    assert lim.inflight(ctx.tenant_id) == 1
    lim.admit(ctx, prompt_tokens=1, max_output_tokens=1)
    b.finish(actual_tokens=2)
    assert lim.inflight("t_nobody") == 0


def test_global_concurrency_limit_applies_across_tenants() -> None:
    lim = Limiter(global_max_concurrent=3, clock=Clock())
    one, two = tenant("one", max_concurrent=2), tenant("two", max_concurrent=2)
    held = [
        lim.admit(one, prompt_tokens=0, max_output_tokens=0),
        lim.admit(one, prompt_tokens=0, max_output_tokens=0),
        lim.admit(two, prompt_tokens=0, max_output_tokens=0),
    ]
    err = refused(lim, two)
    assert err.code == "limit_concurrent"
    assert "gateway" in err.message and "3 concurrent" in err.message
    held[0].finish(actual_tokens=0)
    lim.admit(two, prompt_tokens=0, max_output_tokens=0)
    assert lim.inflight() == 3
    assert lim.inflight(one.tenant_id) == 1 and lim.inflight(two.tenant_id) == 2


def test_finish_is_idempotent() -> None:
    lim = Limiter(global_max_concurrent=10, clock=Clock())
    ctx = tenant(tpm=6000)
    other = lim.admit(ctx, prompt_tokens=0, max_output_tokens=0)
    adm = lim.admit(ctx, prompt_tokens=1000, max_output_tokens=1000)
    assert isinstance(adm, Admission) and adm.reserved_tokens == 2000
    adm.finish(actual_tokens=100)
    adm.finish(actual_tokens=100)
    adm.finish(actual_tokens=0)
    assert lim.inflight() == 1
    assert lim.available(ctx)[1] == pytest.approx(5900.0)
    other.finish(actual_tokens=0)
    assert lim.inflight() == 0


# -- a refusal by one limit consumes nothing of the others -----------------------------------


def test_concurrency_refusal_consumes_no_rpm_or_tpm() -> None:
    lim = Limiter(global_max_concurrent=100, clock=Clock())
    ctx = tenant(max_concurrent=1, rpm=10, tpm=6000)
    lim.admit(ctx, prompt_tokens=100, max_output_tokens=100)
    before = lim.available(ctx)
    for _ in range(20):
        assert refused(lim, ctx, prompt=100, out=100).code == "limit_concurrent"
    assert lim.available(ctx) == before == (pytest.approx(9.0), pytest.approx(5800.0))


def test_rpm_refusal_consumes_no_tpm_and_no_slot() -> None:
    lim = Limiter(global_max_concurrent=100, clock=Clock())
    ctx = tenant(rpm=2, tpm=6000)
    for _ in range(2):
        lim.admit(ctx, prompt_tokens=100, max_output_tokens=0).finish(actual_tokens=100)
    tpm_before = lim.available(ctx)[1]
    for _ in range(5):
        assert refused(lim, ctx, prompt=100).code == "limit_rpm"
    assert lim.available(ctx)[1] == tpm_before
    assert lim.inflight() == 0


def test_tpm_refusal_spends_the_rpm_token_but_no_slot() -> None:
    # A request refused at step 2 (TPM) has passed step 1: it counted as a request (the
    # gateway did work for it: a prompt count), so its RPM token stays spent; TPM and the
    # slot are untouched.
    lim = Limiter(global_max_concurrent=100, clock=Clock())
    ctx = tenant(rpm=60, tpm=600)
    lim.admit(ctx, prompt_tokens=600, max_output_tokens=0).finish(actual_tokens=600)
    assert lim.available(ctx) == (pytest.approx(59.0), pytest.approx(0.0))
    for _ in range(30):
        assert refused(lim, ctx, prompt=50).code == "limit_tpm"
    assert lim.available(ctx) == (pytest.approx(29.0), pytest.approx(0.0))
    assert lim.inflight() == 0 and lim.inflight(ctx.tenant_id) == 0


# -- the two steps: enter (concurrency, RPM), then reserve (TPM) --------------------------------


def test_enter_takes_a_slot_and_an_rpm_token_and_nothing_of_tpm() -> None:
    lim = Limiter(global_max_concurrent=100, clock=Clock())
    ctx = tenant(max_concurrent=1, rpm=10, tpm=6000)
    adm = lim.enter(ctx)
    assert lim.inflight(ctx.tenant_id) == 1
    assert lim.available(ctx) == (pytest.approx(9.0), pytest.approx(6000.0))
    with pytest.raises(GatewayError) as info:
        lim.enter(ctx)  # the slot is held through the (slow) prompt count
    assert info.value.code == "limit_concurrent"
    adm.reserve(prompt_tokens=100, max_output_tokens=400)
    assert adm.reserved_tokens == 500
    assert lim.available(ctx)[1] == pytest.approx(5500.0)
    adm.finish(actual_tokens=120)
    assert lim.inflight() == 0
    assert lim.available(ctx) == (pytest.approx(9.0), pytest.approx(5880.0))


def test_finish_before_reserve_releases_the_slot_and_debits_nothing() -> None:
    lim = Limiter(global_max_concurrent=1, clock=Clock())
    ctx = tenant(tpm=6000)
    adm = lim.enter(ctx)
    adm.finish(actual_tokens=5000)  # refused later (say, context_too_long): nothing was used
    assert lim.inflight() == 0
    assert lim.available(ctx)[1] == pytest.approx(6000.0)
    lim.enter(ctx).finish(actual_tokens=0)  # the global slot is free again


def test_a_refused_reservation_keeps_the_slot_until_finish() -> None:
    lim = Limiter(global_max_concurrent=100, clock=Clock())
    ctx = tenant(max_concurrent=1, tpm=600)
    adm = lim.enter(ctx)
    adm.reserve(prompt_tokens=600, max_output_tokens=0)
    adm.finish(actual_tokens=600)
    adm = lim.enter(ctx)
    with pytest.raises(GatewayError) as info:
        adm.reserve(prompt_tokens=10, max_output_tokens=0)
    assert info.value.code == "limit_tpm"
    assert info.value.retry_after == pytest.approx(1.0)  # 10 tokens at 10/s
    assert lim.inflight(ctx.tenant_id) == 1
    adm.finish(actual_tokens=0)
    assert lim.inflight(ctx.tenant_id) == 0
    assert lim.available(ctx)[1] == pytest.approx(0.0)


# -- integer arithmetic --------------------------------------------------------------------------


def test_a_huge_reservation_is_refunded_exactly() -> None:
    # n ≈ 2**63 once multiplied the reservation; the float refund then left the bucket at
    # −524,288 tokens after a request that used 18. Integer levels give back every token.
    lim = Limiter(global_max_concurrent=10, clock=Clock())
    ctx = tenant(tpm=1_000_000)
    adm = lim.admit(ctx, prompt_tokens=10, max_output_tokens=512 * 2**63)
    adm.finish(actual_tokens=18)
    assert lim.available(ctx)[1] == 1_000_000 - 18


def test_many_small_refills_add_up_exactly() -> None:
    # 7 tokens per minute, looked at every second for 30 s: exactly 3.5 tokens come back
    # (a float bucket adds 7/60 thirty times and ends at 3.5000000000000004).
    clock = Clock(0.0)
    lim = Limiter(global_max_concurrent=10, clock=clock)
    ctx = tenant(tpm=7)
    lim.admit(ctx, prompt_tokens=7, max_output_tokens=0).finish(actual_tokens=7)
    for second in range(1, 31):
        clock.t = float(second)
        lim.available(ctx)
    assert lim.available(ctx)[1] == 3.5


# -- limit changes apply to the next request ---------------------------------------------------


def test_raised_rpm_applies_to_the_next_request() -> None:
    lim = Limiter(global_max_concurrent=1000, clock=Clock())
    ctx = tenant(rpm=5)
    for _ in range(5):
        lim.admit(ctx, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)
    refused(lim, ctx)
    raised = with_limits(ctx, rpm=8)  # 3 more this minute: what was used stays used
    for _ in range(3):
        lim.admit(raised, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)
    err = refused(lim, raised)
    assert err.retry_after == pytest.approx(60.0 / 8)


def test_lowered_tpm_clips_the_bucket_to_the_new_capacity() -> None:
    lim = Limiter(global_max_concurrent=1000, clock=Clock())
    ctx = tenant(tpm=100_000)
    lim.admit(ctx, prompt_tokens=10, max_output_tokens=0).finish(actual_tokens=10)
    lowered = with_limits(ctx, tpm=600)
    assert lim.available(lowered)[1] == pytest.approx(600.0)
    lim.admit(lowered, prompt_tokens=500, max_output_tokens=0)
    err = refused(lim, lowered, prompt=200)
    assert err.retry_after == pytest.approx(10.0)  # 100 missing at 10/s


def test_changed_max_concurrent_applies_to_the_next_request() -> None:
    lim = Limiter(global_max_concurrent=1000, clock=Clock())
    ctx = tenant(max_concurrent=1)
    lim.admit(ctx, prompt_tokens=0, max_output_tokens=0)
    refused(lim, ctx)
    lim.admit(with_limits(ctx, max_concurrent=2), prompt_tokens=0, max_output_tokens=0)
    assert lim.inflight(ctx.tenant_id) == 2


def test_tenants_have_separate_buckets() -> None:
    lim = Limiter(global_max_concurrent=1000, clock=Clock())
    one, two = tenant("one", rpm=1), tenant("two", rpm=1)
    lim.admit(one, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)
    refused(lim, one)
    lim.admit(two, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)


def test_a_new_limiter_starts_with_full_buckets_and_nothing_in_flight() -> None:
    # "After a daemon restart buckets start full, concurrency at 0."
    clock = Clock()
    ctx = tenant(max_concurrent=1, rpm=3, tpm=900)
    first = Limiter(global_max_concurrent=10, clock=clock)
    for _ in range(3):
        first.admit(ctx, prompt_tokens=300, max_output_tokens=0).finish(actual_tokens=300)
    refused(first, ctx)
    second = Limiter(global_max_concurrent=10, clock=clock)
    assert second.inflight() == 0
    assert second.available(ctx) == (3.0, 900.0)
    second.admit(ctx, prompt_tokens=300, max_output_tokens=0)


def test_prune_forgets_idle_full_tenants_only() -> None:
    clock = Clock()
    lim = Limiter(global_max_concurrent=10, clock=clock)
    idle, busy = tenant("idle", rpm=60), tenant("busy", rpm=60)
    lim.admit(idle, prompt_tokens=0, max_output_tokens=0).finish(actual_tokens=0)
    held = lim.admit(busy, prompt_tokens=0, max_output_tokens=0)
    assert lim.prune() == 0  # idle's bucket is not full yet
    clock.t += 2
    assert lim.prune() == 1
    assert lim.inflight(busy.tenant_id) == 1
    held.finish(actual_tokens=0)
    assert lim.inflight() == 0


def test_global_max_concurrent_must_be_positive() -> None:
    with pytest.raises(ValueError, match="global_max_concurrent"):
        Limiter(global_max_concurrent=0)


def test_retry_after_for_concurrency_is_set_for_the_header() -> None:
    lim = Limiter(global_max_concurrent=1, clock=Clock())
    lim.admit(tenant(), prompt_tokens=0, max_output_tokens=0)
    err = refused(lim, tenant("other"))
    assert err.to_dict()["code"] == "limit_concurrent"
    assert err.to_dict()["type"] == "rate_limit_error"
