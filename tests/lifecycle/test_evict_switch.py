"""``studioctl evict`` and ``switch`` against a real daemon and the engine stand-in: draining
in-flight requests, the drain timeout, SIGTERM→SIGKILL escalation, the whole process tree
gone afterwards, switch in both orders, and operations refused while another runs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import psutil
import pytest

from daemon_helpers import Daemon, alive, json_lines
from helpers import free_port
from standin.helpers import group_pids, http_status
from studioctl.errors import EXIT_CONFLICT, EXIT_ENGINE_FAILED

pytestmark = pytest.mark.integration


def survivors(procs: list[dict[str, Any]]) -> list[int]:
    return [p["pid"] for p in procs if alive(p["pid"], p["create_time"])]


def cli_bg(d: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "studioctl", *args],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Streamer(threading.Thread):
    """A streaming completion against the engine's own port, read chunk by chunk."""

    def __init__(self, url: str, model: str, max_tokens: int, key: str | None) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.started = threading.Event()
        self.pieces: list[str] = []
        self.done = False
        self.done_at: float | None = None
        self.error: BaseException | None = None
        self.cancel = threading.Event()  # set: hang up (the engine ends the request)

    def run(self) -> None:
        body = {"model": self.model, "prompt": "hi", "max_tokens": self.max_tokens, "stream": True}
        try:
            with httpx.stream(
                "POST",
                f"{self.url}/v1/completions",
                json=body,
                headers=self.headers,  # the engine's own key: it refuses /v1 without it
                timeout=60,
            ) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if self.cancel.is_set():
                        return
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        self.done = True
                        self.done_at = time.time()
                        continue
                    self.pieces.extend(c["text"] for c in json.loads(line[6:])["choices"])
                    self.started.set()
        except BaseException as exc:  # the server going away mid-stream is the point
            self.error = exc
        finally:
            self.started.set()


def start_stream(d: Daemon, inst: dict[str, Any], max_tokens: int) -> Streamer:
    s = Streamer(inst["url"], inst["served_name"], max_tokens, d.engine_key(inst["id"]))
    s.start()
    assert s.started.wait(10), "the stream did not start"
    assert s.error is None, s.error
    return s


# --------------------------------------------------------------------------- evict


def test_evict_waits_for_the_request_in_flight(d: Daemon) -> None:
    d.recipe("drain", env={"STANDIN_TOKEN_DELAY_S": "0.1"})
    inst = d.launch("drain")
    stream = start_stream(d, inst, max_tokens=40)  # ~4 s of tokens
    rep = d.cli_json("evict", "drain", "--drain-timeout", "30", "--json")
    stream.join(10)
    assert rep["drained"] is True
    assert rep["state_before"] == "ready" and rep["state"] == "stopped"
    assert rep["signals"] == ["SIGTERM"]
    # The request completed: every token and [DONE], no error.
    assert stream.error is None, stream.error
    assert stream.done and stream.done_at is not None
    assert len(stream.pieces) == 40
    # ...and it was still in flight when the drain began: the evict waited for it, and
    # stopped the engine only after it was done.
    events = d.events(instance=inst["id"])
    draining = next(
        e["ts"] for e in events if e["kind"] == "state" and e["data"]["to"] == "draining"
    )
    stopping = next(
        e["ts"] for e in events if e["kind"] == "state" and e["data"]["to"] == "stopping"
    )
    # (0.2 s: the client thread may read [DONE] a moment after the engine counted it done)
    assert draining < stream.done_at <= stopping + 0.2
    assert rep["drain_s"] >= stream.done_at - draining - 0.2
    assert survivors(inst["processes"]) == []
    assert d.instance(inst["id"])["state"] == "stopped"


def test_drain_timeout_exceeded_stops_anyway(d: Daemon) -> None:
    d.recipe("drain-slow", env={"STANDIN_TOKEN_DELAY_S": "0.5"})
    inst = d.launch("drain-slow")
    stream = start_stream(d, inst, max_tokens=60)  # ~30 s: far past the drain timeout
    t0 = time.monotonic()
    rep = d.cli_json("evict", "drain-slow", "--drain-timeout", "1", "--grace", "5", "--json")
    elapsed = time.monotonic() - t0
    stream.join(10)
    assert not stream.is_alive()
    assert rep["drained"] is False
    assert 1.0 <= rep["drain_s"] < 6.0  # the drain timeout, not the 30 s of tokens
    assert elapsed < 15.0
    assert rep["state"] == "stopped"
    assert not stream.done and len(stream.pieces) < 60  # cut off by the stop
    assert survivors(inst["processes"]) == []


def test_evict_force_skips_draining(d: Daemon) -> None:
    d.recipe("forced", env={"STANDIN_TOKEN_DELAY_S": "0.5"})
    inst = d.launch("forced")
    stream = start_stream(d, inst, max_tokens=60)
    rep = d.cli_json("evict", "forced", "--force", "--json")
    stream.join(10)
    assert rep["drained"] is None
    assert "drain_s" not in rep
    assert rep["seconds"] < 5.0
    assert rep["state"] == "stopped"
    assert not stream.done


def test_term_then_kill_escalation(d: Daemon) -> None:
    d.recipe("stubborn", env={"STANDIN_MODE": "ignore_sigterm"})
    inst = d.launch("stubborn")
    recorded = d.instance(inst["id"])["processes"]
    assert len(recorded) >= 2
    rep = d.cli_json("evict", "stubborn", "--grace", "1", "--json")
    assert rep["signals"] == ["SIGTERM", "SIGKILL"]
    assert 1.0 <= rep["seconds"] < 6.0
    assert rep["leftover"] == []
    assert rep["state"] == "stopped"
    how = {p["pid"]: p["how"] for p in rep["processes"]}
    assert {p["pid"] for p in recorded} <= set(how)
    assert set(how.values()) == {"SIGKILL"}
    assert survivors(recorded) == []
    assert group_pids(inst["pid"]) == []
    # The plain report says it too.
    text = d.events(instance=inst["id"])
    assert any(e["kind"] == "evict" and "SIGKILL" in e["message"] for e in text)


def test_no_process_left_behind(d: Daemon) -> None:
    d.recipe("tree")
    inst = d.launch("tree")
    recorded = d.instance(inst["id"])["processes"]
    names = {p["pid"]: psutil.Process(p["pid"]).name() for p in recorded}
    assert any(n.startswith("VLLM::EngineCor") for n in names.values()), names
    r = d.cli("evict", "tree")
    assert r.returncode == 0, r.stderr
    assert "tree-1: stopped" in r.stdout
    assert "SIGTERM" in r.stdout
    for p in recorded:  # each recorded process is listed with how it ended
        assert f"pid {p['pid']:>7}" in r.stdout
    assert survivors(recorded) == []
    assert group_pids(inst["pid"]) == []
    after = d.instance(inst["id"])
    assert after["state"] == "stopped"
    assert {p["pid"] for p in after["processes"]} >= {p["pid"] for p in recorded}
    # Evicting it again is not an error: it says so.
    r = d.cli("evict", inst["id"])
    assert r.returncode == 0
    assert "tree-1 is already stopped" in r.stdout


def test_leaked_worker_is_killed(d: Daemon) -> None:
    # A worker that ignores SIGTERM and does not watch its parent: the classic GPU leak.
    d.recipe("leaky", env={"STANDIN_CHILD": "linger"})
    inst = d.launch("leaky")
    recorded = d.instance(inst["id"])["processes"]
    child = next(p for p in recorded if p["pid"] != inst["pid"])
    rep = d.cli_json("evict", "leaky", "--grace", "1", "--json")
    how = {p["pid"]: p["how"] for p in rep["processes"]}
    assert how[inst["pid"]] == "SIGTERM"
    assert how[child["pid"]] == "SIGKILL"
    assert rep["signals"] == ["SIGTERM", "SIGKILL"]
    assert rep["leftover"] == [] and rep["state"] == "stopped"
    assert survivors(recorded) == []


def test_concurrent_ops_refused_while_an_evict_drains(d: Daemon) -> None:
    d.recipe("busy", env={"STANDIN_TOKEN_DELAY_S": "0.2"})
    inst = d.launch("busy")
    # ~60 s of tokens: the evict drains until the client hangs up below, however slowly
    # the checks in between run on a loaded machine.
    stream = start_stream(d, inst, max_tokens=300)
    first = cli_bg(d, "evict", "busy", "--drain-timeout", "60", "--json")
    try:
        d.wait_state(inst["id"], "draining", timeout=10)
        r = d.cli("evict", "busy")
        assert r.returncode == EXIT_CONFLICT, r.stderr
        assert "evict busy-1 is in progress" in r.stderr
        assert "--wait" in r.stderr  # the hint
        r = d.cli("launch", "busy")
        assert r.returncode == EXIT_CONFLICT
        assert "evict busy-1 is in progress" in r.stderr
        st = d.cli_json("status", "--json")
        assert [op["operation"] for op in st["operations"]] == ["evict busy-1"]
        assert first.poll() is None  # still draining
        stream.cancel.set()  # the request ends: nothing in flight, the drain is over
        out, err = first.communicate(timeout=30)
    finally:
        stream.cancel.set()
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, err
    rep = json.loads(out)
    assert rep["drained"] is True and rep["state"] == "stopped"
    stream.join(10)
    assert not stream.done and stream.error is None


def test_evict_during_launch_fails_the_launch(d: Daemon) -> None:
    d.recipe("cut-short", env={"STANDIN_STARTUP_S": "20"})  # evicted long before that
    launching = cli_bg(d, "launch", "cut-short")
    try:
        inst = d.wait_state("cut-short-1", "starting", "loading", timeout=15)
        rep = d.cli_json("evict", "cut-short", "--json")
        _, err = launching.communicate(timeout=30)
    finally:
        if launching.poll() is None:
            launching.kill()
            launching.wait(10)
    assert rep["state_before"] in ("starting", "loading")
    assert rep["state"] == "stopped" and rep["drained"] is None
    assert launching.returncode == EXIT_ENGINE_FAILED, err
    assert "cut-short-1 was evicted before it was ready" in err
    assert survivors(d.instance(inst["id"])["processes"]) == []


# --------------------------------------------------------------------------- switch


class Sampler(threading.Thread):
    """Polls /health of two engines; records moments when neither answered 200."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stop = threading.Event()
        self.samples = 0
        self.gaps: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            if all(http_status(f"{u}/health", timeout=3.0) != 200 for u in self.urls):
                self.gaps.append(time.monotonic())
            self.samples += 1
            time.sleep(0.02)


def test_switch_disjoint_gpus_launches_first(d: Daemon) -> None:
    d.recipe("sw-a", gpus=[10])
    b_port = free_port()
    d.recipe("sw-b", gpus=[11], port=b_port)
    a = d.launch("sw-a")
    sampler = Sampler([a["url"], f"http://127.0.0.1:{b_port}"])
    sampler.start()
    try:
        r = d.cli("switch", "sw-a", "sw-b", "--json")
    finally:
        sampler.stop.set()
        sampler.join(5)
    assert r.returncode == 0, r.stderr
    lines = json_lines(r.stdout)
    rep = lines[-1]
    assert rep["type"] == "result"
    d.track(rep["instance"])
    assert rep["order"] == "launch-then-evict"
    assert rep["shared_gpus"] == []
    assert rep["gap_s"] == 0.0
    assert rep["launch_s"] > 0 and rep["evict_s"] > 0
    assert rep["from"] == "sw-a-1"
    assert rep["evict"]["state"] == "stopped"
    new = rep["instance"]
    assert new["recipe"] == "sw-b" and new["state"] == "ready" and new["port"] == b_port
    # Order from the streamed events: the new one was ready before the old one drained.
    events = [m for m in lines[:-1] if m["type"] == "event"]
    ready_b = next(i for i, m in enumerate(events) if m["kind"] == "ready")
    drain_a = next(
        i
        for i, m in enumerate(events)
        if m["kind"] == "state" and m["instance_id"] == "sw-a-1" and m["data"]["to"] == "draining"
    )
    assert events[ready_b]["instance_id"] == new["id"]
    assert ready_b < drain_a
    # No moment without a server answering.
    assert sampler.samples > 10
    assert sampler.gaps == []
    assert survivors(a["processes"]) == []
    assert d.instance("sw-a-1")["state"] == "stopped"
    assert d.instance(new["id"])["state"] == "ready"
    assert http_status(f"{new['url']}/health") == 200


def test_switch_overlapping_gpus_evicts_first(d: Daemon) -> None:
    d.recipe("sw-c", gpus=[12])
    d.recipe("sw-d", gpus=[12, 13])
    c = d.launch("sw-c")
    r = d.cli("switch", "sw-c", "sw-d", "--json")
    assert r.returncode == 0, r.stderr
    lines = json_lines(r.stdout)
    rep = lines[-1]
    d.track(rep["instance"])
    assert rep["order"] == "evict-then-launch"
    assert rep["shared_gpus"] == [12]
    assert rep["gap_s"] > 0
    assert rep["evict"]["state"] == "stopped"
    assert rep["instance"]["state"] == "ready" and rep["instance"]["gpus"] == [12, 13]
    events = [m for m in lines[:-1] if m["type"] == "event"]
    stopped_c = next(
        i
        for i, m in enumerate(events)
        if m["kind"] == "state" and m["instance_id"] == "sw-c-1" and m["data"]["to"] == "stopped"
    )
    launch_d = next(i for i, m in enumerate(events) if m["kind"] == "launch")
    assert events[launch_d]["recipe_id"] == "sw-d"
    assert stopped_c < launch_d
    assert survivors(c["processes"]) == []
    assert d.instance("sw-c-1")["state"] == "stopped"


def test_operations_refused_while_a_switch_runs(d: Daemon) -> None:
    d.recipe("sw-e", gpus=[14], env={"STANDIN_TOKEN_DELAY_S": "0.2"})
    d.recipe("sw-f", gpus=[15])
    e = d.launch("sw-e")
    # A long request on the old instance: the switch holds its lock while it drains, until
    # the client hangs up below (the checks in between may be slow on a loaded machine).
    stream = start_stream(d, e, max_tokens=300)
    sw = cli_bg(d, "switch", "sw-e", "sw-f", "--drain-timeout", "60", "--json")
    try:
        deadline = time.monotonic() + 15
        while not any(i["recipe"] == "sw-f" for i in d.instances()):
            assert time.monotonic() < deadline, "the switch did not start sw-f"
            assert sw.poll() is None, sw.communicate()
            time.sleep(0.1)
        r = d.cli("launch", "sw-f")
        assert r.returncode == EXIT_CONFLICT, r.stderr
        assert "switch sw-e-1 -> sw-f is in progress" in r.stderr
        r = d.cli("evict", "sw-e")
        assert r.returncode == EXIT_CONFLICT, r.stderr
        assert "switch sw-e-1 -> sw-f is in progress" in r.stderr
        assert sw.poll() is None
        stream.cancel.set()
        out, err = sw.communicate(timeout=30)
    finally:
        stream.cancel.set()
        if sw.poll() is None:
            sw.kill()
            sw.wait(10)
    assert sw.returncode == 0, err
    rep = json_lines(out)[-1]
    d.track(rep["instance"])
    assert rep["order"] == "launch-then-evict"
    assert rep["instance"]["state"] == "ready"
    assert rep["evict"]["drained"] is True and rep["evict"]["state"] == "stopped"


def test_switch_to_a_broken_recipe_keeps_the_old_one(d: Daemon) -> None:
    d.recipe("sw-g", gpus=[16])
    d.recipe("sw-broken", gpus=[17], env={"STANDIN_MODE": "crash_at_start"})
    g = d.launch("sw-g")
    r = d.cli("switch", "sw-g", "sw-broken")
    assert r.returncode == EXIT_ENGINE_FAILED, r.stderr
    assert "sw-broken-1 (vllm) exited with code 3 before it was ready" in r.stderr
    # Launch-then-evict: the old instance was never touched and still serves.
    still = d.instance("sw-g-1")
    assert still["state"] == "ready" and still["pid"] == g["pid"]
    assert http_status(f"{g['url']}/health") == 200
    assert not any(e["kind"] == "evict" for e in d.events(instance="sw-g-1"))
    assert d.instance("sw-broken-1")["state"] == "failed"
