"""RouteTable: model name → instance, the 404/503 answers, in-flight counts, /v1/models."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from studioctl.errors import GatewayError
from studioctl.gateway.routing import LOADING_RETRY_AFTER_S, RouteTable, Upstream


def up(
    iid: str = "i-1",
    state: str = "ready",
    names: tuple[str, ...] = ("llama", "llama-alias"),
    recipe: str = "llama-recipe",
    port: int = 18000,
) -> Upstream:
    return Upstream(iid, recipe, "127.0.0.1", port, state, names)


def refused(table: RouteTable, model: str) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        table.resolve(model)
    return info.value


def test_ready_instance_is_resolved_by_served_name_and_alias() -> None:
    table = RouteTable()
    u = up()
    table.update([u], {"llama": "llama-recipe"})
    assert table.resolve("llama") is u
    assert table.resolve("llama-alias") is u
    assert u.base_url == "http://127.0.0.1:18000"


def test_ipv6_host_is_bracketed_in_the_base_url() -> None:
    u = Upstream("i", "r", "::1", 18001, "ready", ("m",))
    assert u.base_url == "http://[::1]:18001"


def test_unknown_model_is_404_model_not_found() -> None:
    table = RouteTable()
    table.update([up()], {"llama": "llama-recipe"})
    err = refused(table, "gpt-9")
    assert (err.http_status, err.code) == (404, "model_not_found")
    assert "gpt-9" in err.message
    assert err.details["param"] == "model"
    assert err.retry_after is None


def test_known_recipe_not_running_is_503_with_launch_hint() -> None:
    table = RouteTable()
    table.update([], {"qwen": "qwen-recipe"})
    err = refused(table, "qwen")
    assert (err.http_status, err.code) == (503, "model_not_running")
    assert err.hint == "studioctl launch qwen-recipe"
    assert err.to_dict()["hint"] == "studioctl launch qwen-recipe"


@pytest.mark.parametrize("state", ["starting", "loading", "draining"])
def test_pending_states_are_503_model_loading_with_retry_after(state: str) -> None:
    table = RouteTable()
    table.update([up(state=state)], {"llama": "llama-recipe"})
    err = refused(table, "llama")
    assert (err.http_status, err.code) == (503, "model_loading")
    assert err.retry_after == LOADING_RETRY_AFTER_S
    assert state in err.message


@pytest.mark.parametrize("state", ["stopped", "crashed", "failed", "stopping"])
def test_dead_instances_of_a_known_recipe_are_not_running(state: str) -> None:
    table = RouteTable()
    table.update([up(state=state)], {"llama": "llama-recipe"})
    assert refused(table, "llama").code == "model_not_running"


def test_ready_wins_over_a_draining_instance_of_the_same_model() -> None:
    table = RouteTable()
    old, new = up("old", state="draining"), up("new", port=18001)
    table.update([old, new], {})
    assert table.resolve("llama") is new


def test_several_ready_instances_pick_the_least_busy() -> None:
    table = RouteTable()
    a, b = up("a"), up("b", port=18001)
    table.update([a, b], {})
    table.begin("a")
    table.begin("a")
    table.begin("b")
    assert table.resolve("llama") is b
    table.end("a")
    table.end("a")
    assert table.resolve("llama") is a


def test_update_replaces_the_whole_table() -> None:
    table = RouteTable()
    table.update([up()], {"llama": "llama-recipe"})
    table.update([up("i-2", names=("qwen",), recipe="qwen-recipe")], {"qwen": "qwen-recipe"})
    assert refused(table, "llama").code == "model_not_found"
    assert table.resolve("qwen").instance_id == "i-2"


def test_inflight_counts_per_instance_and_in_total() -> None:
    table = RouteTable()
    table.update([up("a"), up("b", port=18001)], {})
    for iid in ("a", "a", "b"):
        table.begin(iid)
    assert (table.inflight("a"), table.inflight("b"), table.inflight()) == (2, 1, 3)
    table.end("a")
    table.end("b")
    table.end("b")  # never below zero
    assert (table.inflight("a"), table.inflight("b"), table.inflight()) == (1, 0, 1)
    assert table.inflight("unknown") == 0


def test_last_used_is_when_the_last_request_ended() -> None:
    table = RouteTable()
    table.update([up("a")], {})
    assert table.last_used("a") is None
    table.begin("a")
    assert table.last_used("a") is None  # a request in flight is not an end
    before = time.time()
    table.end("a")
    after = time.time()
    used = table.last_used("a")
    assert used is not None and before <= used <= after


def test_models_lists_ready_then_pending_then_on_demand_recipes_available() -> None:
    table = RouteTable()
    table.recipes_changed(
        {"llama": "llama-recipe", "qwen": "qwen-recipe", "phi": "phi-recipe", "mix": "mix-r"},
        on_demand={"phi-recipe", "qwen-recipe"},
    )
    table.update(
        [up(), up("i-2", state="loading", names=("qwen",), recipe="qwen-recipe")],
        {"llama": "llama-recipe", "qwen": "qwen-recipe", "phi": "phi-recipe", "mix": "mix-r"},
    )
    models = table.models()
    by_id = {m["id"]: m for m in models}
    # mix-r is not loaded on demand and not running: a request for it is refused, so it
    # is not offered; qwen loads on demand but is loading: its instance's state wins.
    assert [m["id"] for m in models] == ["llama", "llama-alias", "qwen", "phi"]
    assert by_id["llama"]["studioctl"] == {
        "state": "ready",
        "recipe": "llama-recipe",
        "instance": "i-1",
    }
    assert by_id["qwen"]["studioctl"]["state"] == "loading"
    assert by_id["phi"] == {
        "id": "phi",
        "object": "model",
        "created": by_id["phi"]["created"],
        "owned_by": "studioctl",
        "studioctl": {"state": "available", "recipe": "phi-recipe", "instance": None},
    }
    assert refused(table, "mix").code == "model_not_running"


@pytest.mark.parametrize("state", ["starting", "loading", "draining"])
def test_models_shows_a_pending_instance_state(state: str) -> None:
    table = RouteTable()
    table.recipes_changed({"llama": "llama-recipe"}, on_demand={"llama-recipe"})
    table.instances_changed([_instance("i-9", state, ("llama",))])
    (entry,) = table.models()
    assert entry["studioctl"] == {"state": state, "recipe": "i-9-recipe", "instance": "i-9"}


def test_models_is_built_on_change_not_per_call() -> None:
    table = RouteTable()
    table.recipes_changed({"a": "ra", "b": "rb"}, on_demand={"ra"})
    first = table.models()
    assert table.models() is first  # the same list: nothing is built per request
    assert [m["id"] for m in first] == ["a"]
    table.update([up("i-1", names=("b",), recipe="rb")], {"a": "ra", "b": "rb"})
    second = table.models()
    assert second is not first
    assert [(m["id"], m["studioctl"]["state"]) for m in second] == [
        ("b", "ready"),
        ("a", "available"),
    ]
    # An on-demand recipe that is no longer on disk leaves the list with the next scan.
    table.recipes_changed({"b": "rb"})
    assert [m["id"] for m in table.models()] == ["b"]


def test_metrics_lines_parse_as_prometheus_text() -> None:
    table = RouteTable()
    table.update([up('we"ird'), up("b", state="loading", port=18001)], {})
    table.begin('we"ird')
    families = {f.name: f for f in text_string_to_metric_families(table.metrics_lines())}
    states = {
        (s.labels["instance"], s.labels["state"]) for s in families["studioctl_instance_up"].samples
    }
    assert states == {('we"ird', "ready"), ("b", "loading")}
    inflight = {
        s.labels["instance"]: s.value for s in families["studioctl_instance_inflight"].samples
    }
    assert inflight == {'we"ird': 1.0, "b": 0.0}


# -- instances pushed by the supervisor (RouteTable.instances_changed, GatewayHooksSource) ----


def _instance(iid: str, state: str, names: tuple[str, ...], host: str = "0.0.0.0") -> Any:
    recipe = SimpleNamespace(id=f"{iid}-recipe", model_names=names, served_name=names[0])
    return SimpleNamespace(
        id=iid, recipe=recipe, host=host, port=18001, state=state, api_key="k-1",
        started_at=None, ready_at=None,
    )  # fmt: skip


def test_instances_changed_routes_live_instances_and_keeps_stopped_names_known() -> None:
    from studioctl.gateway.wiring import GatewayHooksSource

    table = RouteTable()
    table.recipes_changed({"on-disk": "disk-recipe"})
    hooks = GatewayHooksSource(table)
    hooks.instances_changed(
        [_instance("a", "ready", ("alpha", "alpha-alias")), _instance("b", "stopped", ("beta",))]
    )
    got = table.resolve("alpha-alias")
    assert (got.instance_id, got.host, got.engine_names, got.api_key) == (
        "a",
        "127.0.0.1",  # a wildcard bind is reached on loopback
        ("alpha",),
        "k-1",
    )
    assert refused(table, "beta").code == "model_not_running"  # stopped: known, not served
    assert refused(table, "on-disk").code == "model_not_running"
    assert [u.instance_id for u in table.upstreams()] == ["a"]
    # The recipes rescanned later keep the instances; the in-flight counts feed the hooks.
    table.recipes_changed({})
    assert table.resolve("alpha").instance_id == "a"
    table.begin("a")
    assert hooks.inflight("a") == 1 and hooks.last_activity("a") is None
    table.end("a")
    assert hooks.inflight("a") == 0 and hooks.last_activity("a") is not None
