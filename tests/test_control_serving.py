"""``control.serving.with_queued``: the gateway's queued requests per model name, shown on
the instance they wait for (``studioctl ps``'s QUEUED), and a row of their own for a model
whose requests wait with no instance yet; and ``ps``'s table with both."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from studioctl.control.serving import Serving, with_queued
from studioctl.states import State


def inst(iid: str, rid: str, state: State, names: tuple[str, ...]) -> Any:
    recipe = SimpleNamespace(id=rid, model_names=list(names))
    return SimpleNamespace(
        id=iid,
        recipe=recipe,
        state=state,
        to_dict=lambda now: {"id": iid, "recipe": rid, "state": str(state)},
    )


def test_queued_requests_go_to_the_instance_they_wait_for_or_to_a_row_of_their_own() -> None:
    instances = [
        inst("a-1", "a", State.DRAINING, ("a", "alias-a")),  # leaving: the new one is awaited
        inst("a-2", "a", State.LOADING, ("a", "alias-a")),
        inst("b-1", "b", State.READY, ("b",)),
        inst("old-1", "c", State.STOPPED, ("c",)),  # ps --all: stopped serves nothing
    ]
    counts = {"a": 3, "alias-a": 2, "b": 1, "c": 4, "cold": 5, "": 7}
    known = {"c": "c", "cold": "cold-recipe"}
    rows, queued = with_queued(instances, Serving(lambda: counts, known.get), 0.0)
    assert [(r["id"], r["queued"]) for r in rows] == [
        ("a-1", 0),
        ("a-2", 5),
        ("b-1", 1),
        ("old-1", 0),
    ]
    assert queued == [
        {"model": "a", "recipe": "a", "instance": "a-2", "queued": 3},
        {"model": "alias-a", "recipe": "a", "instance": "a-2", "queued": 2},
        {"model": "b", "recipe": "b", "instance": "b-1", "queued": 1},
        {"model": "c", "recipe": "c", "instance": None, "queued": 4},
        {"model": "cold", "recipe": "cold-recipe", "instance": None, "queued": 5},
    ]  # requests parked for a gateway slot ("" : no model named) are not a model's


def test_without_the_gateway_nothing_is_queued() -> None:
    rows, queued = with_queued([inst("a-1", "a", State.READY, ("a",))], Serving(), 0.0)
    assert rows[0]["queued"] == 0 and queued == []


def test_ps_table_has_a_queued_column_and_a_row_per_model_loading_requested(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from studioctl.cli.readouts import PS_HEADERS, instance_rows
    from studioctl.ui import table

    info: Any = {
        "id": "a-1",
        "recipe": "a",
        "backend": "vllm",
        "model": "org/a",
        "pid": 10,
        "port": 8100,
        "state": "loading",
        "queued": 5,
        "uptime_s": None,
        "restarts": 0,
        "gpus": [0],
        "vram_bytes": None,
    }
    waiting: Any = [
        {"model": "a", "recipe": "a", "instance": "a-1", "queued": 5},
        {"model": "cold", "recipe": "cold-recipe", "instance": None, "queued": 2},
    ]
    table(instance_rows([info], waiting), PS_HEADERS)
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].lower().split()
    assert header[6:8] == ["state", "queued"]
    body = [ln.split() for ln in lines[1:] if ln.strip() and not set(ln.strip()) <= {"-", " "}]
    assert body[0][:8] == ["a-1", "a", "vllm", "org/a", "10", "8100", "loading", "5"]
    assert body[1][:8] == ["-", "cold-recipe", "-", "cold", "-", "-", "requested", "2"]
    assert len(body) == 2
