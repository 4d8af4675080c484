"""``studioctl.lifecycle.demand``: the scheduler's view of the daemon, table-driven: which
waiting requests are the scheduler's, which instances hold memory and how much, the
catalog's needs and on-demand flags, the groups of the policy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from studioctl.lifecycle import demand
from studioctl.recipes import Recipe
from studioctl.settings import load_settings
from studioctl.states import State

GIB = 1024**3


def recipe(rid: str, **kw: Any) -> Recipe:
    return Recipe.model_validate(
        {"id": rid, "backend": "vllm", "model": "org/none", "served_model_name": rid, **kw}
    )


@dataclass
class Inst:
    id: str
    recipe: Recipe
    state: State
    gpus: list[int] = field(default_factory=list)
    ready_at: float | None = None
    vram_bytes: int | None = None


def catalog(*recipes: Recipe, load_on_demand: bool = True) -> demand.Catalog:
    return demand.build_catalog(
        recipes,
        load_on_demand=load_on_demand,
        capacity={0: 10.0},
        has_gpus=False,
        learned_gb=lambda r: 3.0 if r.id == "learned" else None,
    )


def test_catalog_names_needs_and_on_demand() -> None:
    c = catalog(
        recipe("a", vram_gb=4, aliases=["alias"]),
        recipe("learned"),
        recipe("unknown", on_demand=False),
    )
    assert c.names == {"a": "a", "alias": "a", "learned": "learned", "unknown": "unknown"}
    assert [c.loadables[r].vram_gb for r in ("a", "learned", "unknown")] == [4.0, 3.0, 10.0]
    assert [c.needs[r].source for r in ("a", "learned", "unknown")] == [
        "recipe",
        "learned",
        "unknown",
    ]
    assert (c.on_demand("alias"), c.on_demand("unknown"), c.on_demand("nope")) == ("a", None, None)
    off = catalog(recipe("a"), recipe("b", on_demand=True), load_on_demand=False)
    assert (off.on_demand("a"), off.on_demand("b")) == (None, "b")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"model": "alias", "queue": "loading", "waited_ms": 1500.0}, ("a", 98.5)),
        ({"model": "a", "queue": "busy", "waited_ms": 0.0}, None),  # parked for a slot
        ({"model": "ghost", "queue": "loading", "waited_ms": 0.0}, None),  # no recipe
    ],
)
def test_waiting_keeps_requests_that_wait_for_a_recipe(
    row: dict[str, Any], expected: tuple[str, float] | None
) -> None:
    listing = {"data": [{"request_id": "q-1", "tenant": "t", **row}]}
    found = demand.waiting(listing, {"a": "a", "alias": "a"}, now=100.0)
    if expected is None:
        assert found == []
    else:
        [q] = found
        assert (q.model, q.enqueued_at) == (expected[0], pytest.approx(expected[1]))


def test_residents_states_memory_and_leaving() -> None:
    a, b = recipe("a", vram_gb=4), recipe("pinned", vram_gb=2, pinned=True)
    other = recipe("sent-by-client")
    c = catalog(a, b)
    instances = [
        Inst("a-1", a, State.READY, ready_at=5.0),
        Inst("a-0", a, State.FAILED),  # holds nothing
        Inst("p-1", b, State.CRASHED),  # restarts: counted as arriving
        Inst("x-1", other, State.LOADING, vram_bytes=3 * GIB),
        Inst("x-2", other, State.STARTING),
    ]
    found = demand.residents(
        instances,  # the fields of lifecycle.runtime.Instance it reads
        c,
        {0: 10.0},
        inflight=lambda iid: 2 if iid == "a-1" else 0,
        last_activity=lambda iid: 7.0 if iid == "a-1" else None,
        leaving=["a-1"],
    )
    got = {r.instance_id: (r.state, r.vram_gb, r.inflight, r.pinned) for r in found}
    assert got == {
        "a-1": ("draining", 4.0, 2, False),  # being evicted: planned once
        "p-1": ("starting", 2.0, 0, True),
        "x-1": ("loading", 3.0, 0, False),  # measured
        "x-2": ("starting", 10.0, 0, False),  # nothing known: the whole GPU
    }
    assert found[0].last_used == 7.0 and found[0].ready_at == 5.0


def test_policy_groups_join_listed_members_and_recipes_naming_them() -> None:
    settings = load_settings(
        env={
            "STUDIOCTL_SCHEDULER_GROUPS": '{"big": {"members": ["a"], "exclusive": false}}',
            "STUDIOCTL_SCHEDULER_MAX_WAIT_S": "9",
            "STUDIOCTL_GATEWAY_DRAIN_TIMEOUT_S": "4",
        }
    )
    p = demand.policy(settings, [recipe("a"), recipe("b", group="big"), recipe("c")])
    [g] = p.groups
    assert (g.name, g.members, g.swap, g.exclusive) == ("big", frozenset({"a", "b"}), True, False)
    assert (p.max_wait_s, p.drain_timeout_s) == (9.0, 4.0)
    assert p.group_of("c") is None and not math.isinf(p.min_resident_s)
