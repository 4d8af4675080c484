"""Group rules (llama-swap's swap / exclusive / persistent) and memory shares per GPU, as
tables. The groups come from a real settings file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from studioctl.lifecycle.memory import Need, fits, free_after, need_by_gpu
from studioctl.lifecycle.placement import GroupRules
from studioctl.settings import load_settings

SETTINGS = """\
scheduler:
  groups:
    solo:            # the llama-swap default: one at a time, evicts every other group
      members: [a, b]
    pack:            # run together, leave others alone
      members: [c, d]
      swap: false
      exclusive: false
    forever:         # never evicted by other groups
      members: [e]
      persistent: true
      swap: false
      exclusive: false
    swapper:         # swap among themselves only
      members: [f, g]
      exclusive: false
"""


@pytest.fixture
def rules(tmp_path: Path) -> GroupRules:
    path = tmp_path / "studioctl.yaml"
    path.write_text(SETTINGS, encoding="utf-8")
    groups = load_settings(file=path, env={}).scheduler.groups
    return GroupRules(groups, {"h": "pack", "x": None})  # h joins pack by its group key


@pytest.mark.parametrize(
    ("target", "running", "leave"),
    [
        ("a", ["b"], ["b"]),  # solo swaps
        ("a", ["c", "d"], ["c", "d"]),  # and is exclusive
        ("a", ["e"], []),  # but forever is persistent
        ("a", ["x"], ["x"]),  # models in no group are "other groups" too
        ("a", ["a"], []),  # itself: nothing
        ("c", ["d", "h"], []),  # pack runs together (h is in it by its own key)
        ("c", ["a", "e", "x"], []),  # and does not evict others
        ("f", ["g", "a"], ["g"]),  # swapper: its own group only
        ("e", ["a", "c"], []),  # forever evicts nobody
        ("x", ["a", "c", "e"], []),  # no group: memory decides
        ("a", ["b", "c", "e", "x", "b"], ["b", "c", "x"]),  # in order, once each
    ],
)
def test_must_leave_table(
    rules: GroupRules, target: str, running: list[str], leave: list[str]
) -> None:
    assert rules.must_leave(target, running) == leave


def test_group_of(rules: GroupRules) -> None:
    names = {rid: (g.name if (g := rules.group_of(rid)) else None) for rid in "ahxz"}
    assert names == {"a": "solo", "h": "pack", "x": None, "z": None}


CAP2 = {0: 80.0, 1: 80.0}


@pytest.mark.parametrize(
    ("need", "gpus", "capacity", "share"),
    [
        (Need(20.0, "recipe", 1), [], CAP2, {0: 20.0}),  # no gpus: rank 0 on device 0
        (Need(20.0, "recipe", 1), [1], CAP2, {1: 20.0}),
        (Need(40.0, "recipe", 2), [], CAP2, {0: 20.0, 1: 20.0}),
        (Need(40.0, "recipe", 2), [1, 0], CAP2, {0: 20.0, 1: 20.0}),
        (Need(None, "unknown", 1), [1], CAP2, {1: 80.0}),  # unknown: the whole GPU
        (Need(3.0, "estimate", 1), [], {0: 12.0}, {0: 3.0}),  # the pseudo GPU of a CPU host
        (Need(3.0, "estimate", 2), [], {0: 12.0}, {0: 3.0}),  # two ranks, one pseudo GPU
        (Need(None, "unknown", 1), [], {0: math.inf}, {0: math.inf}),
    ],
)
def test_need_by_gpu_table(
    need: Need, gpus: list[int], capacity: dict[int, float], share: dict[int, float]
) -> None:
    assert need_by_gpu(need, gpus, capacity) == share


def test_free_after_and_fits() -> None:
    a = need_by_gpu(Need(60.0, "learned", 1), [0], CAP2)
    b = need_by_gpu(Need(30.0, "recipe", 1), [0], CAP2)
    left = free_after(CAP2, [a])
    assert left == {0: 20.0, 1: 80.0}
    assert not fits(b, left)  # 30 on GPU 0, 20 left
    assert fits(need_by_gpu(Need(30.0, "recipe", 1), [1], CAP2), left)
    assert free_after(CAP2, [a, a]) == {0: 0.0, 1: 80.0}  # never below 0
    unlimited = {0: math.inf}
    assert fits(need_by_gpu(Need(500.0, "recipe", 1), [], unlimited), free_after(unlimited, [b]))
