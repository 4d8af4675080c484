"""End to end on the real vLLM (CPU build, tiny model), issue 11: ``idle_unload_s`` unloads
the engine, and the next chat request through the gateway (the official ``openai`` client)
loads it again and is answered.

The recipe is the repository's ``tiny-cpu`` with ``idle_unload_s`` of a few seconds, under
its own id and served name (``tiny-idle``), written into the daemon's recipe folder before
the daemon starts, so that it is a known model from the first request on. Two vLLM starts
(~45 s each on two cores).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tests.e2e.helpers import (
    RECIPES,
    E2EDaemon,
    engine_env,
    record_timing,
    require,
)

from daemon_helpers import daemon_env, end, new_home
from gateway_daemon.helpers import usage_rows
from helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ENV = engine_env("vllm")
RECIPE = MODEL = "tiny-idle"
IDLE_UNLOAD_S = 5
LAUNCH_TIMEOUT = 360.0  # readiness_timeout_s of the recipe is 300
EXTRA = {"ignore_eos": True}  # exactly max_tokens tokens from the random weights


def write_recipe(folder: Any) -> None:
    """``tiny-cpu`` (its variables unexpanded: the daemon expands them) with a short
    ``idle_unload_s``, loaded on demand."""
    body = yaml.safe_load((RECIPES / "tiny-cpu.yaml").read_text())
    body.update(
        {
            "name": "tiny Llama on vLLM (CPU), unloaded when idle",
            "served_model_name": MODEL,
            "idle_unload_s": IDLE_UNLOAD_S,
            "on_demand": True,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{RECIPE}.yaml").write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def daemon() -> Iterator[E2EDaemon]:
    """A daemon as ``e2e_daemon`` runs it, with the recipe written before it starts."""
    require(ENV)
    home = new_home("sc-e2e-")
    settings = {
        "STUDIOCTL_RECIPES_DIRS": str(RECIPES),
        "STUDIOCTL_DAEMON_HEALTH_INTERVAL_S": "0.5",
        "STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true",
        **ENV.env,
    }
    d = E2EDaemon(home=home, env=daemon_env(home, settings, engine_ports=50))
    write_recipe(d.recipes_dir)
    leaked: list[str] = []
    try:
        d.start()
        yield d
    finally:
        leaked = end(d)
    assert not leaked, f"processes left behind after the daemon stopped: {leaked}"


def events_of(d: E2EDaemon, kind: str) -> list[dict[str, Any]]:
    return [e for e in d.events(2000) if e["kind"] == kind and e.get("recipe_id") == RECIPE]


def test_a_model_unloaded_when_idle_is_loaded_again_by_the_next_chat_request(
    daemon: E2EDaemon,
) -> None:
    import openai

    d = daemon
    out = json.loads(d.cli_ok("tenant", "create", "e2e-demand", "--json"))
    tenant_id, key = out["tenant"]["id"], out["key"]

    # 1. Launched, then unloaded for idleness: the instance stops, with its event.
    t0 = time.monotonic()
    first = d.launch(RECIPE, timeout=LAUNCH_TIMEOUT)
    record_timing("on-demand e2e: launch tiny-idle", time.monotonic() - t0)
    t0 = time.monotonic()
    d.wait_state(first["id"], "stopped", timeout=IDLE_UNLOAD_S + 90, bad={"failed"})
    record_timing("on-demand e2e: ready → unloaded when idle", time.monotonic() - t0)
    [unloaded] = [e for e in d.events(2000) if e["kind"] == "idle_unload"]
    assert unloaded["instance_id"] == first["id"], unloaded
    assert d.live(RECIPE) is None
    assert events_of(d, "load_requested") == []  # launched by hand, not on demand

    # 2. The next chat request loads it again (it waits in the model's queue) and is answered.
    gateway = f"http://127.0.0.1:{d.gateway_port}/v1"
    t0 = time.monotonic()
    with openai.OpenAI(
        base_url=gateway, api_key=key, max_retries=0, timeout=LAUNCH_TIMEOUT + 60
    ) as client:
        chat = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me about lighthouses."}],
            max_tokens=8,
            temperature=0,
            extra_body=EXTRA,
        )
    waited = time.monotonic() - t0
    record_timing("on-demand e2e: chat that loads tiny-idle again", waited)
    assert chat.model == MODEL
    assert chat.choices[0].message.content, chat
    assert chat.choices[0].finish_reason == "length", chat
    assert chat.usage is not None and chat.usage.completion_tokens == 8, chat.usage
    assert chat.usage.prompt_tokens > 0

    # 3. It was that request that loaded it: one load_requested, a new instance placed.
    [requested] = events_of(d, "load_requested")
    assert requested["data"]["reason"], requested
    [placed] = events_of(d, "placed")
    again = placed["instance_id"]
    assert again and again != first["id"], placed
    assert requested["ts"] <= placed["ts"]
    assert unloaded["ts"] < requested["ts"]

    # 4. Counted: one usage row, answered by the new instance, with the load as queue time.
    def row() -> Any:
        rows = usage_rows(d, tenant=tenant_id)
        return rows[0] if rows else None

    r = wait_for(row, timeout=15, what="the chat's usage row")
    assert (r.model, r.status, r.error_code, r.instance_id) == (MODEL, 200, None, again), r
    assert (r.prompt_tokens, r.completion_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )
    assert 1000.0 < r.queue_ms < waited * 1000.0, r  # it waited for the engine to load
