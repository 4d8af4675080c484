"""Three gateway daemons as the README's "More than one gateway" sets them up: one Redis for
the tenant limits, one PostgreSQL for the store, one engine behind them all (``limits``'
shared engine: each daemon's "engine" relays to it, so its in-flight count is the sum over the
replicas). One tenant, created once on the first daemon, with rpm=100 and max_concurrent=4;
600 requests spread over the three as fast as twelve threads go: the tenant's minute of
requests admitted across all three together (its 100, plus what the bucket refills while the
burst runs: the limit is a token bucket, as on one gateway), the engine never above 4 in
flight, and one usage row in PostgreSQL for every request answered, refusals included.
(tests/limits/test_replicas_daemon.py shows the contrast: the memory backend lets each
replica admit the tenant's whole budget.)"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import base_url, create_tenant, gateway_daemon, launch
from helpers import wait_for
from limits.shared_engine import RELAY_DIR, SharedEngine
from pg_server import PgServer
from redis_server import RedisServer, redis_server_or_skip
from studioctl.store import UsageRepo
from studioctl.store.postgres import PostgresDatabase

from .conftest import store_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "shared"
RPM, CONCURRENT, TOTAL, WORKERS = 100, 4, 600, 12
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def engine() -> Iterator[SharedEngine]:
    with SharedEngine(MODEL) as e:
        yield e


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server_or_skip() as server:
        yield server


def burst(daemons: list[Daemon], key: str) -> tuple[Counter[str], int, float]:
    """TOTAL requests over the daemons, each re-sent at once while refused for concurrency
    (so each ends admitted or refused by RPM): (final outcomes, HTTP answers, seconds)."""
    outcomes: Counter[str] = Counter()
    answers = itertools.count()
    lock = threading.Lock()
    sent = itertools.count()

    def post(client: httpx.Client) -> str:
        resp = client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"}
        )
        next(answers)
        return "ok" if resp.status_code == 200 else str(resp.json()["error"]["code"])

    def work(i: int) -> None:
        with httpx.Client(base_url=base_url(daemons[i % len(daemons)]), timeout=30) as client:
            while next(sent) < TOTAL:
                while (code := post(client)) == "limit_concurrent":
                    time.sleep(0.002)
                with lock:
                    outcomes[code] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outcomes, next(answers), time.monotonic() - t0


def test_three_gateways_on_one_redis_and_one_postgres(
    engine: SharedEngine, redis: RedisServer, pg_server: PgServer
) -> None:
    url = pg_server.new_database()
    env = {
        **store_env(url),
        "STUDIOCTL_LIMITS_BACKEND": "redis",
        "STUDIOCTL_LIMITS_REDIS_URL": redis.url,
        "STUDIOCTL_LIMITS_NAMESPACE": "three",
    }
    recipe = {MODEL: {"env": {"PYTHONPATH": str(RELAY_DIR), "SHARED_ENGINE_PORT": engine.port}}}
    with ExitStack() as stack:
        daemons = [stack.enter_context(gateway_daemon(recipe, env=env)) for _ in range(3)]
        for d in daemons:
            launch(d, MODEL)
        options = ("--rpm", str(RPM), "--max-concurrent", str(CONCURRENT), "--tpm", "100000000")
        tenant, key = create_tenant(daemons[0], "acme", *options)  # once: the store is shared
        engine.reset()
        outcomes, answered, took = burst(daemons, key)

    print(f"{outcomes} in {took:.1f} s, {answered} answers, engine max {engine.max_inflight}")
    assert sum(outcomes.values()) == TOTAL and set(outcomes) == {"ok", "limit_rpm"}, outcomes
    refill = math.ceil(took * RPM / 60)
    assert RPM <= outcomes["ok"] <= RPM + refill, (outcomes, took)
    assert 0 < engine.max_inflight <= CONCURRENT, engine.max_inflight
    # Every answer, refusals included, is one usage row, written by the daemon that gave it,
    # all in the one PostgreSQL database (the daemons flushed their writers as they stopped).
    with PostgresDatabase(url) as db:
        repo = UsageRepo(db)

        def rows() -> int:
            return len(repo.rows(tenant=str(tenant["id"]), limit=answered + 100))

        wait_for(lambda: rows() == answered, timeout=15, what=f"{answered} usage rows")
        statuses = Counter(r.status for r in repo.rows(tenant=str(tenant["id"]), limit=5000))
    assert statuses[200] == outcomes["ok"], statuses
