"""The shipped Grafana dashboard: valid JSON, and every series it queries is one studioctl
exports (gateway, route table and telemetry families, rendered for real and parsed back)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fakes import fake_pynvml
from fakes.fake_pynvml import GIB
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.gpu import Nvml
from studioctl.telemetry import GpuReader, Telemetry

from .conftest import Clock, FakeInstance, FakeRecipe, FakeSup
from .test_telemetry import vllm_text

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "studioctl-dashboard.json"


def exported_series(children: list[int]) -> set[str]:
    """Every sample name of a daemon's /metrics with GPUs, an instance, gateway traffic."""
    clock = Clock()
    fake = fake_pynvml.two_gpus(procs0=[(children[0], 10 * GIB)], procs1=[])
    sup = FakeSup()
    inst = sup.add(FakeInstance("a-1", FakeRecipe("a"), tree={children[0]: 0.0}))
    tel = Telemetry(sup, gpus=GpuReader(Nvml(module=fake, clock=clock)), clock=clock)
    asyncio.run(tel.sample_gpus())
    tel.observe_metrics(inst, vllm_text(prompt=1, gen=1, ttft_sum=0.1, ttft_count=1), source="x")  # type: ignore[arg-type]
    clock.advance(1)
    tel.observe_metrics(inst, vllm_text(prompt=2, gen=3, ttft_sum=0.3, ttft_count=2), source="x")  # type: ignore[arg-type]
    gm = GatewayMetrics()
    gm.request("m", "acme", 200, 0.5, 0.1, 10, 20, True)
    gm.rejection("limit_rpm", "acme")
    gm.upstream_latency(0.01)
    routes = RouteTable()
    routes.update([Upstream("a-1", "a", "127.0.0.1", 1, "ready", ("m",))], {"m": "a"})
    body = gm.render(routes.metrics_lines() + tel.prometheus_lines())
    return {s.name for fam in text_string_to_metric_families(body) for s in fam.samples}


def test_dashboard_is_valid_and_queries_only_exported_series(children: list[int]) -> None:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dash["title"] == "studioctl" and dash["uid"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert exprs and all(
        t["datasource"]["uid"] == "${datasource}" for p in panels for t in p["targets"]
    )
    used = {m for e in exprs for m in re.findall(r"\bstudioctl_[a-z_]+", e)}
    exported = exported_series(children)
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries series nobody exports: {missing}"
    # The headline figures are all there.
    for name in (
        "studioctl_gpu_utilization_ratio",
        "studioctl_gpu_memory_used_bytes",
        "studioctl_gpu_power_watts",
        "studioctl_gpu_temperature_celsius",
        "studioctl_energy_joules_total",
        "studioctl_instance_state",
        "studioctl_instance_generation_tokens_per_second",
        "studioctl_instance_kv_cache_usage_ratio",
        "studioctl_instance_vram_bytes",
        "studioctl_gateway_requests_total",
        "studioctl_gateway_rejections_total",
    ):
        assert name in used, name
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "gpu", "instance"}
