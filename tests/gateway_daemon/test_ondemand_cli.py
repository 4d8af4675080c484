"""The on-demand CLI and API through a real daemon and stand-in engines (issue 11.1, 11.5):
``GET /v1/models`` offers the recipes a request loads, with their state; ``studioctl preload``
loads one through the orchestrator (one launch) and ``unload`` drains it away (a stream in
flight finishes whole) so the next request loads it again; ``ps`` shows the requests
waiting for a model that is loading."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    chat,
    create_tenant,
    gateway_daemon,
    openai_client,
    request,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RECIPES: dict[str, dict[str, Any]] = {
    # 0.2 s per token: a 16-token stream is in flight for ~3 s.
    "warm": {
        "vram_gb": 1,
        "aliases": ["warm-alias"],
        "env": {"STANDIN_STARTUP_S": "1", "STANDIN_TOKEN_DELAY_S": "0.2"},
    },
    "slowload": {"vram_gb": 1, "env": {"STANDIN_STARTUP_S": "4"}},
    "manual": {"vram_gb": 1, "on_demand": False},
    "huge": {"vram_gb": 20},
    "broken": {"vram_gb": 1, "env": {"STANDIN_MODE": "crash_at_start"}},
}
SETTINGS = {"STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true", "STUDIOCTL_HOST_CAPACITY_GB": "10"}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon(RECIPES, admin_token=ADMIN_TOKEN, env=SETTINGS) as d:
        yield d


@pytest.fixture(scope="module")
def key(daemon: Daemon) -> str:
    return create_tenant(daemon, "cli", "--rpm", "100000", "--max-concurrent", "32")[1]


def models(d: Daemon, key: str) -> dict[str, dict[str, Any]]:
    resp = request(d, "GET", "/v1/models", key=key)
    assert resp.status_code == 200, resp.text
    return {m["id"]: m for m in resp.json()["data"]}


def launches(d: Daemon, recipe: str) -> int:
    return sum(1 for e in d.events(2000) if e["kind"] == "launch" and e.get("recipe_id") == recipe)


def test_models_offers_on_demand_recipes_and_preload_makes_them_ready(
    daemon: Daemon, key: str
) -> None:
    listed = models(daemon, key)
    for name, recipe in (("warm", "warm"), ("warm-alias", "warm"), ("broken", "broken")):
        entry = listed[name]
        assert set(entry) == {"id", "object", "created", "owned_by", "studioctl"}, entry
        assert entry["object"] == "model" and isinstance(entry["created"], int)
        assert entry["studioctl"] == {"state": "available", "recipe": recipe, "instance": None}
    assert "manual" not in listed  # not on demand, not running: refused, so not offered

    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:  # what a polling client sees while the preload runs
        while not done.is_set():
            seen.add(models(daemon, key)["warm"]["studioctl"]["state"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = daemon.cli("preload", "warm-alias", "--json")
    finally:
        done.set()
        watcher.join(10)
    assert r.returncode == 0, (r.stdout, r.stderr)
    answer = json.loads(r.stdout)  # one JSON document, nothing else
    assert r.stdout.count("\n") == 1
    assert answer["model"] == "warm-alias" and answer["recipe"] == "warm"
    assert answer["state"] == "ready" and answer["instance"].startswith("warm-")
    assert answer["seconds"] >= 0.9  # the stand-in takes 1 s to start
    assert seen & {"starting", "loading"}, seen  # a poller saw it load
    assert models(daemon, key)["warm"]["studioctl"] == {
        "state": "ready",
        "recipe": "warm",
        "instance": answer["instance"],
    }
    again = daemon.cli_ok("preload", "warm")
    assert again.strip() == f"warm is already ready ({answer['instance']}, recipe warm)"
    assert chat(daemon, key, "warm").status_code == 200
    assert launches(daemon, "warm") == 1


def test_preload_and_requests_at_once_make_one_launch(daemon: Daemon, key: str) -> None:
    with ThreadPoolExecutor(max_workers=9) as pool:
        pre = [pool.submit(daemon.cli, "preload", "slowload", "--json") for _ in range(3)]
        answers = list(pool.map(lambda _: chat(daemon, key, "slowload"), range(6)))
        outs = [f.result() for f in pre]
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    ids = {json.loads(o.stdout)["instance"] for o in outs if o.returncode == 0}
    assert len(ids) == 1 and all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert launches(daemon, "slowload") == 1
    daemon.cli_ok("unload", "slowload")


def test_unload_drains_a_stream_and_the_next_request_loads_it_again(
    daemon: Daemon, key: str
) -> None:
    if daemon.live("warm") is None:
        daemon.cli_ok("preload", "warm")
    before = launches(daemon, "warm")
    chunks: list[str] = []
    first = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with openai_client(daemon, key) as client:
                for chunk in client.chat.completions.create(
                    model="warm",
                    messages=[{"role": "user", "content": "stream please"}],
                    max_tokens=16,
                    stream=True,
                ):
                    if chunk.choices and chunk.choices[0].delta.content:
                        chunks.append(chunk.choices[0].delta.content)
                        first.set()
        except BaseException as exc:
            errors.append(exc)
            first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        assert first.wait(15), "no first chunk"
        r = daemon.cli("unload", "warm-alias", "--drain-timeout", "30", "--json")
    finally:
        reader.join(30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert not errors, errors
    assert "".join(chunks).split() == [f"tok{i}" for i in range(16)]  # none aborted
    answer = json.loads(r.stdout)
    assert (answer["model"], answer["recipe"]) == ("warm-alias", "warm")
    [report] = answer["unloaded"]
    assert report["drained"] is True and report["state"] == "stopped", report
    assert report["drain_s"] >= 1.0  # it waited for the stream
    assert models(daemon, key)["warm"]["studioctl"]["state"] == "available"
    # On demand: the next request loads it again.
    assert chat(daemon, key, "warm").status_code == 200
    assert launches(daemon, "warm") == before + 1
    human = daemon.cli_ok("unload", "warm")
    assert human.startswith("unloaded warm (recipe warm):") and "stopped in" in human, human


def test_unload_of_what_is_not_running_says_so_and_an_unknown_name_is_exit_3(
    daemon: Daemon,
) -> None:
    r = daemon.cli("unload", "manual", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "model": "manual",
        "recipe": "manual",
        "unloaded": [],
        "already": "not running",
    }
    assert daemon.cli_ok("unload", "manual").strip() == "manual is not running (recipe manual)"
    r = daemon.cli("unload", "no-such-model")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "no-such-model" in r.stderr and r.stderr.startswith("error: ")


@pytest.mark.parametrize(
    ("model", "code", "said"),
    [
        ("no-such-model", 3, "no recipe serves the model 'no-such-model'"),
        ("manual", 2, "not loaded on demand"),
        ("huge", 5, "needs 20 GiB on GPU 0, which has 10 GiB"),
        ("broken", 7, "loading recipe 'broken' failed"),
    ],
)
def test_preload_refusals_exit_with_the_reason(
    daemon: Daemon, model: str, code: int, said: str
) -> None:
    r = daemon.cli("preload", model, "--timeout", "60")
    assert r.returncode == code, (r.stdout, r.stderr)
    assert said in r.stderr, r.stderr
    if model == "manual":
        assert "hint: studioctl launch manual" in r.stderr


def test_ps_shows_the_requests_waiting_for_a_loading_model(daemon: Daemon, key: str) -> None:
    if daemon.live("slowload") is not None:
        daemon.cli_ok("unload", "slowload")
    with ThreadPoolExecutor(max_workers=3) as pool:
        waiting = [pool.submit(chat, daemon, key, "slowload") for _ in range(3)]
        deadline = time.monotonic() + 20
        data: dict[str, Any] = {}
        while time.monotonic() < deadline:
            data = daemon.cli_json("ps", "--json")
            rows = [q for q in data["queued"] if q["model"] == "slowload"]
            if rows and rows[0]["queued"] == 3 and rows[0]["instance"]:
                break
            time.sleep(0.1)
        [row] = [q for q in data["queued"] if q["model"] == "slowload"]
        assert row["queued"] == 3 and row["recipe"] == "slowload", data
        [inst] = [i for i in data["instances"] if i["id"] == row["instance"]]
        assert inst["queued"] == 3 and inst["state"] in ("starting", "loading")
        table = daemon.cli_ok("ps")
        header = table.lower().splitlines()[0].split()
        assert header[6:8] == ["state", "queued"]
        line = next(ln for ln in table.splitlines() if ln.startswith(row["instance"]))
        assert line.split()[7] == "3", table
        assert [f.result().status_code for f in waiting] == [200] * 3
    after = daemon.cli_json("ps", "--json")
    assert after["queued"] == [] and all(i["queued"] == 0 for i in after["instances"])
