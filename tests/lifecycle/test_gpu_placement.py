"""Two engines on one GPU, through a real daemon that sees 1, 2 or 4 GPUs.

The daemon gets the NVML fake from ``tests/fakes/nvml_site`` (its ``sitecustomize`` puts
``fake_pynvml.gpus(N)`` in place of pynvml when ``STUDIOCTL_TEST_FAKE_GPUS=N``), so placement
reads N GPUs through the same ``studioctl.gpu`` code a real host runs. The engines are
stand-ins (they allocate no GPU memory; what is checked is the daemon's decision).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_helpers import REPO, Daemon, json_lines, running_daemon

pytestmark = pytest.mark.integration

NVML_SITE = Path(__file__).resolve().parent.parent / "fakes" / "nvml_site"


def gpu_daemon(n: int) -> Iterator[Daemon]:
    env = {
        "STUDIOCTL_TEST_FAKE_GPUS": str(n),
        "PYTHONPATH": os.pathsep.join([str(NVML_SITE), str(REPO / "src"), str(REPO)]),
    }
    with running_daemon(env) as d:
        yield d


@pytest.fixture(scope="module")
def one_gpu() -> Iterator[Daemon]:
    yield from gpu_daemon(1)


@pytest.fixture(scope="module")
def two_gpus() -> Iterator[Daemon]:
    yield from gpu_daemon(2)


@pytest.fixture(scope="module")
def four_gpus() -> Iterator[Daemon]:
    yield from gpu_daemon(4)


def refused(d: Daemon, *args: str) -> str:
    """Run a CLI command that must be refused with exit 5; return its stderr."""
    r = d.cli(*args)
    assert r.returncode == 5, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stderr


def test_one_gpu_a_second_engine_is_refused_unless_forced(one_gpu: Daemon) -> None:
    d = one_gpu
    try:
        # Neither recipe names GPUs: on a one-GPU host both would load onto GPU 0.
        d.recipe("solo-a")
        d.recipe("solo-b")
        a = d.launch("solo-a")
        assert a["gpus"] == []
        err = refused(d, "launch", "solo-b")
        assert "GPU 0 is held by solo-a-1 (recipe solo-a)" in err
        assert "--force" in err
        assert [i["recipe"] for i in d.instances(include_stopped=False)] == ["solo-a"]
        # --dry-run says the same, and starts nothing.
        dry = d.cli_json("launch", "solo-b", "--dry-run", "--json")
        assert dry["gpus"] == [0] and dry["visible_gpus"] == 1
        assert dry["conflicts"] == [{"instance": "solo-a-1", "recipe": "solo-a", "gpus": [0]}]
        # The operator insists: both run.
        b = d.launch("solo-b", "--force")
        assert b["state"] == "ready"
        states = {i["recipe"]: i["state"] for i in d.instances(include_stopped=False)}
        assert states == {"solo-a": "ready", "solo-b": "ready"}
    finally:
        d.evict_all()


def test_one_gpu_switch_evicts_first(one_gpu: Daemon) -> None:
    d = one_gpu
    try:
        d.recipe("sw1-a")
        d.recipe("sw1-b")
        d.launch("sw1-a")
        r = d.cli("switch", "sw1-a", "sw1-b", "--json")
        assert r.returncode == 0, r.stderr
        rep = json_lines(r.stdout)[-1]
        d.track(rep["instance"])
        # Before, two empty lists never overlapped: the new engine started beside the old.
        assert rep["order"] == "evict-then-launch"
        assert rep["shared_gpus"] == [0]
        assert rep["evict"]["state"] == "stopped" and rep["instance"]["state"] == "ready"
    finally:
        d.evict_all()


def test_two_gpus_switch_order_follows_the_gpus(two_gpus: Daemon) -> None:
    d = two_gpus
    try:
        d.recipe("two-all")  # no gpus: both GPUs
        d.recipe("two-0", gpus=[0])
        d.recipe("two-1", gpus=[1])
        d.launch("two-0")
        assert "GPU 0 is held by two-0-1" in refused(d, "launch", "two-all")
        # Another GPU: launched beside it, then the old one evicted (no gap in service).
        r = d.cli("switch", "two-0", "two-1", "--json")
        assert r.returncode == 0, r.stderr
        rep = json_lines(r.stdout)[-1]
        d.track(rep["instance"])
        assert rep["order"] == "launch-then-evict" and rep["shared_gpus"] == []
        # From one GPU to all of them: they share GPU 1, so the old one goes first.
        r = d.cli("switch", "two-1", "two-all", "--json")
        assert r.returncode == 0, r.stderr
        rep = json_lines(r.stdout)[-1]
        d.track(rep["instance"])
        assert rep["order"] == "evict-then-launch" and rep["shared_gpus"] == [1]
    finally:
        d.evict_all()


def test_four_gpus_disjoint_engines_run_side_by_side(four_gpus: Daemon) -> None:
    d = four_gpus
    try:
        d.recipe("four-01", gpus=[0, 1])
        d.recipe("four-23", gpus=[2, 3])
        d.recipe("four-2", gpus=[2])
        d.recipe("four-all")
        d.launch("four-01")
        d.launch("four-23")
        err = refused(d, "launch", "four-all")
        assert "GPU 0,1 is held by four-01-1 (recipe four-01)" in err
        assert "GPU 2 is held by four-23-1 (recipe four-23)" in refused(d, "launch", "four-2")
        # A switch whose new engine would land on a third instance's GPU is refused before
        # the old one is touched.
        assert "GPU 2 is held by four-23-1" in refused(d, "switch", "four-01", "four-2")
        states = {i["id"]: i["state"] for i in d.instances(include_stopped=False)}
        assert states == {"four-01-1": "ready", "four-23-1": "ready"}
    finally:
        d.evict_all()
