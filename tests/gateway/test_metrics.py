"""GatewayMetrics: the exposition parses with prometheus_client's parser and says the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from studioctl.gateway.metrics import (
    LATENCY_BUCKETS,
    MAX_LABEL_LEN,
    OTHER_MODEL,
    GatewayMetrics,
)

P = "studioctl_gateway_"


def parse(text: str) -> dict[str, Any]:
    """family name → family, asserting the whole text parses."""
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


def samples(fams: dict[str, Any], family: str, sample: str | None = None) -> dict[Any, float]:
    """{frozenset(labels.items()): value} of one sample name in a family."""
    name = sample or family
    return {frozenset(s.labels.items()): s.value for s in fams[family].samples if s.name == name}


def lab(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_empty_registry_renders_all_families_and_parses() -> None:
    fams = parse(GatewayMetrics().render())
    assert fams[P + "requests"].type == "counter"
    assert fams[P + "rejections"].type == "counter"
    assert fams[P + "inflight_requests"].type == "gauge"
    assert fams[P + "request_duration_seconds"].type == "histogram"
    assert fams[P + "time_to_first_token_seconds"].type == "histogram"
    assert fams[P + "upstream_latency_seconds"].type == "histogram"
    assert samples(fams, P + "inflight_requests") == {lab(): 0}


def test_requests_and_tokens_by_model_status_and_tenant() -> None:
    m = GatewayMetrics()
    m.request("tiny", "acme", 200, 0.02, 0.004, 12, 30, True)
    m.request("tiny", "acme", 200, 0.03, None, 8, 5, False)
    m.request("tiny", "beta", 429, 0.0005, None, 0, 0, False)
    m.request("big", "acme", 502, 0.2, None, 100, 0, False)
    fams = parse(m.render())
    req = samples(fams, P + "requests", P + "requests_total")
    assert req == {
        lab(model="tiny", status="200", tenant="acme"): 2,
        lab(model="tiny", status="429", tenant="beta"): 1,
        lab(model="big", status="502", tenant="acme"): 1,
    }
    prompt = samples(fams, P + "prompt_tokens", P + "prompt_tokens_total")
    assert prompt == {lab(model="tiny", tenant="acme"): 20, lab(model="big", tenant="acme"): 100}
    completion = samples(fams, P + "completion_tokens", P + "completion_tokens_total")
    assert completion == {lab(model="tiny", tenant="acme"): 35}
    streamed = samples(fams, P + "streamed_requests", P + "streamed_requests_total")
    assert streamed == {lab(model="tiny", tenant="acme"): 1}


def test_tenant_labels_off_bounds_cardinality() -> None:
    m = GatewayMetrics(tenant_labels=False)
    for tenant in ("a", "b", "c", None):
        m.request("tiny", tenant, 200, 0.01, 0.001, 1, 1, False)
        m.rejection("limit_rpm", tenant)
    fams = parse(m.render())
    assert samples(fams, P + "requests", P + "requests_total") == {
        lab(model="tiny", status="200"): 4
    }
    assert samples(fams, P + "rejections", P + "rejections_total") == {lab(reason="limit_rpm"): 4}
    assert "tenant=" not in m.render()


def test_rejections_by_reason() -> None:
    m = GatewayMetrics()
    m.rejection("limit_rpm", "acme")
    m.rejection("limit_rpm", "acme")
    m.rejection("limit_tpm", "acme")
    m.rejection("invalid_api_key", None)
    fams = parse(m.render())
    assert samples(fams, P + "rejections", P + "rejections_total") == {
        lab(reason="limit_rpm", tenant="acme"): 2,
        lab(reason="limit_tpm", tenant="acme"): 1,
        lab(reason="invalid_api_key", tenant=""): 1,
    }


def test_latency_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    m = GatewayMetrics()
    values = [0.0005, 0.001, 0.004, 0.3, 2.0, 1000.0]  # 0.001 sits exactly on a bound
    for v in values:
        m.request("tiny", "acme", 200, v, None, 0, 0, False)
    fams = parse(m.render())
    name = P + "request_duration_seconds"
    buckets = {
        float(s.labels["le"]): s.value
        for s in fams[name].samples
        if s.name == name + "_bucket" and s.labels["model"] == "tiny"
    }
    assert list(buckets) == [*LATENCY_BUCKETS, float("inf")]
    for bound, count in buckets.items():
        assert count == sum(1 for v in values if v <= bound), bound
    assert samples(fams, name, name + "_count") == {lab(model="tiny"): 6}
    assert samples(fams, name, name + "_sum")[lab(model="tiny")] == pytest.approx(sum(values))
    # No TTFT given: the TTFT histogram has no series for the model.
    assert (
        samples(fams, P + "time_to_first_token_seconds", P + "time_to_first_token_seconds_count")
        == {}
    )


def test_ttft_and_upstream_latency_histograms() -> None:
    m = GatewayMetrics()
    m.request("tiny", "acme", 200, 0.5, 0.02, 5, 5, True)
    m.request("tiny", "acme", 200, 0.5, 0.2, 5, 5, True)
    m.upstream_latency(0.003)
    m.upstream_latency(0.007)
    m.upstream_latency(0.3)
    fams = parse(m.render())
    ttft = P + "time_to_first_token_seconds"
    assert samples(fams, ttft, ttft + "_count") == {lab(model="tiny"): 2}
    le = {s.labels["le"]: s.value for s in fams[ttft].samples if s.name == ttft + "_bucket"}
    assert le["0.025"] == 1 and le["0.25"] == 2 and le["0.01"] == 0
    up = P + "upstream_latency_seconds"
    ule = {s.labels["le"]: s.value for s in fams[up].samples if s.name == up + "_bucket"}
    assert ule["0.005"] == 1 and ule["0.01"] == 2 and ule["0.25"] == 2 and ule["+Inf"] == 3
    assert samples(fams, up, up + "_sum") == {lab(): pytest.approx(0.31)}


def test_inflight_gauge_manual_and_from_a_source() -> None:
    m = GatewayMetrics()
    m.inflight_inc()
    m.inflight_inc()
    m.inflight_dec()
    assert samples(parse(m.render()), P + "inflight_requests") == {lab(): 1}
    live = [7]
    m2 = GatewayMetrics(inflight_source=lambda: live[0])
    assert samples(parse(m2.render()), P + "inflight_requests") == {lab(): 7}
    live[0] = 0
    assert samples(parse(m2.render()), P + "inflight_requests") == {lab(): 0}


def test_label_values_are_escaped() -> None:
    m = GatewayMetrics()
    weird = 'org/model "v2"\\beta\nnext'
    m.request(weird, 'ten"ant', 200, 0.01, 0.01, 1, 1, False)
    fams = parse(m.render())
    req = samples(fams, P + "requests", P + "requests_total")
    assert req == {lab(model=weird, status="200", tenant='ten"ant'): 1}


def test_model_names_beyond_the_cap_fold_into_other() -> None:
    m = GatewayMetrics(max_models=3)
    for i in range(10):
        m.request(f"m{i}", "acme", 404, 0.001, None, 0, 0, False)
    m.request("m1", "acme", 404, 0.001, None, 0, 0, False)  # a known one stays itself
    req = samples(parse(m.render()), P + "requests", P + "requests_total")
    assert req == {
        lab(model="m0", status="404", tenant="acme"): 1,
        lab(model="m1", status="404", tenant="acme"): 2,
        lab(model="m2", status="404", tenant="acme"): 1,
        lab(model=OTHER_MODEL, status="404", tenant="acme"): 7,
    }


def test_extra_lines_are_appended_and_parse() -> None:
    m = GatewayMetrics()
    extra = (
        "# HELP studioctl_instance_state Instance state (1 = current).\n"
        "# TYPE studioctl_instance_state gauge\n"
        'studioctl_instance_state{instance="tiny-1",state="ready"} 1'
    )
    text = m.render(extra)
    assert text.endswith("\n")
    fams = parse(text)
    assert samples(fams, "studioctl_instance_state") == {lab(instance="tiny-1", state="ready"): 1}
    assert P + "requests" in fams


# -- client-controlled label text is bounded -------------------------------------------------


def label_values(text: str) -> list[str]:
    return [v for fam in parse(text).values() for s in fam.samples for v in s.labels.values()]


def test_huge_model_names_never_become_labels() -> None:
    m = GatewayMetrics()
    for i in range(10):  # ten 256 KB invented names, each refused
        m.request(f"{i}" + "x" * 256 * 1024, "acme", 404, 0.001, None, 0, 0, False)
    m.rejection("model_not_found", "acme")
    text = m.render()
    assert len(text) < 20_000  # one series per family, not 10 x 256 KB of label
    assert max(len(v) for v in label_values(text)) <= MAX_LABEL_LEN
    req = samples(parse(text), P + "requests", P + "requests_total")
    assert req == {lab(model=OTHER_MODEL, status="404", tenant="acme"): 10}


def test_a_name_at_the_limit_is_kept_as_it_is() -> None:
    m = GatewayMetrics()
    name = "org/" + "m" * (MAX_LABEL_LEN - 4)
    m.request(name, "acme", 200, 0.01, None, 1, 1, False)
    req = samples(parse(m.render()), P + "requests", P + "requests_total")
    assert req == {lab(model=name, status="200", tenant="acme"): 1}


def test_other_long_label_values_are_cut_and_stay_distinct() -> None:
    m = GatewayMetrics()
    long_a, long_b = "t" * 5000 + "a", "t" * 5000 + "b"
    for tenant in (long_a, long_b):
        m.request("tiny", tenant, 200, 0.01, None, 1, 1, False)
        m.rejection("r" * 1000 + tenant[-1], tenant)
    text = m.render()
    assert max(len(v) for v in label_values(text)) <= MAX_LABEL_LEN
    req = samples(parse(text), P + "requests", P + "requests_total")
    assert len(req) == 2 and set(req.values()) == {1}  # two series still, as prometheus needs
    assert len(m.summary()["rejections"]) == 2


# -- the snapshot `top` reads comes from the counters ------------------------------------------


def feed(m: GatewayMetrics, models: int, tenants: int) -> None:
    for i in range(models):
        for t in range(tenants):
            m.request(f"m{i}", f"t{t}", 200 if i % 3 else 429, 0.01, 0.005, 3, 2, bool(i % 2))
    for reason, tenant in (("rate_limited", "t0"), ("rate_limited", "t1"), ("auth", None)):
        m.rejection(reason, tenant)


@pytest.mark.parametrize("tenant_labels", [True, False])
def test_summary_matches_the_rendered_counters(tenant_labels: bool) -> None:
    m = GatewayMetrics(tenant_labels=tenant_labels, max_models=10)
    feed(m, models=30, tenants=4)
    fams = parse(m.render())
    requests = sum(s.value for s in fams[P + "requests"].samples)
    rejections: dict[str, float] = {}
    for s in fams[P + "rejections"].samples:
        rejections[s.labels["reason"]] = rejections.get(s.labels["reason"], 0) + s.value
    assert m.summary() == {"requests_total": requests, "rejections": rejections}
    assert m.summary() == {"requests_total": 120, "rejections": {"rate_limited": 2, "auth": 1}}


class _NoRender(GatewayMetrics):
    """Counts like GatewayMetrics; rendering it fails the test."""

    __slots__ = ()

    def render(self, extra_lines: str = "") -> str:
        raise AssertionError("the snapshot rendered the metrics text")


def test_the_gateway_snapshot_never_renders_the_metrics_text(tmp_path: Path) -> None:
    from studioctl.gateway.core import GatewayCore
    from studioctl.gateway.limits import Limiter
    from studioctl.gateway.routing import RouteTable
    from studioctl.store.migrations import migrate
    from studioctl.store.sqlite import SqliteDatabase as Database
    from studioctl.store.usage import UsageRepo, UsageWriter
    from studioctl.tenants import TenantService

    db = Database(tmp_path / "state.db")
    migrate(db)
    writer = UsageWriter(UsageRepo(db))
    try:
        limiter = Limiter(global_max_concurrent=8)
        metrics = _NoRender(inflight_source=limiter.inflight, max_models=300)
        feed(metrics, models=300, tenants=20)  # 6,000 series: rendering them each second hurt
        gw = GatewayCore(
            routes=RouteTable(),
            auth=cast(Any, None),  # not used by snapshot()
            limiter=limiter,
            metrics=metrics,
            usage=writer,
            pool=cast(Any, None),
            tokenizer=cast(Any, None),
            tenants=TenantService(db),
        )
        snap = gw.snapshot()
    finally:
        writer.close()
        db.close()
    assert snap["requests_total"] == 6000
    assert snap["rejections"] == {"rate_limited": 2, "auth": 1}
    assert (snap["inflight"], snap["max_concurrent"], snap["tenants_inflight"]) == (0, 8, {})


@pytest.mark.integration
def test_huge_invented_model_names_through_the_gateway_keep_metrics_small(
    make_gateway: Any,
) -> None:
    import httpx

    gw = make_gateway(metrics_public=True)
    messages = [{"role": "user", "content": "hi"}]
    for i in range(10):
        body = {"model": f"{i}" + "y" * 256 * 1024, "messages": messages}
        r = httpx.post(gw.base_url + "/chat/completions", json=body, headers=gw.headers())
        assert r.status_code in (400, 404)  # refused (unknown, or a name too long to be one)
    r = httpx.get(gw.url + "/metrics")
    assert r.status_code == 200
    assert len(r.content) < 50_000
    assert max(len(v) for v in label_values(r.text)) <= MAX_LABEL_LEN
    assert gw.lt.call(gw.metrics.summary)["requests_total"] == 10
