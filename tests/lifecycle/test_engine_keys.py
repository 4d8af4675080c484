"""Every engine gets its own API key: a real daemon, stand-ins that enforce the key the way
vLLM and SGLang do (vLLM: /v1 only; SGLang: every route but /health*, /ready*, /metrics*).

The key reaches the engine in the form the real one reads (vLLM: VLLM_API_KEY in its
environment; SGLang: ``--config FILE.yaml``), the daemon's probes send it (an SGLang
stand-in is only ready once /get_model_info answers, which needs the key), it survives a
daemon restart, and no command prints it. The engines bind ``engines.host`` when their
recipe names no host.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from daemon_helpers import Daemon, running_daemon

pytestmark = pytest.mark.integration

ENGINE_HOST = "127.0.0.2"  # engines.host of the module's daemon (a loopback address)


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    with running_daemon({"STUDIOCTL_ENGINES_HOST": ENGINE_HOST}, gateway=True) as d:
        yield d


@pytest.fixture
def d(shared: Daemon) -> Iterator[Daemon]:
    yield shared
    shared.evict_all()


def stored_key(d: Daemon, iid: str) -> str:
    key = d.engine_key(iid)
    assert key, f"{iid} has no stored key"
    return key


def get(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url, headers=headers, timeout=10).status_code


def everything_shown(d: Daemon, iid: str) -> str:
    """What the commands print about an instance: ps, status, logs, events, the log file."""
    out = [
        d.cli("ps", "--all", "--json").stdout,
        d.cli("status", "--json").stdout,
        d.cli("logs", iid, "-n", "1000").stdout,
        json.dumps(d.events(instance=iid)),
    ]
    out.extend(p.read_text(errors="replace") for p in (d.home / "log").rglob("*.log*"))
    return "\n".join(out)


def test_vllm_gets_its_key_in_the_environment(d: Daemon) -> None:
    d.recipe("kv")
    inst = d.launch("kv")
    key = stored_key(d, inst["id"])
    proc = psutil.Process(inst["pid"])
    assert proc.environ()["VLLM_API_KEY"] == key
    assert not any(key in a for a in proc.cmdline())  # `ps` on the host shows argv
    url = inst["url"]
    assert get(f"{url}/v1/models") == 401
    assert get(f"{url}/v1/models", "wrong") == 401
    assert get(f"{url}/v1/models", key) == 200
    assert get(f"{url}/health") == 200 and get(f"{url}/metrics") == 200  # as vLLM: unguarded
    shown = everything_shown(d, inst["id"])
    assert "VLLM_API_KEY='***'" in shown  # the launch line in the log says where it went
    assert key not in shown
    dry = d.cli_json("launch", "kv", "--dry-run", "--json")
    assert dry["env"]["VLLM_API_KEY"] == "***"


def test_sglang_gets_its_key_from_a_private_file(d: Daemon) -> None:
    d.recipe("ks", backend="sglang")
    inst = d.launch("ks")  # ready: its /get_model_info probe carried the key
    key = stored_key(d, inst["id"])
    cmdline = psutil.Process(inst["pid"]).cmdline()
    assert "--config" in cmdline and not any(key in a for a in cmdline)
    key_file = Path(cmdline[cmdline.index("--config") + 1])
    assert key_file.parent == d.home / "state" / "engine-keys"
    assert oct(key_file.parent.stat().st_mode & 0o777) == "0o700"
    assert not key_file.exists()  # read at start, removed once the engine is up
    url = inst["url"]
    assert get(f"{url}/get_model_info") == 401
    assert get(f"{url}/get_model_info", key) == 200
    assert httpx.post(f"{url}/tokenize", json={"prompt": "a b"}, timeout=10).status_code == 401
    assert get(f"{url}/health") == 200 and get(f"{url}/metrics") == 200
    # SGLang prints its server arguments, key included: the log is scrubbed of it.
    shown = everything_shown(d, inst["id"])
    assert "api_key='" + "*" * len(key) + "'" in shown
    assert key not in shown


def test_the_key_is_the_instances_own_and_survives_a_crash(d: Daemon) -> None:
    d.recipe("kc", restart="on-failure")
    d.recipe("kd")
    a = d.launch("kc")
    b = d.launch("kd")
    key = stored_key(d, a["id"])
    assert key != stored_key(d, b["id"])
    # One crash (not a crash mode, which would crash the restarted engine too, racing the
    # look at its environment below on a loaded machine).
    os.kill(a["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while d.instance(a["id"])["restarts"] < 1 or d.instance(a["id"])["state"] != "ready":
        assert time.monotonic() < deadline, d.instance(a["id"])
        time.sleep(0.2)
    again = d.instance(a["id"])
    assert again["pid"] != a["pid"]
    assert psutil.Process(again["pid"]).environ()["VLLM_API_KEY"] == key  # same instance, same key


def test_engines_bind_the_engines_host_setting_unless_the_recipe_names_one(d: Daemon) -> None:
    d.recipe("kh")
    d.recipe("kh-own", host="127.0.0.1")
    inst = d.launch("kh")
    assert inst["host"] == ENGINE_HOST and inst["url"].startswith(f"http://{ENGINE_HOST}:")
    cmdline = psutil.Process(inst["pid"]).cmdline()
    assert cmdline[cmdline.index("--host") + 1] == ENGINE_HOST
    assert get(f"{inst['url']}/health") == 200
    own = d.launch("kh-own")
    assert own["host"] == "127.0.0.1"
    assert d.cli_json("launch", "kh", "--dry-run", "--json")["host"] == ENGINE_HOST


def test_the_gateway_sends_the_engine_key(d: Daemon) -> None:
    """Needs the gateway's upstream client to send Upstream.api_key (gw-upstream)."""
    d.recipe("kg")
    d.launch("kg")
    tenant_key = d.cli_json("tenant", "create", "kacme", "--json")["key"]
    r = httpx.post(
        f"http://127.0.0.1:{d.gateway_port}/v1/completions",
        json={"model": "kg", "prompt": "a b", "max_tokens": 2},
        headers={"Authorization": f"Bearer {tenant_key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_an_adopted_engine_is_probed_with_its_stored_key() -> None:
    """The daemon dies while an SGLang engine loads; the next daemon adopts it and can only
    see it ready (/get_model_info needs the key) with the key it stored."""
    with running_daemon() as d:
        d.recipe("ka", backend="sglang", env={"STANDIN_STARTUP_S": "4"})
        inst = d.launch("ka", "--no-wait")
        key = stored_key(d, inst["id"])
        d.kill9()
        d.start()
        ready = d.wait_state(inst["id"], "ready", timeout=30)
        assert ready["pid"] == inst["pid"] and ready["adopted"] is True
        assert stored_key(d, inst["id"]) == key
        assert get(f"{ready['url']}/get_model_info", key) == 200
