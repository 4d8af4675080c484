"""Crash handling and adoption with a real daemon and the engine stand-in: crash → restart
with backoff → failed after the crash budget, health-probe failures, the ``never`` policy,
a daemon killed with SIGKILL and restarted (live engines adopted, dead ones restarted), and
``ps --all`` / ``adopt`` for a server studioctl did not start."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon_helpers import Daemon, alive, running_daemon
from helpers import wait_for
from standin.helpers import group_pids, http_status, kill_group, start_standin

pytestmark = pytest.mark.integration


def transitions(d: Daemon, iid: str) -> list[tuple[str, str, str]]:
    return [
        (e["data"]["from"], e["data"]["to"], e["data"]["reason"])
        for e in d.events(instance=iid)
        if e["kind"] == "state"
    ]


def survivors(procs: list[dict[str, Any]]) -> list[int]:
    return [p["pid"] for p in procs if alive(p["pid"], p["create_time"])]


def crash_via_http(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server dies mid-request
        httpx.post(f"{url}/standin/crash", timeout=5)


def test_crash_restarts_with_backoff_and_keeps_the_log() -> None:
    with running_daemon() as d:
        d.recipe("phoenix")
        first = d.launch("phoenix")
        iid = first["id"]

        crash_via_http(first["url"])
        second = d.wait_instance(iid, lambda i: i["restarts"] == 1 and i["state"] == "ready")
        assert second["pid"] != first["pid"]
        assert survivors(first["processes"]) == []
        assert http_status(f"{second['url']}/health") == 200

        # kill -9 of the engine's pid: the same again, one backoff step longer.
        os.kill(second["pid"], signal.SIGKILL)
        third = d.wait_instance(iid, lambda i: i["restarts"] == 2 and i["state"] == "ready")
        assert third["pid"] not in (first["pid"], second["pid"])
        assert survivors(second["processes"]) == []

        # kill -9 of the engine's worker (its child): the server exits, as vLLM's does.
        child = next(p for p in third["processes"] if p["pid"] != third["pid"])
        os.kill(child["pid"], signal.SIGKILL)
        fourth = d.wait_instance(iid, lambda i: i["restarts"] == 3 and i["state"] == "ready")
        assert survivors(third["processes"]) == []

        steps = transitions(d, iid)
        crashes = [t for t in steps if t[1] == "crashed"]
        assert [c[0] for c in crashes] == ["ready", "ready", "ready"]
        assert crashes[0][2] == "exited with code 1"
        assert crashes[1][2] == "exited with code -9"
        assert crashes[2][2] == "exited with code 1"
        assert [t[2] for t in steps if t[:2] == ("crashed", "starting")] == [
            "restart 1",
            "restart 2",
            "restart 3",
        ]
        assert steps[-1][1] == "ready"
        events = d.events(instance=iid)
        delays = [e["data"]["delay_s"] for e in events if e["kind"] == "restart_scheduled"]
        # STUDIOCTL_DAEMON_RESTART_BACKOFF_S doubled, capped at ..._BACKOFF_MAX_S (2).
        assert delays == [0.5, 1.0, 2.0]
        assert sum(e["kind"] == "crash" for e in events) == 3

        # One log, all four runs, each behind a studioctl marker.
        log = Path(fourth["log_path"]).read_text()
        assert log.count("=== studioctl: launch of phoenix") == 1
        for n in (1, 2, 3):
            assert log.count(f"=== studioctl: restart {n} of phoenix") == 1
        assert "POST /standin/crash: exiting with code 1" in log
        assert log.count("Application startup complete.") == 4
        assert log.index("restart 1 of") < log.index("restart 2 of") < log.index("restart 3 of")


def test_crash_loop_fails_after_the_budget() -> None:
    with running_daemon({"STUDIOCTL_DAEMON_CRASH_BUDGET": "3"}) as d:
        d.recipe("looper", env={"STANDIN_MODE": "crash_after:0.3"})
        inst = d.launch("looper")
        failed = d.wait_state(inst["id"], "failed", timeout=30)
        assert failed["restarts"] == 2
        assert "crash loop: 3 crashes" in failed["reason"]
        assert "budget 3" in failed["reason"]
        events = d.events(instance=inst["id"])
        assert sum(e["kind"] == "crash" for e in events) == 3
        delays = [e["data"]["delay_s"] for e in events if e["kind"] == "restart_scheduled"]
        assert delays == [0.5, 1.0]
        assert survivors(failed["processes"]) == []
        # Failed stays failed: no more restarts.
        time.sleep(1.5)
        still = d.instance(inst["id"])
        assert still["state"] == "failed" and still["restarts"] == 2
        assert transitions(d, inst["id"])[-1][:2] == ("crashed", "failed")


def test_health_failures_count_as_a_crash() -> None:
    with running_daemon() as d:
        d.recipe("sickly", env={"STANDIN_MODE": "unhealthy_after:0.5"})
        inst = d.launch("sickly")
        events = wait_for_events(d, inst["id"], lambda es: any(e["kind"] == "crash" for e in es))
        crashed = [e for e in events if e["kind"] in ("crash", "ready")]
        ready_ts = next(e["ts"] for e in crashed if e["kind"] == "ready")
        crash = next(e for e in crashed if e["kind"] == "crash")
        assert crash["message"] == f"{inst['id']}: crashed: health probe failed 3 times in a row"
        # Three failed probes 0.3 s apart, all after the daemon saw it ready (the engine turns
        # unhealthy 0.5 s after its own ready, which a loaded daemon may see late: not counted).
        assert crash["ts"] - ready_ts >= 2 * 0.3 - 0.05
        # The process was still running (only /health failed): the crash handling killed it
        # and the policy (on-failure by default) restarted it.
        restarted = d.wait_instance(inst["id"], lambda i: i["restarts"] >= 1)
        assert restarted["pid"] != inst["pid"]
        assert survivors(inst["processes"]) == []


def wait_for_events(
    d: Daemon, iid: str, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
) -> list[dict[str, Any]]:
    def matched() -> list[dict[str, Any]] | None:
        events = d.events(instance=iid)
        return events if pred(events) else None

    return wait_for(matched, timeout=timeout, interval=0.2, what=f"{iid}'s events")


def test_restart_policy_never_fails() -> None:
    with running_daemon() as d:
        d.recipe("once", restart="never")
        inst = d.launch("once")
        crash_via_http(inst["url"])
        failed = d.wait_state(inst["id"], "failed", timeout=15)
        assert failed["restarts"] == 0
        assert failed["reason"] == "restart policy is 'never'"
        assert transitions(d, inst["id"])[-2:] == [
            ("ready", "crashed", "exited with code 1"),
            ("crashed", "failed", "restart policy is 'never'"),
        ]
        assert survivors(failed["processes"]) == []
        time.sleep(1.0)
        assert d.instance(inst["id"])["restarts"] == 0


def test_daemon_sigkill_then_restart_adopts_live_and_restarts_dead() -> None:
    with running_daemon() as d:
        d.recipe("keep")
        d.recipe("lost")
        keep = d.launch("keep")
        lost = d.launch("lost")
        d.remember()
        daemon_pid = d.proc.pid if d.proc else None
        d.kill9()
        # The engines live on without their daemon.
        assert http_status(f"{keep['url']}/health") == 200
        assert http_status(f"{lost['url']}/health") == 200
        # One of them dies while nobody watches.
        os.killpg(lost["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while survivors(lost["processes"]) or group_pids(lost["pid"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        d.start()
        assert d.proc is not None and d.proc.pid != daemon_pid
        adopted = d.wait_state(keep["id"], "ready", timeout=10)
        assert adopted["pid"] == keep["pid"]
        assert adopted["adopted"] is True
        assert adopted["restarts"] == 0
        adopt_events = [e for e in d.events(instance=keep["id"]) if e["kind"] == "adopt"]
        assert len(adopt_events) == 1
        assert f"adopted pid {keep['pid']}" in adopt_events[0]["message"]

        back = d.wait_instance(lost["id"], lambda i: i["state"] == "ready" and i["restarts"] == 1)
        assert back["pid"] != lost["pid"]
        assert ("ready", "crashed", "process gone while the daemon was down") in transitions(
            d, lost["id"]
        )

        # The adopted instance is watched again: its crash is noticed and handled.
        os.kill(keep["pid"], signal.SIGKILL)
        again = d.wait_instance(keep["id"], lambda i: i["state"] == "ready" and i["restarts"] == 1)
        assert again["pid"] != keep["pid"]
        assert survivors(keep["processes"]) == []


def test_ps_all_lists_a_foreign_server_and_adopt_takes_it_over(tmp_path: Path) -> None:
    with running_daemon() as d:
        d.recipe("outsider")
        standin = start_standin(
            "vllm", tmp_path / "outsider.log", served_name="outsider", STANDIN_STARTUP_S=0.1
        )
        try:
            standin.wait_ready()
            foreign = d.cli_json("ps", "--all", "--json")["foreign"]
            mine = [f for f in foreign if f["pid"] == standin.pid]
            assert len(mine) == 1, foreign
            assert mine[0]["backend"] == "vllm"
            assert mine[0]["port"] == standin.port
            assert mine[0]["managed"] is False
            # Its engine child is part of it, not a server of its own.
            children = set(standin.group_pids()) - {standin.pid}
            assert children and not children & {f["pid"] for f in foreign}
            text = d.cli("ps", "--all")
            assert text.returncode == 0
            assert "not managed by studioctl" in text.stdout
            assert str(standin.pid) in text.stdout

            out = d.cli_json("adopt", str(standin.pid), "--recipe", "outsider", "--json")
            d.track(out)
            assert out["id"] == "outsider-1"
            assert out["foreign"] is True and out["adopted"] is True
            assert out["pid"] == standin.pid and out["port"] == standin.port
            assert out["log_path"] == str(tmp_path / "outsider.log")
            inst = d.wait_state("outsider-1", "ready", timeout=10)
            assert {p["pid"] for p in inst["processes"]} >= {standin.pid, *children}
            foreign = d.cli_json("ps", "--all", "--json")["foreign"]
            assert standin.pid not in {f["pid"] for f in foreign}
            # Adopting it twice is refused.
            r = d.cli("adopt", str(standin.pid), "--recipe", "outsider")
            assert r.returncode == 5
            assert f"pid {standin.pid} already belongs to outsider-1" in r.stderr

            rep = d.cli_json("evict", "outsider-1", "--json")
            assert rep["state"] == "stopped"
            standin.proc.wait(10)
            assert group_pids(standin.pid) == []
        finally:
            kill_group(standin.proc)
