"""End to end with a real SGLang (CPU, torch_native path) serving the tiny model.

SGLang's /health answers 503 until its warm-up request is done: the daemon must keep the
instance loading (not ready, never failed) through that window, then see it ready. Evicting
it must end the scheduler and detokenizer processes too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from tests.e2e.helpers import (
    E2EDaemon,
    completion,
    e2e_daemon,
    engine_env,
    find_process,
    http,
    record_timing,
    require,
)

from daemon_helpers import alive, describe
from helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ENV = engine_env("sglang")
RECIPE, SERVED = "tiny-sglang", "tiny-sglang"
LAUNCH_TIMEOUT = 360.0
SCHEDULER, DETOKENIZER = "sglang::scheduler", "sglang::detokenizer"


@pytest.fixture(scope="module")
def daemon() -> Iterator[E2EDaemon]:
    require(ENV)
    with e2e_daemon(ENV) as d:
        yield d


def _ready(d: E2EDaemon) -> dict[str, Any]:
    live = d.live(RECIPE)
    if live is None:
        d.cli_ok("launch", RECIPE, "--json", timeout=LAUNCH_TIMEOUT)
        live = d.live(RECIPE)
        assert live is not None, d.instances()
    return d.wait_state(live["id"], "ready", timeout=LAUNCH_TIMEOUT, bad={"failed"})


def test_launch_stays_loading_while_health_says_503(daemon: E2EDaemon) -> None:
    assert daemon.live(RECIPE) is None
    t0 = time.monotonic()
    cli = subprocess.Popen(
        [sys.executable, "-m", "studioctl", "launch", RECIPE, "--json"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    # (seconds, daemon state, /health status) while the launch is under way. The state is
    # read before the probe: "ready" is one-way, so a ready state must not meet a 503.
    samples: list[tuple[float, str, int]] = []
    try:
        while cli.poll() is None and time.monotonic() - t0 < LAUNCH_TIMEOUT:
            live = daemon.live(RECIPE)
            if live is None:
                time.sleep(0.1)
                continue
            status = http(live["url"] + "/health", timeout=1)[0]
            samples.append((time.monotonic() - t0, live["state"], status))
            time.sleep(0.1)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()  # the CLI we started; the launch goes on in the daemon
            cli.communicate()
    assert cli.returncode == 0, f"launch exited {cli.returncode}: {err[-3000:]}"
    wall = time.monotonic() - t0
    record_timing("SGLang launch tiny-sglang via CLI (wall)", wall)

    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    result = lines[-1]
    assert result["type"] == "result" and result["state"] == "ready", lines[-3:]
    record_timing("SGLang launch: ready after spawn", result["stages"]["ready"])
    stages = [
        ln["data"]["stage"] for ln in lines if ln.get("type") == "event" and ln["kind"] == "stage"
    ]
    # ("api", the "fired up" line, may come a moment after /health turns 200: not required.)
    for wanted in ("started", "weights", "kv_cache", "http"):
        assert wanted in stages, f"stage {wanted!r} missing from {stages}"
    assert stages.index("weights") < stages.index("kv_cache") < stages.index("http"), stages

    states = {s for _, s, _ in samples}
    assert not states & {"failed", "crashed", "stopped"}, samples
    warming = [(t, s) for t, s, code in samples if code == 503]
    assert warming, f"never saw /health 503 while warming up: {samples}"
    assert all(s in ("starting", "loading") for _, s in warming), warming
    # Once ready, never warming again (a 503). A probe of ours that timed out under load (0)
    # says nothing either way.
    assert all(code != 503 for _, s, code in samples if s == "ready"), samples
    assert any(code == 200 for _, s, code in samples if s == "ready") or not any(
        s == "ready" for _, s, _ in samples
    ), samples
    record_timing("SGLang launch: seconds of /health 503 seen", warming[-1][0] - warming[0][0])
    # A state change never sent it back: the sequence is starting* loading* ready*.
    order = {"starting": 0, "loading": 1, "ready": 2}
    ranks = [order[s] for _, s, _ in samples]
    assert ranks == sorted(ranks), samples
    (row,) = [i for i in daemon.ps() if i["id"] == result["id"]]
    assert row["state"] == "ready" and row["backend"] == "sglang"


def test_completion_answered_by_engine_port(daemon: E2EDaemon) -> None:
    inst = _ready(daemon)
    prompt = "Hello there, how are"
    body = completion(inst["url"], SERVED, prompt, max_tokens=6)
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str)
    usage = body["usage"]
    assert usage["completion_tokens"] == 6
    status, raw = http(inst["url"] + "/tokenize", {"model": SERVED, "prompt": prompt})
    assert status == 200, raw[:300]
    assert usage["prompt_tokens"] == json.loads(raw)["count"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert daemon.instance(inst["id"])["state"] == "ready"


def test_evict_ends_scheduler_and_detokenizer(daemon: E2EDaemon) -> None:
    inst = _ready(daemon)

    def whole_tree() -> list[dict[str, Any]] | None:
        procs: list[dict[str, Any]] = daemon.instance(inst["id"])["processes"]
        return (
            procs if find_process(procs, SCHEDULER) and find_process(procs, DETOKENIZER) else None
        )

    procs = wait_for(
        whole_tree, timeout=30, interval=0.5, what="scheduler and detokenizer in the tree"
    )
    sched, detok = find_process(procs, SCHEDULER), find_process(procs, DETOKENIZER)
    assert sched and detok
    root = psutil.Process(inst["pid"])
    tree = {(p["pid"], p["create_time"]) for p in procs}
    tree |= {(p.pid, p.create_time()) for p in [root, *root.children(recursive=True)]}

    t0 = time.monotonic()
    rep = json.loads(daemon.cli_ok("evict", RECIPE, "--json", "--drain-timeout", "10"))
    record_timing("SGLang evict tiny-sglang", time.monotonic() - t0)
    assert rep["state"] == "stopped" and rep["leftover"] == [], rep
    assert rep["drained"] is True
    reported = {p["pid"] for p in rep["processes"]}
    assert {inst["pid"], sched["pid"], detok["pid"]} <= reported, rep["processes"]

    left = [describe(pid) for pid, ct in tree if alive(pid, ct)]
    assert not left, f"processes of the evicted SGLang tree remain: {left}"
    assert not alive(sched["pid"], sched["create_time"])
    assert not alive(detok["pid"], detok["create_time"])
    assert http(inst["url"] + "/health", timeout=2)[0] == 0
    assert daemon.instance(inst["id"])["state"] == "stopped"
