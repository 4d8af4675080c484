"""Routing through the daemon: the gateway's table follows the supervisor — /v1/models, ready /
loading / stopped / unknown models, evict (and the drain that waits for a gateway stream)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    chat,
    create_tenant,
    evict,
    gateway_daemon,
    launch,
    openai_client,
    request,
    retry_after,
    scrape,
)
from helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RECIPES: dict[str, dict[str, Any]] = {
    "alpha": {"aliases": ["alpha-alias", "alpha-2"]},
    "beta": {},
    "gamma": {"served_model_name": "gamma-served"},
    "delta": {},
    "slow": {"env": {"STANDIN_STARTUP_S": "60"}},
    # 0.25 s per token: a 24-token stream stays in flight for ~6 s.
    "drainy": {"env": {"STANDIN_TOKEN_DELAY_S": "0.25"}},
}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon(RECIPES, admin_token=ADMIN_TOKEN) as d:
        launch(d, "alpha")
        yield d


@pytest.fixture(scope="module")
def key(daemon: Daemon) -> str:
    return create_tenant(daemon, "router", "--rpm", "10000", "--max-concurrent", "8")[1]


def models(d: Daemon, key: str) -> dict[str, dict[str, Any]]:
    resp = request(d, "GET", "/v1/models", key=key)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    return {m["id"]: m for m in body["data"]}


def test_models_lists_ready_names_and_aliases_not_stopped_manual_recipes(
    daemon: Daemon, key: str
) -> None:
    listed = models(daemon, key)
    for name in ("alpha", "alpha-alias", "alpha-2"):
        m = listed[name]
        assert m["studioctl"] == {"state": "ready", "recipe": "alpha", "instance": "alpha-1"}, m
        assert m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]
    # Loading on demand is off here (gateway.load_on_demand false): a recipe that is not
    # running is refused model_not_running, so it is not offered.
    for name in ("beta", "gamma-served", "delta", "gamma"):
        assert name not in listed
    # The official client sees the same list.
    with openai_client(daemon, key) as client:
        assert {m.id for m in client.models.list()} == set(listed)


def test_an_alias_routes_to_the_instance(daemon: Daemon, key: str) -> None:
    with openai_client(daemon, key) as client:
        out = client.chat.completions.create(
            model="alpha-alias", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert out.choices[0].message.content == "tok0 tok1"
    assert out.usage is not None and out.usage.completion_tokens == 2


@pytest.mark.parametrize(("model", "recipe"), [("beta", "beta"), ("gamma-served", "gamma")])
def test_known_recipe_not_running_is_503_with_the_launch_hint(
    daemon: Daemon, key: str, model: str, recipe: str
) -> None:
    err = assert_error(chat(daemon, key, model), 503, "model_not_running", "server_error")
    assert err["hint"] == f"studioctl launch {recipe}", err
    assert model in err["message"], err
    with openai_client(daemon, key) as client, pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model=model, prompt="hello", max_tokens=2)
    assert info.value.status_code == 503
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_running"


def test_unknown_model_is_404_model_not_found(daemon: Daemon, key: str) -> None:
    resp = chat(daemon, key, "no-such-model")
    err = assert_error(resp, 404, "model_not_found", "not_found_error")
    assert err["param"] == "model" and "no-such-model" in err["message"], err
    with openai_client(daemon, key) as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )


def test_a_request_for_a_loading_instance_waits_until_an_evict_ends_it(
    daemon: Daemon, key: str
) -> None:
    # A loading model's requests wait in its queue (gateway/queue.py) instead of getting
    # 503 model_loading at once; evicting the instance ends the wait with the route table's
    # answer (draining: model_loading, or stopped: model_not_running).
    out = launch(daemon, "slow", "--no-wait")
    iid = out["id"]
    answers: list[Any] = []
    waiter = threading.Thread(target=lambda: answers.append(chat(daemon, key, "slow")))
    try:
        daemon.wait_state(iid, "starting", "loading")
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not answers  # queued, not refused
        assert models(daemon, key)["slow"]["studioctl"]["state"] in ("starting", "loading")
    finally:
        evict(daemon, iid, "--force", "--grace", "2")
        if waiter.ident is not None:
            waiter.join(30)
    if answers:
        assert answers[0].status_code == 503
        assert answers[0].json()["error"]["code"] in ("model_loading", "model_not_running")
    assert_error(chat(daemon, key, "slow"), 503, "model_not_running")


def test_after_evict_requests_get_model_not_running(daemon: Daemon, key: str) -> None:
    iid = launch(daemon, "delta")["id"]
    assert chat(daemon, key, "delta").status_code == 200
    assert models(daemon, key)["delta"]["studioctl"]["state"] == "ready"
    rep = evict(daemon, "delta")
    assert rep["state"] == "stopped", rep
    err = assert_error(chat(daemon, key, "delta"), 503, "model_not_running")
    assert err["hint"] == "studioctl launch delta"
    assert "delta" not in models(daemon, key)  # not loaded on demand here
    # Launched again, it serves again.
    launch(daemon, "delta")
    assert chat(daemon, key, "delta").status_code == 200
    evict(daemon, "delta")
    assert iid  # the first instance id was reported


def test_a_recipe_added_after_start_is_not_running_after_evict(daemon: Daemon, key: str) -> None:
    """The recipe scan runs at start-up (and every minute); a recipe launched since then
    must still answer 503 with a hint once evicted, not 404."""
    daemon.recipe("late")
    launch(daemon, "late")
    assert chat(daemon, key, "late").status_code == 200
    evict(daemon, "late")
    err = assert_error(chat(daemon, key, "late"), 503, "model_not_running")
    assert err["hint"] == "studioctl launch late"
    assert "late" not in models(daemon, key)


def test_evict_drains_a_streaming_request_in_flight_through_the_gateway(
    daemon: Daemon, key: str
) -> None:
    iid = launch(daemon, "drainy")["id"]
    chunks: list[str] = []
    finish: list[str | None] = []
    first = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with openai_client(daemon, key) as client:
                for chunk in client.chat.completions.create(
                    model="drainy",
                    messages=[{"role": "user", "content": "stream please"}],
                    max_tokens=24,
                    stream=True,
                ):
                    if chunk.choices:
                        if chunk.choices[0].delta.content:
                            chunks.append(chunk.choices[0].delta.content)
                            first.set()
                        if chunk.choices[0].finish_reason:
                            finish.append(chunk.choices[0].finish_reason)
        except BaseException as exc:
            errors.append(exc)
            first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    report: dict[str, Any] = {}

    def do_evict() -> None:
        report.update(evict(daemon, iid, "--drain-timeout", "20"))

    try:
        assert first.wait(15), "no first chunk"
        t0 = time.monotonic()
        evictor = threading.Thread(target=do_evict)
        evictor.start()
        daemon.wait_state(iid, "draining", timeout=10)
        # While draining: the gateway counts the stream in flight for this instance …
        m = scrape(daemon)
        assert m.get("studioctl_instance_inflight", instance=iid) == 1
        assert m.get("studioctl_instance_up", instance=iid, recipe="drainy", state="draining") == 1
        with daemon.client() as c:
            assert c.status()["gateway"]["inflight"] == 1
        # … and new requests are told to come back later.
        resp = chat(daemon, key, "drainy")
        assert_error(resp, 503, "model_loading")
        assert retry_after(resp) >= 1
        evictor.join(30)
        reader.join(30)
        elapsed = time.monotonic() - t0
    finally:
        reader.join(30)
    assert not errors, errors
    # The stream finished whole: every token, its finish reason, before the engine stopped.
    assert "".join(chunks).split() == [f"tok{i}" for i in range(24)], chunks
    assert finish == ["length"]
    assert report["drained"] is True, report
    assert report["state"] == "stopped", report
    assert report["drain_s"] >= 0.5 and elapsed >= 0.5, (report, elapsed)
    wait_for(lambda: scrape(daemon).get("studioctl_gateway_inflight_requests") == 0)
    assert_error(chat(daemon, key, "drainy"), 503, "model_not_running")
