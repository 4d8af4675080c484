"""The on-demand, scheduler and host settings: defaults, environment, file errors (with the
line of the key inside a group), and llama-swap's group rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studioctl.errors import ConfigError
from studioctl.settings import Group, Settings, all_keys, load_settings


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("STUDIOCTL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def from_file(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "studioctl.yaml"
    path.write_text(text, encoding="utf-8")
    return load_settings(file=path, env={})


def test_defaults() -> None:
    s = load_settings(env={})
    g = s.gateway
    assert (g.load_on_demand, g.queue_depth, g.queue_timeout_s, g.queue_when_busy) == (
        True,
        64,
        300.0,
        False,
    )
    assert (s.scheduler.max_wait_s, s.scheduler.min_resident_s, s.scheduler.groups) == (
        30.0,
        10.0,
        (),
    )
    assert s.host.capacity_gb is None
    assert s.scheduler.policy == "fair"
    new = {
        "gateway.load_on_demand",
        "gateway.queue_depth",
        "gateway.queue_timeout_s",
        "gateway.queue_when_busy",
        "scheduler.max_wait_s",
        "scheduler.min_resident_s",
        "scheduler.groups",
        "scheduler.policy",
        "host.capacity_gb",
    }
    assert new <= set(all_keys())
    assert s.to_dict()["scheduler"]["groups"] == {}
    assert s.to_dict()["host"] == {"capacity_gb": None}


def test_environment() -> None:
    s = load_settings(
        env={
            "STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "off",
            "STUDIOCTL_GATEWAY_QUEUE_DEPTH": "0",
            "STUDIOCTL_GATEWAY_QUEUE_TIMEOUT_S": "2.5",
            "STUDIOCTL_GATEWAY_QUEUE_WHEN_BUSY": "yes",
            "STUDIOCTL_SCHEDULER_MAX_WAIT_S": "5",
            "STUDIOCTL_SCHEDULER_MIN_RESIDENT_S": "0",
            "STUDIOCTL_SCHEDULER_GROUPS": '{"big": {"members": ["a", "b"], "swap": false}}',
            "STUDIOCTL_HOST_CAPACITY_GB": "24",
            "STUDIOCTL_SCHEDULER_POLICY": "fifo",
        }
    )
    assert s.scheduler.policy == "fifo"
    assert s.sources["scheduler.policy"] == "env:STUDIOCTL_SCHEDULER_POLICY"
    assert (s.gateway.load_on_demand, s.gateway.queue_depth) == (False, 0)
    assert (s.gateway.queue_timeout_s, s.gateway.queue_when_busy) == (2.5, True)
    assert (s.scheduler.max_wait_s, s.scheduler.min_resident_s) == (5.0, 0.0)
    assert s.scheduler.groups == (Group("big", ("a", "b"), swap=False),)
    assert s.host.capacity_gb == 24.0
    assert s.sources["scheduler.groups"] == "env:STUDIOCTL_SCHEDULER_GROUPS"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("STUDIOCTL_GATEWAY_QUEUE_DEPTH", "10001", "between 0 and 10000"),
        ("STUDIOCTL_GATEWAY_QUEUE_TIMEOUT_S", "0", "greater than 0"),
        ("STUDIOCTL_GATEWAY_QUEUE_WHEN_BUSY", "maybe", "true or false"),
        ("STUDIOCTL_SCHEDULER_MIN_RESIDENT_S", "-1", "of at least 0"),
        ("STUDIOCTL_HOST_CAPACITY_GB", "0", "greater than 0"),
        ("STUDIOCTL_HOST_CAPACITY_GB", "lots", "must be a number"),
        ("STUDIOCTL_SCHEDULER_GROUPS", "big", "must be JSON"),
        ("STUDIOCTL_HOST_CAPACITY", "1", "unknown setting variable"),
        ("STUDIOCTL_SCHEDULER_POLICY", "lru", "must be one of 'fair', 'fifo', got 'lru'"),
        ("STUDIOCTL_SCHEDULER_POLICY", "FIFO", "must be one of 'fair', 'fifo'"),
    ],
)
def test_bad_environment_values(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={name: value})
    assert err.value.key == name
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("gateway:\n  queue_dept: 3\n", 2, "gateway.queue_dept", "did you mean 'queue_depth'"),
        ("scheduler:\n  max_wait: 3\n", 2, "scheduler.max_wait", "did you mean 'max_wait_s'"),
        ("host:\n  capacity_gb: '12'\n", 2, "host.capacity_gb", "must be a number"),
        ("hosts:\n  capacity_gb: 1\n", 1, "hosts", "did you mean 'host'"),
        ("scheduler:\n  policy: lifo\n", 2, "scheduler.policy", "one of 'fair', 'fifo'"),
        ("scheduler:\n  policy: 1\n", 2, "scheduler.policy", "got a number (1)"),
        ("scheduler:\n  polcy: fifo\n", 2, "scheduler.polcy", "did you mean 'policy'"),
        ("scheduler:\n  groups: [a, b]\n", 2, "scheduler.groups", "must be a mapping"),
        (
            "scheduler:\n  groups:\n    big:\n      members: [a]\n      exclusiv: true\n",
            5,
            "scheduler.groups.big.exclusiv",
            "unknown key (did you mean 'exclusive'?)",
        ),
        (
            "scheduler:\n  groups:\n    big:\n      swap: true\n",
            3,
            "scheduler.groups.big",
            "members is required",
        ),
        (
            "scheduler:\n  groups:\n    big:\n      members: [a, 3]\n",
            4,
            "scheduler.groups.big.members[1]",
            "must be a recipe id",
        ),
        (
            "scheduler:\n  groups:\n    big:\n      members: a\n",
            4,
            "scheduler.groups.big.members",
            "must be a list",
        ),
        (
            "scheduler:\n  groups:\n    big:\n      members: [a]\n      persistent: 1\n",
            5,
            "scheduler.groups.big.persistent",
            "true or false",
        ),
        (
            "scheduler:\n  groups:\n    big:\n      members: [a]\n"
            "    small:\n      members: [b, a]\n",
            6,
            "scheduler.groups.small.members[1]",
            "already in group 'big'",
        ),
        (
            "scheduler:\n  groups:\n    big: true\n",
            3,
            "scheduler.groups.big",
            "must be a mapping with members",
        ),
    ],
)
def test_file_errors_name_file_line_and_key(
    text: str, line: int, key: str, words: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        from_file(tmp_path, text)
    assert err.value.file == str(tmp_path / "studioctl.yaml")
    assert (err.value.line, err.value.key) == (line, key)
    assert words in str(err.value)


def test_groups_follow_llama_swap_defaults(tmp_path: Path) -> None:
    s = from_file(
        tmp_path,
        "scheduler:\n"
        "  groups:\n"
        "    one-at-a-time:\n"
        "      members: [a, b]\n"
        "    together:\n"
        "      members: [c, d]\n"
        "      swap: false\n"
        "      exclusive: false\n"
        "    forever:\n"
        "      members: [e]\n"
        "      persistent: true\n",
    )
    sched = s.scheduler
    assert sched.group_names() == ["one-at-a-time", "together", "forever"]
    assert sched.group("one-at-a-time") == Group("one-at-a-time", ("a", "b"), True, True, False)
    assert sched.group("together") == Group("together", ("c", "d"), False, False, False)
    assert sched.group("forever") == Group("forever", ("e",), True, True, True)
    assert sched.group("nope") is None
    assert s.to_dict()["scheduler"]["groups"]["together"] == {
        "members": ["c", "d"],
        "swap": False,
        "exclusive": False,
        "persistent": False,
    }
    # A settings object holding groups is still hashable and comparable (frozen).
    assert hash(sched) == hash(sched) and sched == sched
