"""End to end with a real vLLM (the CPU build) serving the tiny model, through the CLI.

One daemon for the whole module (each vLLM start costs ~45 s on two cores). The tests run in
file order and build on each other — launch, answer, adoption after a daemon SIGKILL, a
killed worker restarted, a switch without a gap, an evict that leaves nothing — but each one
brings up what it needs itself when run alone (``-k``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
import yaml
from tests.e2e.helpers import (
    RECIPES,
    REPO,
    E2EDaemon,
    completion,
    e2e_daemon,
    engine_env,
    find_process,
    http,
    note,
    record_timing,
    require,
)

from daemon_helpers import alive, describe
from helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ENV = engine_env("vllm")
LAUNCH_TIMEOUT = 360.0  # readiness_timeout_s of the recipes is 300
A, B = "tiny-cpu", "tiny-cpu-b"  # served names: tiny, tiny-b
SERVED = {A: "tiny", B: "tiny-b"}
GPUS = {A: "0", B: "1"}  # disjoint "GPU" sets (CUDA_VISIBLE_DEVICES is harmless on the CPU)


@pytest.fixture(scope="module")
def daemon() -> Iterator[E2EDaemon]:
    require(ENV)
    with e2e_daemon(ENV) as d:
        yield d


def _launch_json(d: E2EDaemon, recipe: str) -> tuple[list[dict[str, Any]], float]:
    t0 = time.monotonic()
    out = d.cli_ok("launch", recipe, "--json", "--gpus", GPUS[recipe], timeout=LAUNCH_TIMEOUT)
    secs = time.monotonic() - t0
    return [json.loads(line) for line in out.splitlines() if line.strip()], secs


def _ready(d: E2EDaemon, recipe: str) -> dict[str, Any]:
    """The ready instance of ``recipe``, launched through the CLI when there is none."""
    live = d.live(recipe)
    if live is None:
        _launch_json(d, recipe)
        live = d.live(recipe)
        assert live is not None, f"{recipe} launched but not listed: {d.instances()}"
    return d.wait_state(live["id"], "ready", timeout=LAUNCH_TIMEOUT, bad={"failed"})


def _tree(d: E2EDaemon, iid: str, *markers: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The instance's recorded processes, once every marker is among them (alive)."""

    def complete() -> list[dict[str, Any]] | None:
        procs: list[dict[str, Any]] = d.instance(iid)["processes"]
        return procs if all(find_process(procs, m) for m in markers) else None

    return wait_for(
        complete, timeout=timeout, interval=0.5, what=f"{iid}'s tree to record {markers}"
    )


def _switch_target(d: E2EDaemon) -> str:
    """tiny-cpu-b, with its vLLM worker on a CPU core that tiny-cpu's worker does not use.

    On the CPU the "GPU" sets mean nothing; the cores do. With the default
    VLLM_CPU_OMP_THREADS_BIND=auto every vLLM binds its worker to the same cores (0..n-2 on
    n cores), so launching one while the other serves requests crawls (~300 s instead of
    ~25 s on two cores, measured). When the shipped recipe does not pin its cores, switch
    to a copy of it pinned to the last core (the one ``auto`` leaves free), given by path.
    """
    shipped = RECIPES / f"{B}.yaml"
    data = yaml.safe_load(shipped.read_text())
    env = data.get("env") or {}
    if str(env.get("VLLM_CPU_OMP_THREADS_BIND", "auto")) != "auto":
        return B
    core = max(os.sched_getaffinity(0))
    env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
    data["env"] = env
    folder = d.home / "pinned"
    folder.mkdir(exist_ok=True)
    path = folder / f"{B}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    note(
        f"{shipped.relative_to(REPO)} does not pin its CPU cores; the switch test used a copy "
        f"with VLLM_CPU_OMP_THREADS_BIND={core} (set it in the recipe to drop this)"
    )
    return str(path)


def _tokens(base_url: str, model: str, prompt: str) -> int:
    status, raw = http(base_url + "/tokenize", {"model": model, "prompt": prompt})
    assert status == 200, f"/tokenize -> {status}: {raw[:300]!r}"
    count: int = json.loads(raw)["count"]
    return count


# ------------------------------------------------------------------ launch


def test_launch_through_cli_shows_stages_and_ends_ready(daemon: E2EDaemon) -> None:
    assert daemon.live(A) is None
    lines, secs = _launch_json(daemon, A)
    record_timing("vLLM launch tiny-cpu via CLI (wall)", secs)

    stages = [
        ln["data"]
        for ln in lines
        if ln.get("type") == "event" and ln.get("kind") == "stage" and ln.get("data")
    ]
    names = [s["stage"] for s in stages]
    # process started → weights → KV cache/warmup → API server, in that order
    for wanted in ("started", "weights", "warmup", "api"):
        assert wanted in names, f"stage {wanted!r} missing from {names}"
    assert names.index("started") < names.index("weights") < names.index("warmup")
    assert names.index("warmup") < names.index("api")
    times = [s["t"] for s in stages]
    assert times == sorted(times), f"stage times go backwards: {stages}"
    labels = " | ".join(s["label"] for s in stages).lower()
    assert "weights" in labels and "kv cache" in labels and "api" in labels, labels

    result = lines[-1]
    assert result["type"] == "result", lines[-3:]
    assert result["state"] == "ready" and result["recipe"] == A
    assert result["served_name"] == "tiny" and result["gpus"] == [0]
    assert result["pid"] and result["port"]
    assert result["stages"]["ready"] >= result["stages"]["api"] > 0
    record_timing("vLLM launch tiny-cpu: ready after spawn", result["stages"]["ready"])

    # ps (the CLI) agrees; the recorded tree holds the server, engine core and worker.
    (row,) = [i for i in daemon.ps() if i["id"] == result["id"]]
    assert row["state"] == "ready" and row["pid"] == result["pid"] and row["restarts"] == 0
    procs = _tree(daemon, row["id"], "VLLM::EngineCore", "VLLM::Worker")
    assert row["pid"] in {p["pid"] for p in procs}
    assert psutil.Process(row["pid"]).environ().get("CUDA_VISIBLE_DEVICES") == GPUS[A]
    status, _ = http(result["url"] + "/health", timeout=5)
    assert status == 200


def test_completion_answered_by_engine_port(daemon: E2EDaemon) -> None:
    inst = _ready(daemon, A)
    prompt = "The quick brown fox jumps over"
    body = completion(inst["url"], "tiny", prompt, max_tokens=7)
    assert body["model"] == "tiny" and body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str) and choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 7  # ignore_eos: random weights may emit </s> early
    assert usage["prompt_tokens"] == _tokens(inst["url"], "tiny", prompt)
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7
    # An unknown model is the engine's own 404, not a hang or a crash.
    status, raw = http(inst["url"] + "/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404, raw[:300]
    assert daemon.instance(inst["id"])["state"] == "ready"


# ------------------------------------------------------------------ adoption


def test_daemon_sigkill_then_restart_adopts_the_engine(daemon: E2EDaemon) -> None:
    inst = _ready(daemon, A)
    procs = _tree(daemon, inst["id"], "VLLM::EngineCore", "VLLM::Worker")
    # (The recorded tree also keeps short-lived helpers that are gone by now.)
    tree = {(p["pid"], p["create_time"]) for p in procs if alive(p["pid"], p["create_time"])}
    daemon.kill9()
    # The engine outlives its daemon and keeps answering on its port.
    assert all(alive(pid, ct) for pid, ct in tree), [describe(p) for p, _ in tree]
    assert completion(inst["url"], "tiny", "still here?", max_tokens=2)["usage"]

    t0 = time.monotonic()
    daemon.start()
    (row,) = [i for i in daemon.ps() if i["id"] == inst["id"]]
    assert row["adopted"] is True
    assert row["pid"] == inst["pid"] and row["port"] == inst["port"]
    assert row["restarts"] == 0
    row = daemon.wait_state(inst["id"], "ready", timeout=30, bad={"crashed", "failed"})
    record_timing("vLLM adoption after daemon SIGKILL (to ready)", time.monotonic() - t0)
    answer = completion(row["url"], "tiny", "adopted", max_tokens=3)
    assert answer["usage"]["completion_tokens"] == 3
    assert {(p["pid"], p["create_time"]) for p in row["processes"]} >= tree
    # Still watched: a few health periods later it is ready, not crashed.
    time.sleep(2)
    assert daemon.instance(inst["id"])["state"] == "ready"


# ------------------------------------------------------------------ crash → restart


def test_worker_sigkill_is_a_crash_and_the_instance_restarts(daemon: E2EDaemon) -> None:
    inst = _ready(daemon, A)
    assert inst["restarts"] == 0, "this test counts restarts from zero"
    procs = _tree(daemon, inst["id"], "VLLM::EngineCore", "VLLM::Worker")
    worker = find_process(procs, "VLLM::Worker")
    core = find_process(procs, "VLLM::EngineCore")
    assert worker and core
    # The worker is the engine core's child, the core the API server's.
    assert psutil.Process(worker["pid"]).ppid() == core["pid"]
    assert psutil.Process(core["pid"]).ppid() == inst["pid"]
    old = {(p["pid"], p["create_time"]) for p in procs}

    t0 = time.monotonic()
    os.kill(worker["pid"], signal.SIGKILL)

    seen: list[str] = []

    def left_ready() -> str | None:
        st: str = daemon.instance(inst["id"])["state"]
        if not seen or seen[-1] != st:
            seen.append(st)
        return st if st != "ready" else None

    wait_for(left_ready, timeout=60, interval=0.2, what="the crash to be noticed")
    detect_s = time.monotonic() - t0
    record_timing("vLLM worker SIGKILL -> crash detected", detect_s)

    def restarted_ready() -> dict[str, Any] | None:
        cur = daemon.instance(inst["id"])
        if not seen or seen[-1] != cur["state"]:
            seen.append(cur["state"])
        assert cur["state"] != "failed", f"{cur['reason']}\n{daemon.engine_log(inst['id'])}"
        return cur if cur["state"] == "ready" and cur["restarts"] >= 1 else None

    wait_for(restarted_ready, timeout=LAUNCH_TIMEOUT, interval=0.5, what="the restart")
    record_timing("vLLM worker SIGKILL -> ready again (restart)", time.monotonic() - t0)
    assert "crashed" in seen, f"states seen: {seen}"

    # ps --json (the CLI): one restart, a new process, same port; the old tree is all gone.
    (row,) = [i for i in daemon.ps() if i["id"] == inst["id"]]
    assert row["state"] == "ready" and row["restarts"] == 1
    assert row["pid"] != inst["pid"] and row["port"] == inst["port"]
    still = [describe(pid) for pid, ct in old if alive(pid, ct)]
    assert not still, f"processes of the crashed tree survived: {still}"
    body = completion(row["url"], "tiny", "back again", max_tokens=4)
    assert body["usage"]["completion_tokens"] == 4

    with daemon.client() as c:
        events = [
            json.loads(line[6:])
            for line in c.stream_lines(
                "GET", "/events", params={"n": 500, "follow": "0", "instance": inst["id"]}
            )
            if line.startswith("data: ")
        ]
    kinds = [e["kind"] for e in events]
    assert "crash" in kinds and "restart_scheduled" in kinds, kinds
    assert kinds.index("crash") < kinds.index("restart_scheduled")


# ------------------------------------------------------------------ switch without a gap


@dataclass
class Prober:
    """Sends a completion every 0.5 s to whichever engine is routable.

    Routable: the new instance once it is ready (the daemon says so, or its /health answers
    200), else the old one — what a gateway does during a switch.
    """

    daemon: E2EDaemon
    old_url: str
    stop: threading.Event = field(default_factory=threading.Event)
    #: (sent at, answered at, served model, ok, error)
    results: list[tuple[float, float, str, bool, str]] = field(default_factory=list)

    def target(self) -> tuple[str, str]:
        new = self.daemon.live(B)
        if new is not None and (
            new["state"] == "ready" or http(new["url"] + "/health", timeout=1)[0] == 200
        ):
            return new["url"], SERVED[B]
        return self.old_url, SERVED[A]

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                url, model = self.target()
                completion(url, model, "ping", max_tokens=2)
                self.results.append((t, time.monotonic(), model, True, ""))
            except Exception as exc:  # every failure is a finding: keep it
                self.results.append((t, time.monotonic(), "?", False, repr(exc)[:300]))
            self.stop.wait(max(0.0, 0.5 - (time.monotonic() - t)))


def test_switch_with_disjoint_gpus_has_no_gap(daemon: E2EDaemon) -> None:
    src = _ready(daemon, A)
    assert src["gpus"] == [0]
    old = {(p["pid"], p["create_time"]) for p in _tree(daemon, src["id"], "VLLM::Worker")}
    target = _switch_target(daemon)
    prober = Prober(daemon, src["url"])
    thread = threading.Thread(target=prober.run, name="switch-prober", daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        out = daemon.cli_ok(
            "switch", A, target, "--gpus", GPUS[B], "--json", "--drain-timeout", "30",
            timeout=LAUNCH_TIMEOUT + 60,
        )  # fmt: skip
        wall = time.monotonic() - t0
        time.sleep(2.0)  # a few more requests, to the new engine only
    finally:
        prober.stop.set()
        thread.join(timeout=90)
    assert not thread.is_alive()

    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    rep = lines[-1]
    assert rep["type"] == "result", lines[-3:]
    assert rep["order"] == "launch-then-evict" and rep["shared_gpus"] == []
    assert rep["gap_s"] == 0.0
    assert rep["evict"]["leftover"] == [] and rep["evict"]["state"] == "stopped"
    new = rep["instance"]
    assert new["recipe"] == B and new["state"] == "ready" and new["gpus"] == [1]
    assert psutil.Process(new["pid"]).environ().get("CUDA_VISIBLE_DEVICES") == GPUS[B]
    record_timing("vLLM switch tiny-cpu -> tiny-cpu-b (wall)", wall)
    record_timing("vLLM switch: launch of the new one", rep["launch_s"])
    record_timing("vLLM switch: evict of the old one", rep["evict_s"])
    record_timing("vLLM switch: gap reported by the daemon", rep["gap_s"])

    failures = [r for r in prober.results if not r[3]]
    assert not failures, f"requests failed during the switch: {failures}"
    served = [r[2] for r in prober.results]
    assert SERVED[A] in served and SERVED[B] in served, served
    # Routing moved once, from the old engine to the new one, never back.
    first_b = served.index(SERVED[B])
    assert all(m == SERVED[B] for m in served[first_b:]), served
    answered = [r[1] for r in prober.results]
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    worst = max(gaps)
    record_timing("vLLM switch: longest time between answered requests", worst)
    record_timing("vLLM switch: requests answered while switching (count)", len(answered))
    record_timing("vLLM switch: slowest request", max(r[1] - r[0] for r in prober.results))
    # Requests are 0.5 s apart; one slow answer while the new engine loads may stretch it,
    # a gap in service (a refused or failed request) would show up as a failure above.
    assert worst < 20.0, gaps

    assert daemon.instance(src["id"])["state"] == "stopped"
    still = [describe(pid) for pid, ct in old if alive(pid, ct)]
    assert not still, f"processes of the switched-out instance survived: {still}"
    assert http(src["url"] + "/health", timeout=2)[0] == 0  # nothing answers there any more


# ------------------------------------------------------------------ evict


def test_evict_leaves_no_process_of_the_tree(daemon: E2EDaemon) -> None:
    inst = _ready(daemon, B)
    procs = _tree(daemon, inst["id"], "VLLM::EngineCore", "VLLM::Worker")
    recorded = {(p["pid"], p["create_time"]) for p in procs}
    core, worker = find_process(procs, "VLLM::EngineCore"), find_process(procs, "VLLM::Worker")
    assert core and worker
    # psutil's own view of the tree right now must disappear too (whatever the daemon saw).
    root = psutil.Process(inst["pid"])
    live_tree = {(p.pid, p.create_time()) for p in [root, *root.children(recursive=True)]}
    assert {core["pid"], worker["pid"]} <= {pid for pid, _ in live_tree}

    t0 = time.monotonic()
    rep = json.loads(daemon.cli_ok("evict", B, "--json", "--drain-timeout", "10"))
    record_timing("vLLM evict tiny-cpu-b", time.monotonic() - t0)
    assert rep["state"] == "stopped" and rep["leftover"] == []
    assert rep["drained"] is True and "SIGTERM" in rep["signals"]
    reported = {p["pid"]: p["how"] for p in rep["processes"]}
    assert {inst["pid"], core["pid"], worker["pid"]} <= set(reported), rep["processes"]

    left = [describe(pid) for pid, ct in recorded | live_tree if alive(pid, ct)]
    assert not left, f"processes of the evicted tree remain: {left}"
    (row,) = [i for i in daemon.ps() if i["id"] == inst["id"]]
    assert row["state"] == "stopped"
    assert http(inst["url"] + "/health", timeout=2)[0] == 0
