"""Telemetry in a real daemon on this GPU-less host: /telemetry, `top --once`, the gateway's
/metrics parsed back, `ps` VRAM, `stats`, and the lifetime figures surviving a restart."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon_helpers import Daemon, running_daemon

pytestmark = pytest.mark.integration

ENV = {"STUDIOCTL_GATEWAY_METRICS_PUBLIC": "true"}


def gateway_post(d: Daemon, key: str, model: str, words: int, max_tokens: int) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{d.gateway_port}/v1/completions",
        json={"model": model, "prompt": " ".join(["w"] * words), "max_tokens": max_tokens},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def poll(fn: Any, show: Any, timeout: float = 15.0) -> Any:
    """Call ``fn`` until it returns something true; ``show()`` says what was seen last."""
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout}s; last: {show()}")
        time.sleep(0.2)


def stats_of(d: Daemon, recipe: str) -> dict[str, Any]:
    out: dict[str, Any] = d.cli_json("stats", recipe, "--json")["recipes"][0]
    return out


def test_telemetry_top_metrics_and_stats_in_a_real_daemon() -> None:
    with running_daemon(ENV, gateway=True) as d:
        d.recipe("tiny", env={"STANDIN_TOKEN_DELAY_S": "0.05"})
        launched = d.cli("launch", "tiny", "--json")
        assert launched.returncode == 0, launched.stderr
        d.track(json.loads(launched.stdout.splitlines()[-1]))

        time.sleep(1.5)  # the gateway's tenant names are read once before acme exists
        key = d.cli_json("tenant", "create", "acme", "--profile", "pro", "--json")["key"]
        for _ in range(4):
            r = gateway_post(d, key, "tiny", words=4, max_tokens=8)
            assert r.status_code == 200, r.text
        assert gateway_post(d, key, "nope", 1, 1).status_code == 404  # a rejection by reason

        # Three slow requests in flight: the gateway's per-tenant figures while they run.
        slow = [
            threading.Thread(target=gateway_post, args=(d, key, "tiny", 2, 120)) for _ in range(3)
        ]
        for t in slow:
            t.start()
        try:
            seen: list[Any] = [None]

            def three_in_flight() -> Any:
                seen[0] = d.cli_json("top", "--once", "--json")
                return seen[0] if seen[0]["gateway"]["inflight"] == 3 else None

            snap = poll(three_in_flight, lambda: seen[0])
        finally:
            for t in slow:
                t.join(30)
        gw = snap["gateway"]
        assert gw["tenants_inflight"] == {"acme": 3}
        assert gw["rejections"].get("model_not_found") == 1
        assert gw["requests_total"] >= 5
        assert snap["gpu"]["available"] is False and snap["gpus"] == []
        (inst,) = snap["instances"]
        assert inst["id"] == "tiny-1" and inst["state"] == "ready"
        assert inst["vram_bytes"] is None

        # Every token the engine counted reaches the recipe's lifetime figures.
        last: list[Any] = [None]

        def all_tokens_counted() -> Any:
            last[0] = stats_of(d, "tiny")
            return last[0] if last[0]["generation_tokens"] == 4 * 8 + 3 * 120 else None

        figures = poll(all_tokens_counted, lambda: last[0])
        assert figures["prompt_tokens"] == 4 * 4 + 3 * 2
        assert figures["requests"] == 7
        assert figures["peaks"]["generation_tps"]["value"] > 0
        assert figures["peaks"]["generation_tps"]["instance"] == "tiny-1"
        assert figures["energy_j"] == 0.0 and figures["kwh_per_mtok_prompt"] == 0.0

        text = d.cli("top", "--once")
        assert text.returncode == 0, text.stderr
        assert "No NVIDIA GPU" in text.stdout
        row = next(line for line in text.stdout.splitlines() if line.startswith("tiny-1"))
        assert row.split()[:4] == ["tiny-1", "tiny", "ready", "-"]

        ps = d.cli("ps")
        assert ps.returncode == 0
        head, row = ps.stdout.splitlines()[:2]
        assert head.split()[-1] == "VRAM" and row.split()[-1] == "-"

        body = httpx.get(f"http://127.0.0.1:{d.gateway_port}/metrics", timeout=10).text
        series: dict[str, list[tuple[dict[str, str], float]]] = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                series.setdefault(s.name, []).append((dict(s.labels), s.value))
        assert series["studioctl_gpu_available"] == [({}, 0.0)]
        assert [n for n in series if n.startswith("studioctl_gpu_")] == ["studioctl_gpu_available"]
        ready = [
            v
            for lb, v in series["studioctl_instance_state"]
            if lb["instance"] == "tiny-1" and lb["state"] == "ready"
        ]
        assert ready == [1.0]
        assert any(
            lb["instance"] == "tiny-1" for lb, _ in series["studioctl_instance_requests_running"]
        )
        assert "studioctl_gateway_requests_total" in series  # the gateway's own families too

        # Evict: nothing to wait for without GPUs, and the report says nothing about VRAM.
        rep = d.cli_json("evict", "tiny", "--json")
        assert rep["state"] == "stopped" and "vram_released" not in rep
        before = stats_of(d, "tiny")

        # Lifetime figures and peaks survive the daemon: read from the database while it is
        # down, and from the restarted daemon.
        d.stop()
        offline = stats_of(d, "tiny")
        d.start()
        restarted = stats_of(d, "tiny")
        restarted_all = d.cli("stats")
    for got in (offline, restarted):
        for key in ("prompt_tokens", "generation_tokens", "requests", "energy_j", "peaks"):
            assert got[key] == before[key], key
        assert got["uptime_s"] == pytest.approx(before["uptime_s"], abs=1e-6)
    assert restarted_all.returncode == 0 and "tiny" in restarted_all.stdout
    assert json.dumps(restarted["peaks"]["concurrent"]) != "null"


def test_stats_without_daemon_or_database() -> None:
    with running_daemon(start=False) as d:
        out = d.cli("stats")
        assert out.returncode == 0 and "no statistics yet" in out.stdout
        missing = d.cli("stats", "nothing-here")
        assert missing.returncode == 3
        assert "no statistics for recipe 'nothing-here'" in missing.stderr
        assert d.cli_json("stats", "--json") == {"recipes": []}
