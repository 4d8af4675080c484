"""The control API's request models (``studioctl.api.models``): what the client sends is what
the daemon reads, and a wrong field is a UsageError naming it (exit 2, HTTP 400), from the
same checks on both sides. The daemon-level drive of every route is
tests/gateway_daemon/test_admin_fuzz.py."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, JsonValue

from studioctl.api import models as M
from studioctl.errors import EXIT_USAGE, UsageError


@pytest.mark.parametrize(
    "req",
    [
        M.LaunchRequest(recipe="tiny", port=8001, gpus=[0, 1], timeout=30.0, stream=True),
        M.LaunchRequest(recipe_file=M.SentFile(path="/r/tiny.yaml", text="backend: vllm\n")),
        M.EvictRequest(drain_timeout=5.0, force=True),
        M.SwitchRequest.model_validate({"from": "tiny-1", "to": "big", "gpus": "0,1"}),
        M.AdoptRequest(pid=1234, recipe="tiny", port=8000),
        M.ShutdownRequest(stop_engines=True),
        M.TenantCreate(name="acme", overrides={"rpm": 10}, allowed_models=["tiny"]),
        M.TenantPatch(enabled=False),
        M.RotateKey(grace_s=60.0),
        M.RevokeKey(tenant="acme"),
    ],
    ids=lambda r: type(r).__name__,
)
def test_what_the_client_sends_the_daemon_reads_back(req: BaseModel) -> None:
    sent = M.body(req)
    assert M.parse(type(req), sent) == req
    assert None not in sent.values()  # absent, not null: the daemon's defaults apply


@pytest.mark.parametrize(
    ("model", "data", "param"),
    [
        (M.LaunchRequest, {"recipe": "x", "port": 0}, "port"),
        (M.LaunchRequest, {"recipe": "x", "port": True}, "port"),
        (M.LaunchRequest, {"recipe": "x", "timeout": math.nan}, "timeout"),
        (M.LaunchRequest, {"recipe": "x", "gpus": "0,a"}, "gpus"),
        (M.LaunchRequest, {"recipe": "x\0y"}, "recipe"),
        (M.LaunchRequest, {"recipe_file": {"path": "/a.yaml"}}, "recipe_file"),
        (M.SwitchRequest, {"to": "b"}, "from"),
        (M.AdoptRequest, {"recipe": "x"}, "pid"),
        (M.TenantCreate, {"name": "a", "overrides": [1]}, "overrides"),
        (M.TenantPatch, {"enabled": 1}, "enabled"),
        (M.RotateKey, {"grace_s": -1}, "grace_s"),
    ],
)
def test_a_wrong_field_is_a_usage_error_naming_it(
    model: type[BaseModel], data: dict[str, JsonValue], param: str
) -> None:
    with pytest.raises(UsageError) as info:
        M.parse(model, data)
    assert info.value.details["param"] == param
    assert info.value.message.startswith(f"{param} ")
    assert info.value.exit_code == EXIT_USAGE


def test_null_is_not_given() -> None:
    req = M.parse(M.EvictRequest, {"drain_timeout": None, "grace": None, "force": None})
    assert (req.drain_timeout, req.grace, req.force) == (30.0, 15.0, False)
