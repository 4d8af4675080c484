"""Hostile requests through the real daemon (its SQLite usage store, its /metrics): a tenant's
abuse is refused, bounded, counted against its own limits, and leaves nothing held.

Bounded: a few dozen requests to 127.0.0.1, each answered at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from daemon_helpers import REPO, Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    chat,
    create_tenant,
    gateway_daemon,
    launch,
    request,
    usage_rows,
    wait_usage,
)
from studioctl.gateway.body import MAX_MODEL_CHARS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# The daemon runs this checkout's code (daemon_helpers sets PYTHONPATH to the repository root
# only, under which the installed package, wherever it is, would be imported).
_ENV = {"PYTHONPATH": os.pathsep.join((str(REPO / "src"), str(REPO)))}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon({"alpha": {}}, admin_token=ADMIN_TOKEN, env=_ENV) as d:
        launch(d, "alpha")
        yield d


def test_long_model_names_are_refused_unstored_and_unlabelled(daemon: Daemon) -> None:
    tenant, key = create_tenant(daemon, "longnames", "--rpm", "1000", "--max-concurrent", "2")
    long_name = "q" * (256 * 1024)
    for _ in range(10):
        err = assert_error(chat(daemon, key, long_name), 400, "invalid_request")
        assert str(MAX_MODEL_CHARS) in err["message"] and "qqqq" not in err["message"]
    t0 = time.monotonic()
    assert chat(daemon, key, "alpha").status_code == 200
    assert time.monotonic() - t0 < 5.0
    wait_usage(daemon, 11, tenant="longnames")
    rows = usage_rows(daemon, tenant=tenant["id"])
    assert (
        sorted((r.model, r.error_code) for r in rows if r.status == 400)
        == [(None, "invalid_request")] * 10
    )
    metrics = request(daemon, "GET", "/metrics", headers={"X-Admin-Token": ADMIN_TOKEN}).text
    assert "qqqq" not in metrics
    assert len(metrics) < 200_000


def test_invented_models_spend_the_tenants_rpm(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "inventor", "--rpm", "5")
    codes = [chat(daemon, key, f"invented-{i}").json()["error"]["code"] for i in range(8)]
    assert codes == ["model_not_found"] * 5 + ["limit_rpm"] * 3
    assert_error(chat(daemon, key, "alpha"), 429, "limit_rpm")


def test_a_deep_body_leaves_the_tenants_one_slot_free(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "deep", "--max-concurrent", "1", "--rpm", "1000")
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    for _ in range(3):  # no max_tokens: the gateway re-writes the body
        r = chat(daemon, key, "alpha", max_tokens=None, metadata=deep)
        assert_error(r, 400, "invalid_json")
    assert chat(daemon, key, "alpha").status_code == 200
