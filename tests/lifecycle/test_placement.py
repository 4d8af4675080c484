"""Placement as a table: resident instances' GPUs + the new engine's + the host's GPU count
(read through the NVML fake) → who is in the way. Also the bind address of an engine."""

from __future__ import annotations

import pytest

from fakes import fake_pynvml
from studioctl import gpu
from studioctl.lifecycle.placement import (
    Conflict,
    Resident,
    bind_host,
    conflicts,
    gpu_set,
    placed,
)
from studioctl.recipes import Recipe

A = Resident("a-1", "a", ())  # a recipe without gpus: every visible GPU
B0 = Resident("b-1", "b", (0,))
C1 = Resident("c-1", "c", (1,))
D23 = Resident("d-1", "d", (2, 3))


def visible(n: int | None) -> int:
    """The host's GPU count as the daemon reads it: NVML (the fake), None = no driver."""
    fake = fake_pynvml.no_driver() if n is None else fake_pynvml.gpus(n)
    with gpu.Nvml(module=fake) as nvml:
        return nvml.device_count()


@pytest.mark.parametrize(
    ("gpus", "residents", "new", "expected"),
    [
        # No GPU on the host (this machine): an empty list uses none, so conflicts nobody.
        (None, [A], [], []),
        (None, [B0], [], []),
        (None, [B0], [0], [("b-1", (0,))]),  # explicit lists still compare, as before
        # One GPU: two engines that both name no GPUs are on the same one.
        (1, [A], [], [("a-1", (0,))]),
        (1, [A], [0], [("a-1", (0,))]),
        (1, [B0], [], [("b-1", (0,))]),
        # Two GPUs.
        (2, [A], [1], [("a-1", (1,))]),
        (2, [B0], [1], []),
        (2, [B0], [], [("b-1", (0,))]),
        (2, [B0, C1], [], [("b-1", (0,)), ("c-1", (1,))]),
        (2, [B0, C1], [0, 1], [("b-1", (0,)), ("c-1", (1,))]),
        # Four GPUs.
        (4, [B0, C1], [2, 3], []),
        (4, [D23], [], [("d-1", (2, 3))]),
        (4, [D23], [1, 2], [("d-1", (2,))]),
        (4, [A], [3], [("a-1", (3,))]),
        (4, [A, D23], [], [("a-1", (0, 1, 2, 3)), ("d-1", (2, 3))]),
        (4, [], [], []),
    ],
)
def test_conflicts_table(
    gpus: int | None,
    residents: list[Resident],
    new: list[int],
    expected: list[tuple[str, tuple[int, ...]]],
) -> None:
    found = conflicts(residents, new, visible(gpus))
    assert [(c.instance_id, c.gpus) for c in found] == expected


@pytest.mark.parametrize(("n", "count"), [(None, 0), (0, 0), (1, 1), (2, 2), (4, 4)])
def test_visible_gpus_come_from_nvml(n: int | None, count: int) -> None:
    assert visible(n) == count
    assert gpu_set([], visible(n)) == frozenset(range(count))
    assert gpu_set([7], visible(n)) == frozenset({7})  # a named GPU is taken as named


def test_device_count_goes_through_the_make_nvml_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml.gpus(4)
    monkeypatch.setattr(gpu, "make_nvml", lambda: gpu.Nvml(module=fake))
    assert gpu.device_count() == 4
    assert fake.shutdown_calls == 1  # NVML is not left initialised by a one-off count


def test_the_message_names_the_instance_and_the_gpu() -> None:
    assert Conflict("b-1", "b", (0,), False).message() == "GPU 0 is held by b-1 (recipe b)"
    text = Conflict("a-1", "a", (0, 1), True).message()
    assert text.startswith("GPU 0,1 is held by a-1 (recipe a)")
    assert "names no gpus" in text


@pytest.mark.parametrize(
    ("recipe_host", "setting", "expected"),
    [
        (None, "127.0.0.1", "127.0.0.1"),
        (None, "10.0.0.5", "10.0.0.5"),  # engines.host: the default bind address
        ("0.0.0.0", "10.0.0.5", "0.0.0.0"),  # the recipe's own host wins
        ("127.0.0.1", "10.0.0.5", "127.0.0.1"),  # even when it is the built-in default
    ],
)
def test_bind_host(recipe_host: str | None, setting: str, expected: str) -> None:
    data = {"id": "r", "backend": "vllm", "model": "m"}
    if recipe_host is not None:
        data["host"] = recipe_host
    recipe = Recipe.model_validate(data)
    assert bind_host(recipe, setting) == expected
    out = placed(recipe, setting)
    assert out.host == expected
    # Stored as launched: a restart or an adoption (the recipe read back) keeps the address.
    assert Recipe.model_validate_json(out.model_dump_json()).host == expected
