"""``studioctl bench`` through the real CLI entry point (``python -m studioctl``): the JSON
document validated against its schema, ``--fail-if`` and exit code 8, usage errors (exit 2)
that name the bad expression, against the stand-in engine and through a daemon's gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import create_tenant, gateway_daemon
from helpers import free_port
from standin.helpers import StandinProcess, running_standin
from studioctl.bench import report
from studioctl.errors import EXIT_ENGINE_FAILED, EXIT_ERROR, EXIT_OK, EXIT_THRESHOLD, EXIT_USAGE

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = dict(os.environ if env is None else env)
    base["PYTHONPATH"] = os.pathsep.join([str(SRC), base.get("PYTHONPATH", "")])
    base.pop("STUDIOCTL_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "studioctl", "bench", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def valid(stdout: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stdout)
    jsonschema.Draft202012Validator(report.schema()).validate(doc)
    return doc


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    log = tmp_path_factory.mktemp("standin") / "engine.log"
    with running_standin(
        "vllm", log, STANDIN_PREFILL_S=0.05, STANDIN_TOKEN_DELAY_S=0.005, STANDIN_ACCESS_LOG=0
    ) as s:
        yield s


def run_args(s: StandinProcess, *more: str) -> list[str]:
    base = ["--url", s.url, "--model", "standin", "--prompt-tokens", "16", "--output-tokens"]
    return [*base, "4", "-n", "6", "-c", "2", *more]


def test_schema_is_a_valid_json_schema_naming_every_metric() -> None:
    from studioctl.bench.metrics import METRIC_NAMES

    schema = report.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["metrics"]["required"] == list(METRIC_NAMES)


def test_json_document_and_a_crossed_threshold_exit_8(standin: StandinProcess) -> None:
    r = cli(
        *run_args(standin, "--json", "--slo", "ttft=1s,e2e=2s"),
        "--fail-if",
        "ttft_p95>1ms",
        "--fail-if",
        "output_tps<1",
        "--fail-if",
        "requests_failed>0",
    )
    assert r.returncode == EXIT_THRESHOLD, r.stderr
    doc = valid(r.stdout)
    assert doc["schema"] == "studioctl.bench/1" and doc["passed"] is False
    m = doc["metrics"]
    assert (m["requests_ok"], m["prompt_tokens"], m["output_tokens"]) == (6, 96, 24)
    assert m["goodput_rps"] == m["request_rps"] and doc["slo"] == {"ttft": 1.0, "e2e": 2.0}
    assert [t["crossed"] for t in doc["thresholds"]] == [True, False, False]
    assert doc["thresholds"][0]["measured"] == m["ttft_p95"]
    assert doc["target"] == {
        "kind": "url",
        "name": None,
        "instance_id": None,
        "url": standin.url,
        "model": "standin",
        "through_gateway": False,
        "launched": False,
        "evicted": False,
    }
    assert doc["workload"]["prompt_tokens"] == 16 and doc["workload"]["prompt_variants"] == 6
    ttft_ms = f"{m['ttft_p95'] * 1000:.3f}ms"
    assert f"error: 1 threshold crossed: ttft_p95>1ms: ttft_p95 = {ttft_ms}" in r.stderr


def test_every_crossed_threshold_is_named(standin: StandinProcess) -> None:
    r = cli(*run_args(standin), "--fail-if", "e2e_p50>=1ms", "--fail-if", "output_tps>=1")
    assert r.returncode == EXIT_THRESHOLD
    assert "2 thresholds crossed: e2e_p50>=1ms: e2e_p50 = " in r.stderr
    assert "; output_tps>=1: output_tps = " in r.stderr
    assert "TTFT" in r.stdout and "throughput:" in r.stdout  # the table for people


def test_a_passing_run_exits_0(standin: StandinProcess) -> None:
    r = cli(*run_args(standin, "--no-stream", "--json"), "--fail-if", "e2e_p99>10s")
    assert r.returncode == EXIT_OK, r.stderr
    doc = valid(r.stdout)
    assert doc["passed"] is True and doc["workload"]["stream"] is False
    assert doc["metrics"]["ttft_p95"] is None and doc["metrics"]["e2e_p95"] > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fail-if", "ttft_p95=>500ms"], "--fail-if 'ttft_p95=>500ms': expected METRIC OP"),
        (["--fail-if", "ttft_p96>1s"], "unknown metric 'ttft_p96'"),
        (["--fail-if", "output_tps<1000ms"], "this metric is not a time"),
        (["--slo", "ttft=soon"], "--slo 'ttft=soon'"),
        (["--no-stream", "--slo", "ttft=1s"], "needs --stream"),
        (["--endpoint", "embeddings"], "chat or completions"),
        (["--through-gateway"], "go with TARGET"),
    ],
)
def test_usage_errors_exit_2_before_any_request(args: list[str], needle: str) -> None:
    # Nothing listens there: a usage error must come before any request is made.
    url = f"http://127.0.0.1:{free_port()}"
    r = cli("--url", url, "--model", "m", "--prompt-tokens", "8", *args)
    assert r.returncode == EXIT_USAGE, (r.stdout, r.stderr)
    assert needle in r.stderr


def test_target_and_inputs_are_required_once() -> None:
    r = cli("--prompt-tokens", "8")
    assert r.returncode == EXIT_USAGE and "TARGET" in r.stderr
    r = cli("--url", "http://127.0.0.1:1", "--model", "m")
    assert r.returncode == EXIT_USAGE and "--prompt-tokens" in r.stderr


def test_a_bad_dataset_names_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    r = cli("--url", "http://127.0.0.1:1", "--model", "m", "--dataset", str(data))
    assert r.returncode == EXIT_ERROR
    assert f"error: {data}:2: prompt: must be a non-empty string" in r.stderr


def test_nothing_listening_is_an_engine_failure() -> None:
    r = cli("--url", f"http://127.0.0.1:{free_port()}", "--model", "m", "--prompt-tokens", "8")
    assert r.returncode == EXIT_ENGINE_FAILED
    assert "connect" in r.stderr


# ------------------------------------------------------------------------ a daemon's recipe


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    recipes = {"tiny": {"env": {"STANDIN_TOKEN_DELAY_S": "0.002"}}}
    with gateway_daemon(recipes) as d:
        yield d


def test_a_recipe_is_launched_measured_through_the_gateway_and_evicted(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "bench", "--rpm", "100000", "--max-concurrent", "8")
    r = cli(
        "tiny", "--prompt-tokens", "12", "--output-tokens", "3", "-n", "5", "--json", env=daemon.env
    )
    # Without --through-gateway: at the engine itself, with its own key (the control socket's
    # GET /instances/{id}/engine-key); launched and evicted all the same.
    assert r.returncode == EXIT_OK, r.stderr + daemon.log_text(2000)
    t = valid(r.stdout)["target"]
    assert (t["through_gateway"], t["launched"], t["evicted"]) == (False, True, True)
    assert t["url"] != f"http://127.0.0.1:{daemon.gateway_port}"
    assert daemon.live("tiny") is None
    args = ["tiny", "--through-gateway", "--prompt-tokens", "12", "--output-tokens", "3"]
    r = cli(*args, "-n", "5", "--json", env=daemon.env)
    assert r.returncode == EXIT_USAGE and "tenant key" in r.stderr
    r = cli(*args, "-n", "5", "-c", "2", "--json", "--api-key", key, env=daemon.env)
    assert r.returncode == EXIT_OK, r.stderr + daemon.log_text(2000)
    doc = valid(r.stdout)
    t = doc["target"]
    assert (t["kind"], t["name"], t["through_gateway"]) == ("recipe", "tiny", True)
    assert (t["launched"], t["evicted"], t["model"]) == (True, True, "tiny")
    assert t["url"] == f"http://127.0.0.1:{daemon.gateway_port}"
    m = doc["metrics"]
    assert (m["requests_ok"], m["prompt_tokens"], m["output_tokens"]) == (5, 60, 15)
    assert daemon.live("tiny") is None  # evicted after the run

    # --keep leaves it running; the next run measures the running instance, launches nothing.
    r = cli(*args, "-n", "2", "--json", "--keep", "--api-key", key, env=daemon.env)
    assert r.returncode == EXIT_OK, r.stderr
    assert valid(r.stdout)["target"]["launched"] is True
    live = daemon.live("tiny")
    assert live is not None
    daemon.track(live)
    r = cli(*args, "-n", "2", "--json", env={**daemon.env, "STUDIOCTL_API_KEY": key})
    assert r.returncode == EXIT_USAGE  # the test's cli() drops an inherited key: none given
    r = cli(live["id"], *args[1:], "-n", "2", "--json", "--api-key", key, env=daemon.env)
    assert r.returncode == EXIT_OK, r.stderr
    t = valid(r.stdout)["target"]
    assert (t["kind"], t["launched"], t["evicted"], t["instance_id"]) == (
        "instance",
        False,
        False,
        live["id"],
    )
    assert daemon.live("tiny") is not None
    daemon.evict_all()


def test_on_a_terminal_live_progress_then_a_rich_table(standin: StandinProcess) -> None:
    import pty
    import select

    master, slave = pty.openpty()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC)
    env.update(COLUMNS="120", LINES="40", TERM="xterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "studioctl", "bench", *run_args(standin, "-n", "30")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        assert proc.wait(timeout=60) == EXIT_OK, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        os.close(master)
    text = out.decode("utf-8", "replace")
    assert "in flight" in text  # the live progress, drawn while the run went on
    assert "TTFT" in text and "E2E latency" in text
