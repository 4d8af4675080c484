"""The strict FIFO baseline through a real daemon (``scheduler.policy: fifo``, the comparison
of issue 11's benchmark): requests are served in arrival order and the engine is swapped
whenever the next request names another model, as a per-request swapping proxy does. Stand-in
engines, two recipes that do not fit together (``host.capacity_gb`` and ``vram_gb``).

The same daemon also checks a recipe's own ``queue_depth`` and ``queue_timeout_s`` (read from
the recipe files by the gateway, not the settings)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import ADMIN_TOKEN, assert_error, chat, create_tenant, gateway_daemon

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RECIPES: dict[str, dict[str, Any]] = {
    # 6 + 6 GiB on a 10 GiB host: never both at once. A 2 s start-up keeps the first
    # request waiting while the next two arrive.
    "fifo-a": {"vram_gb": 6, "env": {"STANDIN_STARTUP_S": "2"}},
    "fifo-b": {"vram_gb": 6, "env": {"STANDIN_STARTUP_S": "2"}},
    # Their own room bounds (gateway.queue_depth and queue_timeout_s stay 64 and 300 s).
    "tight": {"vram_gb": 2, "queue_depth": 1, "env": {"STANDIN_STARTUP_S": "3"}},
    "brief": {"vram_gb": 2, "queue_timeout_s": 1, "env": {"STANDIN_STARTUP_S": "6"}},
}
FIFO = {"fifo-a", "fifo-b"}
SETTINGS = {
    "STUDIOCTL_GATEWAY_LOAD_ON_DEMAND": "true",
    "STUDIOCTL_HOST_CAPACITY_GB": "10",
    "STUDIOCTL_SCHEDULER_POLICY": "fifo",
    # The fair scheduler would keep A (busy, fresh) for these; FIFO ignores both.
    "STUDIOCTL_SCHEDULER_MAX_WAIT_S": "60",
    "STUDIOCTL_SCHEDULER_MIN_RESIDENT_S": "60",
}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon(RECIPES, admin_token=ADMIN_TOKEN, env=SETTINGS) as d:
        yield d


@pytest.fixture(scope="module")
def key(daemon: Daemon) -> str:
    return create_tenant(daemon, "fifo", "--rpm", "100000", "--max-concurrent", "64")[1]


def events_of(d: Daemon, kind: str) -> list[dict[str, Any]]:
    return [e for e in d.events(2000) if e["kind"] == kind and e.get("recipe_id") in FIFO]


def test_a_b_a_in_fifo_order_swaps_twice_and_answers_all(daemon: Daemon, key: str) -> None:
    order = ["fifo-a", "fifo-b", "fifo-a"]
    answers: list[httpx.Response | None] = [None, None, None]
    done_at: list[float] = [0.0, 0.0, 0.0]

    def send(i: int) -> None:
        answers[i] = chat(daemon, key, order[i])
        done_at[i] = time.monotonic()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:  # sent in that order, all three while fifo-a is still loading
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(120)
    codes = [a.status_code if a is not None else None for a in answers]
    assert codes == [200, 200, 200], [a.text[:300] for a in answers if a is not None]
    # In arrival order: the second A is answered after B (the scheduler would have sent
    # it with the first A, before swapping).
    assert done_at[0] < done_at[1] < done_at[2], done_at
    # Two swaps: A left for B, then B for A; three loads (A, B, A again).
    evicted = [(e["recipe_id"], e["data"]["reason"]) for e in events_of(daemon, "evicted_for")]
    assert [rid for rid, _ in evicted] == ["fifo-b", "fifo-a"], evicted
    assert all(reason.startswith("fifo:") for _, reason in evicted), evicted
    loads = [e["recipe_id"] for e in events_of(daemon, "load_requested")]
    assert loads == ["fifo-a", "fifo-b", "fifo-a"], loads


def test_a_recipes_queue_depth_fills_its_room(daemon: Daemon, key: str) -> None:
    daemon.evict_all()
    first: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: first.append(chat(daemon, key, "tight")))
    waiter.start()
    try:
        time.sleep(1.0)  # the first waits for the load (3 s): the room (depth 1) is full
        err = assert_error(chat(daemon, key, "tight"), 503, "queue_full")
        assert "1 requests already wait for model 'tight'" in err["message"], err
    finally:
        waiter.join(60)
    assert [r.status_code for r in first] == [200], [r.text[:300] for r in first]


def test_a_recipes_queue_timeout_ends_its_waiters(daemon: Daemon, key: str) -> None:
    t0 = time.monotonic()
    resp = chat(daemon, key, "brief")  # loads in 6 s; its requests wait 1 s
    took = time.monotonic() - t0
    err = assert_error(resp, 503, "model_loading")
    assert "within 1 s" in err["message"], err
    assert resp.headers.get("retry-after"), resp.headers
    assert 0.8 <= took < 5.0, took
