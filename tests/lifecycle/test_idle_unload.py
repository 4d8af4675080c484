"""A recipe's ``idle_unload_s``: an instance without gateway requests for that long is
evicted (drained, its tree stopped); requests through the gateway keep it loaded."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from daemon_helpers import alive, running_daemon

pytestmark = pytest.mark.integration


def _chat(port: int, key: str, model: str) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        ).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        status: int = resp.status
        return status


def test_idle_instance_is_unloaded_and_requests_keep_it_loaded() -> None:
    with running_daemon(gateway=True) as d:
        d.recipe("idle", idle_unload_s=2.5)
        launched = d.cli_json("launch", "idle", "--no-wait", "--json")
        iid = launched["id"]
        ready = d.wait_state(iid, "ready", timeout=20)
        key = d.cli_json("tenant", "create", "busy", "--json")["key"]

        # Requests through the gateway every 0.5 s for 5 s: twice the idle limit, no unload.
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            assert _chat(d.gateway_port, key, "idle") == 200
            time.sleep(0.5)
        assert d.instance(iid)["state"] == "ready"

        # Then silence: unloaded within the limit plus a check or two.
        t0 = time.monotonic()
        stopped = d.wait_state(iid, "stopped", timeout=15)
        waited = time.monotonic() - t0
        assert 2.0 <= waited <= 10.0, waited
        assert "evicted" in stopped["reason"]
        kinds = [e["kind"] for e in d.events(instance=iid)]
        assert "idle_unload" in kinds and "evict" in kinds
        assert kinds.index("idle_unload") < kinds.index("evict")
        for p in ready["processes"] + stopped["processes"]:
            assert not alive(p["pid"], p["create_time"]), p
        # Not restarted: an idle unload is a stop, whatever the restart policy.
        time.sleep(1.5)
        assert d.instance(iid)["state"] == "stopped"


def test_without_idle_unload_s_an_idle_instance_stays() -> None:
    with running_daemon() as d:
        d.recipe("keep")
        iid = d.cli_json("launch", "keep", "--no-wait", "--json")["id"]
        d.wait_state(iid, "ready", timeout=20)
        time.sleep(4.0)
        assert d.instance(iid)["state"] == "ready"
