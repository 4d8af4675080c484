"""``bench --save``, ``--repeat``, ``bench history`` and ``bench compare`` through the real CLI
(``python -m studioctl``) on real SQLite files: the runs are saved by actual benchmark runs
against stand-in engines (a fast one and one ten times slower per token), and a daemon's
recipe named like a command (``history``) is still a TARGET."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.test_cli_bench import cli, valid
from daemon_helpers import Daemon
from gateway_daemon.helpers import create_tenant, gateway_daemon
from standin.helpers import StandinProcess, running_standin
from standin.standin_engine import VERSIONS
from studioctl import paths
from studioctl.bench import compare as cmp
from studioctl.bench.metrics import METRIC_NAMES
from studioctl.errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE, UsageError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    log = tmp_path_factory.mktemp("fast") / "engine.log"
    with running_standin(
        "vllm", log, STANDIN_PREFILL_S=0.01, STANDIN_TOKEN_DELAY_S=0.004, STANDIN_ACCESS_LOG=0
    ) as s:
        yield s


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    log = tmp_path_factory.mktemp("slow") / "engine.log"
    with running_standin(
        "vllm", log, STANDIN_PREFILL_S=0.01, STANDIN_TOKEN_DELAY_S=0.04, STANDIN_ACCESS_LOG=0
    ) as s:
        yield s


def workload(s: StandinProcess, *more: str) -> list[str]:
    base = ["--url", s.url, "--model", "standin", "--prompt-tokens", "8", "--output-tokens"]
    return [*base, "4", "-n", "4", "-c", "2", *more]


def ok(*args: str) -> str:
    r = cli(*args)
    assert r.returncode == EXIT_OK, r.stderr
    return r.stdout


def test_history_and_compare_of_saved_runs(fast: StandinProcess, slow: StandinProcess) -> None:
    db = paths.database_file()
    assert "no saved runs (bench --save)" in ok("history")
    assert not db.exists()  # reading creates nothing

    a = valid(ok(*workload(fast, "--repeat", "2", "--save", "--json")))
    b = valid(ok(*workload(slow, "--repeat", "2", "--save", "--json")))
    table = ok(*workload(fast, "--save"))  # for people: the id on the last line
    c_id = table.strip().splitlines()[-1].removeprefix("saved as run ")
    assert len(c_id) == 8 and a["run_id"] != b["run_id"]

    # --repeat: counts are totals, the rest means of the runs, with their spread.
    rep = a["repeat"]
    assert rep["count"] == 2 and len(rep["runs"]) == 2
    per_run = [r["metrics"] for r in rep["runs"]]
    assert a["metrics"]["requests_ok"] == 8 == sum(m["requests_ok"] for m in per_run)
    tps = [m["output_tps"] for m in per_run]
    assert a["metrics"]["output_tps"] == sum(tps) / 2
    assert rep["spread"]["output_tps"]["min"] == min(tps)
    assert rep["spread"]["output_tps"]["max"] == max(tps)
    assert a["duration_s"] == sum(r["duration_s"] for r in rep["runs"])
    env = a["environment"]
    assert env["engine_version"] == VERSIONS["vllm"]  # the stand-in's own /version
    assert env["recipe_id"] is None and env["engine"] is None  # --url: no recipe

    listed = json.loads(ok("history", "--json"))["runs"]
    assert [r["id"] for r in listed] == [c_id, b["run_id"], a["run_id"]]
    first = listed[2]
    assert first["metrics"]["output_tps"]["value"] == a["metrics"]["output_tps"]
    assert first["metrics"]["output_tps"]["min"] == min(tps)
    assert (first["repeat"], first["target_url"], first["model"]) == (2, fast.url, "standin")
    assert first["workload"] == a["workload"] and first["engine_version"] == VERSIONS["vllm"]
    assert [r["id"] for r in json.loads(ok("history", "-n", "1", "--json"))["runs"]] == [c_id]
    text = ok("history")
    assert all(i in text for i in (a["run_id"], b["run_id"], c_id))
    assert "c2 P8→O4 n4 stream" in text

    # Ten times slower per token: beyond any spread of repeated runs.
    out = json.loads(ok("compare", a["run_id"], b["run_id"], "--json"))
    assert out["a"]["id"] == a["run_id"] and out["same_workload"] is True
    changes = {m["metric"]: m for m in out["metrics"]}
    assert set(changes) == set(cmp.DIRECTIONS) & set(METRIC_NAMES)  # a serving run's
    assert changes["goodput_rps"]["verdict"] == cmp.NOT_MEASURED  # no --slo: no goodput
    for name in ("output_tps", "tpot_mean", "itl_p50", "e2e_mean"):
        got = changes[name]
        assert got["verdict"] == "regressed", got
        assert got["change"] == cmp.relative_change(a["metrics"][name], b["metrics"][name])
    assert changes["output_tps"]["change"] < -0.5 and changes["tpot_mean"]["change"] > 2
    back = json.loads(ok("compare", b["run_id"][:6], a["run_id"], "--json"))
    assert {m["metric"]: m["verdict"] for m in back["metrics"]}["output_tps"] == "improved"
    # A run without repeats has no spread: its changes are shown, never flagged.
    plain = json.loads(ok("compare", b["run_id"], c_id, "--json"))["metrics"]
    measured = [m for m in plain if m["metric"] != "goodput_rps"]
    assert {m["verdict"] for m in measured} == {cmp.NO_SPREAD}
    assert all(m["change"] is not None for m in measured)
    text = ok("compare", a["run_id"], b["run_id"])
    assert "regressed" in text and f"A: {a['run_id']}" in text and "2 runs" in text

    r = cli("compare", a["run_id"], "00000000x")
    assert r.returncode == EXIT_NOT_FOUND and "no saved run '00000000x'" in r.stderr


def test_a_crossed_threshold_is_saved_and_the_table_shows_the_spread(
    fast: StandinProcess,
) -> None:
    r = cli(*workload(fast, "--repeat", "2", "--save"), "--fail-if", "output_tps>0")
    assert r.returncode == EXIT_THRESHOLD
    assert "spread" in r.stdout and "output_tps" in r.stdout and "repeated 2 times" in r.stdout
    saved = json.loads(ok("history", "--json"))["runs"]
    assert len(saved) == 1 and saved[0]["passed"] is False and saved[0]["repeat"] == 2


def test_a_database_that_cannot_be_written_still_prints_the_result(
    fast: StandinProcess, tmp_path: Path
) -> None:
    db = paths.database_file()
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"not a database" * 100)
    r = cli(*workload(fast, "--save", "--json"))
    assert r.returncode == 1 and "is it a studioctl database?" in r.stderr
    doc = valid(r.stdout)
    assert doc["run_id"] is None and doc["metrics"]["requests_ok"] == 4


# ------------------------------------------------------------------------ a daemon's recipe


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon({"history": {"env": {"STANDIN_TOKEN_DELAY_S": "0.002"}}}) as d:
        yield d


def test_a_recipe_named_history_is_still_a_target_and_feeds_its_peaks(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "bench", "--rpm", "100000", "--max-concurrent", "8")
    args = ["--through-gateway", "--api-key", key, "--prompt-tokens", "8", "--output-tokens"]
    args += ["3", "-n", "4", "--json", "--save"]
    docs: list[dict[str, Any]] = []
    for argv in (["run", "history", *args], [*args, "--", "history"]):
        r = cli(*argv, env=daemon.env)
        assert r.returncode == EXIT_OK, r.stderr + daemon.log_text(2000)
        docs.append(valid(r.stdout))
    for doc in docs:
        assert (doc["target"]["name"], doc["target"]["kind"]) == ("history", "recipe")
        assert doc["target"]["launched"] and doc["target"]["evicted"]
        env = doc["environment"]
        assert (env["recipe_id"], env["engine"]) == ("history", "vllm")
        assert env["engine_version"] == VERSIONS["vllm"]  # the engine's, not the gateway's
        shown = daemon.cli_json("recipe", "show", "history", "--json")
        assert env["recipe_hash"] == shown["content_hash"]
        # This host has no NVIDIA driver (tests/test_cli_gpus.py): no GPU reading.
        assert env["gpu_names"] is None and env["gpu_driver"] is None

    r = daemon.cli("bench", "history", "history", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert {x["id"] for x in runs} == {d["run_id"] for d in docs}
    assert all(x["recipe_id"] == "history" for x in runs)

    # The saved runs offered their figures to the recipe's peaks (`studioctl stats`).
    stats = daemon.cli_json("stats", "history", "--json")["recipes"][0]
    best_out = max(d["metrics"]["output_tps"] for d in docs)
    best_ttft = min(d["metrics"]["ttft_mean"] for d in docs)
    assert stats["peaks"]["generation_tps"]["value"] >= best_out
    assert stats["peaks"]["ttft_best_s"]["value"] <= best_ttft
    assert stats["peaks"]["prefill_tps"]["value"] > 0


# ------------------------------------------------------------ lifecycle options: forwarding

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    from studioctl.cli import bench_lifecycle

    seen: list[tuple[Any, ...]] = []

    def fake(kind: str, args: tuple[str, ...], **kw: Any) -> int:
        seen.append((kind, args, kw))
        return 8 if kind == "evict" else 0

    monkeypatch.setattr(bench_lifecycle, "run_lifecycle", fake)
    return seen


def invoke(*args: str) -> Any:
    from studioctl.cli.app import app

    return runner.invoke(app, ["bench", *args], env={"STUDIOCTL_API_KEY": ""})


@pytest.mark.parametrize(
    ("argv", "kind", "args"),
    [
        (["--cold-start", "tiny"], "cold-start", ("tiny",)),
        (["--switch", "a", "b"], "switch", ("a", "b")),
        (["--cold-request", "m"], "cold-request", ("m",)),
        (["run", "--cold-start", "tiny"], "cold-start", ("tiny",)),
    ],
)
def test_lifecycle_options_are_forwarded(
    calls: list[tuple[Any, ...]], argv: list[str], kind: str, args: tuple[str, ...]
) -> None:
    result = invoke(*argv)
    assert result.exit_code == EXIT_OK, result.output
    assert calls == [
        (
            kind,
            args,
            {
                "json_out": False,
                "fail_if": [],
                "api_key": None,
                "save": False,
                "repeat": 1,
                "timeout_s": None,
            },
        )
    ]


def test_lifecycle_forwards_the_shared_options_and_its_exit_code(
    calls: list[tuple[Any, ...]],
) -> None:
    result = invoke(
        "--evict",
        "tiny-1",
        "--json",
        "--fail-if",
        "evict_s>5s",
        "--fail-if",
        "x<1",
        "--api-key",
        "k",
        "--save",
        "--repeat",
        "3",
        "--timeout",
        "30",
    )
    assert result.exit_code == EXIT_THRESHOLD  # run_lifecycle's code is the command's
    assert calls == [
        (
            "evict",
            ("tiny-1",),
            {
                "json_out": True,
                "fail_if": ["evict_s>5s", "x<1"],
                "api_key": "k",
                "save": True,
                "repeat": 3,
                "timeout_s": 30.0,
            },
        )
    ]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--cold-start", "a", "--evict", "b"], "--cold-start, --evict: give one"),
        (["tiny", "--cold-start", "a"], "--cold-start names what it measures"),
        (["--url", "http://h:1", "--switch", "a", "b"], "--switch names what it measures"),
    ],
)
def test_lifecycle_usage_errors(calls: list[tuple[Any, ...]], argv: list[str], needle: str) -> None:
    result = invoke(*argv)  # in-process: the error is raised, main() would print it, exit 2
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == EXIT_USAGE
    assert needle in str(result.exception)
    assert calls == []
