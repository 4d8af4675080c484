"""Lifecycle benchmarks against a real daemon with stand-in engines (known start and stop
delays), through ``cli.bench_lifecycle.run_lifecycle`` as the CLI calls it: the document
validated against the schema, the stages adding up to the cold start, a cold start no
shorter than the engine's configured start-up, a switch's time without service, an evict's
time, a cold request loaded on demand, exit 8 on a crossed threshold. And the engine-key
route: on the control socket only, never over the admin TCP API; a direct bench of an
instance with it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import ADMIN_TOKEN, create_tenant, gateway_daemon, launch, request
from studioctl.bench import report
from studioctl.cli.bench_lifecycle import run_lifecycle
from studioctl.errors import EXIT_OK, EXIT_THRESHOLD, OperationTimeout, UsageError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

START_S = 1.0  # the stand-in's start-up of "slow" and "cold" (spread over its log stages)
STOP_S = 0.5  # how long "victim" lingers after SIGTERM
RECIPES: dict[str, dict[str, Any]] = {
    "slow": {"env": {"STANDIN_STARTUP_S": str(START_S)}, "on_demand": False},
    "alpha": {"on_demand": False},
    "beta": {"on_demand": False},
    "victim": {"env": {"STANDIN_STOP_DELAY_S": str(STOP_S)}, "on_demand": False},
    "cold": {"env": {"STANDIN_STARTUP_S": str(START_S)}},
}
TOLERANCE_S = 0.05


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    env = {"STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true"}
    with gateway_daemon(RECIPES, admin_token=ADMIN_TOKEN, env=env) as d:
        yield d


@pytest.fixture
def here(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """This process talks to the test's daemon (its home, socket and store), as the CLI
    would with the same environment."""
    for k, v in daemon.env.items():
        if k.startswith("STUDIOCTL_"):
            monkeypatch.setenv(k, v)
    return daemon


def run(
    capsys: pytest.CaptureFixture[str], kind: str, *args: str, **kw: Any
) -> tuple[int, Any, str]:
    """run_lifecycle with --json: (exit code, the document validated, stderr)."""
    options: dict[str, Any] = {
        "json_out": True,
        "fail_if": [],
        "api_key": None,
        "save": False,
        "repeat": 1,
        "timeout_s": 60.0,
    }
    options.update(kw)
    code = run_lifecycle(kind, tuple(args), **options)
    out, err = capsys.readouterr()
    doc = json.loads(out)
    jsonschema.Draft202012Validator(report.schema()).validate(doc)
    assert doc["kind"] == "lifecycle" and doc["lifecycle"]["benchmark"] == kind
    return code, doc, err


def test_cold_start_stages_add_up_and_a_crossed_threshold_exits_8(
    here: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc, err = run(capsys, "cold-start", "slow", fail_if=["cold_start_s>1ms", "ttft_s>60s"])
    assert code == EXIT_THRESHOLD
    crossed = [t["expr"] for t in doc["thresholds"] if t["crossed"]]
    assert crossed == ["cold_start_s>1ms"] and doc["passed"] is False
    (one,) = doc["lifecycle"]["runs"]
    total = one["cold_start_s"]
    assert total >= START_S  # the engine alone takes that long to be ready
    assert one["ready_s"] <= total and 0 < one["ttft_s"] < total
    stages = one["stages"]
    assert stages[0]["name"] == "spawn" and stages[-1]["name"] == "first_token"
    assert [s["name"] for s in stages][-2] == "ready"
    assert len(stages) >= 4  # the stand-in logs the engine's stages between them
    assert abs(sum(s["duration_s"] for s in stages) - total) < TOLERANCE_S
    for before, after in itertools.pairwise(stages):
        assert abs(before["start_s"] + before["duration_s"] - after["start_s"]) < 1e-6
    assert all(s["duration_s"] >= 0 for s in stages)
    assert doc["lifecycle"]["metrics"]["cold_start_s"] == total
    assert one["evicted"] is True and here.live("slow") is None
    assert "1 threshold crossed: cold_start_s>1ms: cold_start_s = " in err


def test_a_cold_start_of_a_running_recipe_is_refused(
    here: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    inst = launch(here, "alpha")
    try:
        with pytest.raises(UsageError, match="already running"):
            run_lifecycle(
                "cold-start",
                ("alpha",),
                json_out=True,
                fail_if=[],
                api_key=None,
                save=False,
                repeat=1,
                timeout_s=30.0,
            )
    finally:
        here.cli_ok("evict", inst["id"], "--json")


def test_switch_measures_the_time_without_service(
    here: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    first = launch(here, "alpha")
    code, doc, _ = run(capsys, "switch", first["id"], "beta", repeat=2)
    assert code == EXIT_OK
    runs = doc["lifecycle"]["runs"]
    assert [r["from_launched"] for r in runs] == [False, True]  # run 2 launched alpha again
    assert runs[0]["from_id"] == first["id"]
    for r in runs:
        assert r["to_id"] and r["to_id"] != r["from_id"]
        # A answered until it stopped, B's first token came after A's last answer.
        assert r["from_last_ok_s"] < r["from_refused_s"] <= r["to_first_token_s"]
        assert r["gap_s"] == pytest.approx(r["to_first_token_s"] - r["from_last_ok_s"])
        assert 0 < r["gap_s"] < 30 and 0 < r["ttft_s"] <= r["gap_s"]
        assert r["report"]["order"] in ("evict-then-launch", "launch-then-evict")
        assert {"evict_s", "launch_s", "gap_s", "seconds"} <= set(r["report"])
        assert r["switch_s"] >= r["report"]["seconds"] - TOLERANCE_S
    spread = doc["lifecycle"]["spread"]["gap_s"]
    assert spread["min"] <= doc["lifecycle"]["metrics"]["gap_s"] <= spread["max"]
    assert here.live("alpha") is None and here.live("beta") is None

    # Through the gateway (a tenant key): B's requests wait in the gateway while B loads.
    _, key = create_tenant(here, "switcher", "--rpm", "100000", "--max-concurrent", "8")
    code, doc, _ = run(capsys, "switch", "alpha", "beta", api_key=key)
    assert code == EXIT_OK and doc["lifecycle"]["through_gateway"] is True
    (r,) = doc["lifecycle"]["runs"]
    assert r["from_launched"] is True
    assert r["from_last_ok_s"] < r["from_refused_s"] <= r["to_first_token_s"]
    assert 0 < r["ttft_s"] <= r["gap_s"] < 30
    assert here.live("alpha") is None and here.live("beta") is None


def test_a_switch_that_fails_midway_leaves_nothing_running(
    here: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """B's probe is refused (a key the gateway does not know) until the deadline: the run
    fails with its own error, and the B this switch launched is evicted after it."""
    first = launch(here, "alpha")
    with pytest.raises(OperationTimeout, match="beta after the switch"):
        run_lifecycle(
            "switch",
            (first["id"], "beta"),
            json_out=True,
            fail_if=[],
            api_key="sk-st-not-a-key-of-this-gateway",
            save=False,
            repeat=1,
            timeout_s=8.0,
        )
    capsys.readouterr()
    assert here.live("alpha") is None  # the switch itself ended
    assert here.live("beta") is None


def test_evict_waits_for_every_process(here: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run(capsys, "evict", "victim")
    assert code == EXIT_OK
    (one,) = doc["lifecycle"]["runs"]
    assert one["launched"] is True and one["processes"] >= 2  # the server and its child
    assert one["evict_s"] >= STOP_S  # the engine lingers that long after SIGTERM
    assert one["processes_gone_s"] is not None
    assert STOP_S <= one["processes_gone_s"] <= one["evict_s"] + TOLERANCE_S
    assert (one["gpu"], one["vram_free_s"]) == ("no GPU", None)
    assert one["report"]["seconds"] > 0
    assert here.live("victim") is None


def test_a_cold_request_is_loaded_on_demand(
    here: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    _, key = create_tenant(here, "life", "--rpm", "100000", "--max-concurrent", "8")
    with pytest.raises(UsageError, match="tenant key"):
        run_lifecycle(
            "cold-request",
            ("cold",),
            json_out=True,
            fail_if=[],
            api_key=None,
            save=False,
            repeat=1,
            timeout_s=30.0,
        )
    code, doc, _ = run(capsys, "cold-request", "cold", api_key=key, fail_if=["ttft_s<1ms"])
    assert code == EXIT_OK and doc["lifecycle"]["through_gateway"] is True
    (one,) = doc["lifecycle"]["runs"]
    assert one["ttft_s"] >= START_S and one["e2e_s"] >= one["ttft_s"]
    assert one["instance_id"]  # what the gateway loaded, evicted after
    assert one["queue_s"] is not None and START_S * 0.5 <= one["queue_s"] <= one["ttft_s"]
    assert here.live("cold") is None


def test_usage_errors_before_anything_runs(here: Daemon) -> None:
    base: dict[str, Any] = {"json_out": False, "api_key": None, "repeat": 1, "timeout_s": 5.0}
    with pytest.raises(UsageError, match="takes A B"):
        run_lifecycle("switch", ("alpha",), fail_if=[], save=False, **base)
    with pytest.raises(UsageError, match="unknown metric 'ttft_p95'"):
        run_lifecycle("cold-start", ("slow",), fail_if=["ttft_p95>1s"], save=False, **base)
    assert here.live("slow") is None  # nothing was launched


def test_a_saved_lifecycle_run_is_in_history_with_its_metrics(
    here: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc, err = run(capsys, "evict", "victim", save=True)
    assert code == EXIT_OK
    run_id = err.split("saved as run ")[1].split()[0]
    listed = json.loads(here.cli_ok("bench", "history", "--json"))
    rows = listed["runs"]
    (row,) = [r for r in rows if r["id"] == run_id]
    assert row["kind"] == "lifecycle"
    stored = json.loads(here.cli_ok("bench", "compare", run_id, run_id, "--json"))
    assert "evict_s" in json.dumps(stored)
    assert doc["lifecycle"]["metrics"]["evict_s"] is not None


def test_human_output_is_a_table(here: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_lifecycle(
        "evict",
        ("victim",),
        json_out=False,
        fail_if=[],
        api_key=None,
        save=False,
        repeat=1,
        timeout_s=30.0,
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.startswith("evict victim: 1 run, requests at the engine")
    assert "EVICT_S" in out.upper() and "processes_gone_s" in out and "no GPU" in out


# ----------------------------------------------------------------- the engine-key route


def test_engine_key_on_the_control_socket_only(here: Daemon) -> None:
    from studioctl.client import engine_key

    inst = launch(here, "alpha")
    try:
        with here.client() as c:
            got = engine_key(c, inst["id"])
        assert got == {"id": inst["id"], "url": inst["url"], "api_key": here.engine_key(inst["id"])}
        assert got["api_key"]
        path = f"/admin/instances/{inst['id']}/engine-key"
        resp = request(here, "GET", path, headers={"X-Admin-Token": ADMIN_TOKEN})
        assert resp.status_code == 400, resp.text
        assert "only on the daemon's control socket" in resp.json()["error"]["message"]
        assert str(got["api_key"]) not in resp.text
        # The admin API itself works over TCP: the refusal is this route's own.
        ok = request(
            here, "GET", f"/admin/instances/{inst['id']}", headers={"X-Admin-Token": ADMIN_TOKEN}
        )
        assert ok.status_code == 200 and "api_key" not in ok.json()
    finally:
        here.cli_ok("evict", inst["id"], "--json")


def test_a_direct_bench_of_an_instance(here: Daemon) -> None:
    from studioctl.bench import runner
    from studioctl.bench import target as targets
    from studioctl.bench.loadgen import Workload

    inst = launch(here, "alpha")
    try:
        with (
            here.client() as c,
            targets.resolved(c, inst["id"], through_gateway=False, model=None, keep=False) as where,
        ):
            assert (where.kind, where.launched, where.through_gateway) == ("instance", False, False)
            assert where.url == inst["url"] and where.api_key
            ep = runner.endpoint_from_url(where.url, where.model, where.api_key, chat=False)
            out = runner.bench(ep, Workload(requests=4, concurrency=2), runner.Inputs(3, 8))
        assert out.summary.requests_ok == 4 and out.summary.output_tokens == 12
        # Without the key, the engine refuses: the key is what made it work.
        bare = runner.endpoint_from_url(where.url, where.model, None, chat=False)
        with pytest.raises(Exception, match="401"):
            runner.bench(bare, Workload(requests=1), runner.Inputs(3, 8))
    finally:
        here.cli_ok("evict", inst["id"], "--json")
