"""Every 429 and 503 of the README's error table, provoked for real through a daemon, carries
a positive whole-seconds Retry-After, computed where it can be (issue 13, item 6).

The codes come from ``retry_after_codes.DAEMON_CODES`` (the README parse and the check that
every 429/503 code is provoked somewhere are in ``tests/gateway/test_retry_after.py``); each
has its provocation below, and a test asserts the two lists are the same. The daemon has no
admin token: tenants are made on the control socket, and ``/admin`` on TCP is the real 503
``admin_unavailable``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    LOOPBACK,
    assert_error,
    chat,
    gateway_daemon,
    launch,
    request,
    retry_after,
)
from retry_after_codes import DAEMON_CODES
from studioctl.errors import RETRY_AFTER_S

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MAX_CONNECTIONS = 8
PREFILL_S = 2.0
RECIPES: dict[str, dict[str, Any]] = {
    "alpha": {},
    "slow": {"env": {"STANDIN_PREFILL_S": str(PREFILL_S)}},
    "manual": {"on_demand": False},
    "broken": {"env": {"STANDIN_MODE": "crash_at_start"}},
    # Load for 60 s: "brief" lets its requests wait 1 s, "tight" lets none wait.
    "brief": {"queue_timeout_s": 1, "env": {"STANDIN_STARTUP_S": "60"}},
    "tight": {"queue_depth": 0, "env": {"STANDIN_STARTUP_S": "60"}},
}
SETTINGS = {
    "STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true",
    "STUDIOCTL_GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon(RECIPES, env=SETTINGS) as d:
        launch(d, "alpha")
        launch(d, "slow")
        yield d


def tenant(d: Daemon, name: str, **overrides: int) -> str:
    """A tenant made on the control socket (no admin token on TCP); its key."""
    with d.client() as c:
        out = c.request("POST", "/tenants", json_body={"name": name, "overrides": overrides})
    key: str = out["key"]
    return key


def gateway_inflight(d: Daemon) -> int:
    with d.client() as c:
        return int(c.request("GET", "/status")["gateway"]["inflight"])


# -- the provocations, one per code ------------------------------------------------------------


def limit_concurrent(d: Daemon) -> httpx.Response:
    key = tenant(d, "conc", max_concurrent=1)
    first: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: first.append(chat(d, key, "slow")))
    holder.start()
    try:
        deadline = time.monotonic() + PREFILL_S
        while gateway_inflight(d) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        return chat(d, key, "alpha")
    finally:
        holder.join(60)
        assert [r.status_code for r in first] == [200]


def limit_rpm(d: Daemon) -> httpx.Response:
    key = tenant(d, "rpm", rpm=1)
    assert chat(d, key, "alpha").status_code == 200
    resp = chat(d, key, "alpha")
    # One request a minute: the bucket refills one in (nearly) 60 s.
    assert 50 <= retry_after(resp) <= 60, resp.headers
    return resp


def limit_tpm(d: Daemon) -> httpx.Response:
    key = tenant(d, "tpm", tpm=60)
    # Reserves its prompt (4) and max_tokens (40): 44 of the 60 a minute.
    assert chat(d, key, "alpha", max_tokens=40).status_code == 200
    resp = chat(d, key, "alpha", max_tokens=40)
    # The bucket gains one token a second and holds at most 60 - 44 = 16 (less if the
    # engine counted more than reserved): the 44 needed are there in 28 to 44 s (the time
    # it took to get here has refilled a little). Not the constant of the uncomputable.
    assert 20 <= retry_after(resp) <= 44, resp.headers
    return resp


def model_not_running(d: Daemon) -> httpx.Response:
    resp = chat(d, tenant(d, "manual"), "manual")
    assert retry_after(resp) == RETRY_AFTER_S["model_not_running"]
    assert resp.json()["error"]["hint"] == "studioctl launch manual"
    return resp


def model_loading(d: Daemon) -> httpx.Response:
    return chat(d, tenant(d, "loading"), "brief")  # waits its 1 s while it loads


def queue_full(d: Daemon) -> httpx.Response:
    return chat(d, tenant(d, "full"), "tight")


def model_load_failed(d: Daemon) -> httpx.Response:
    return chat(d, tenant(d, "failed"), "broken")


def too_many_connections(d: Daemon) -> httpx.Response:
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(socket.create_connection((LOOPBACK, d.gateway_port), timeout=5))
        deadline = time.monotonic() + 5
        while True:  # the gateway counts a closed connection gone a moment later
            resp = request(d, "GET", "/livez")
            if resp.status_code == 503 or time.monotonic() > deadline:
                return resp
            time.sleep(0.1)
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()


PROVOKE: dict[str, Callable[[Daemon], httpx.Response]] = {
    "limit_concurrent": limit_concurrent,
    "limit_rpm": limit_rpm,
    "limit_tpm": limit_tpm,
    "model_not_running": model_not_running,
    "model_loading": model_loading,
    "queue_full": queue_full,
    "model_load_failed": model_load_failed,
    "too_many_connections": too_many_connections,
}
STATUS = {"limit_concurrent": 429, "limit_rpm": 429, "limit_tpm": 429}


def test_every_daemon_code_has_its_provocation() -> None:
    assert set(PROVOKE) == DAEMON_CODES


@pytest.mark.parametrize("code", sorted(DAEMON_CODES))
def test_the_answer_carries_a_positive_retry_after(daemon: Daemon, code: str) -> None:
    resp = PROVOKE[code](daemon)
    assert_error(resp, STATUS.get(code, 503), code)
    assert retry_after(resp) >= 1


def test_admin_unavailable_on_tcp_without_an_admin_token(daemon: Daemon) -> None:
    resp = request(daemon, "GET", "/admin/tenants")
    assert_error(resp, 503, "admin_unavailable", "admin_unavailable")
    assert retry_after(resp) == RETRY_AFTER_S["admin_unavailable"]
