"""PostgreSQL stopped for 5 s under load (``pg_ctl stop -m fast``, then started again), with
a daemon on it: with ``store.fail_open`` every request is still answered from the cache and
no usage row is lost; failing closed, what needs the store gets 503 ``store_unavailable``
with Retry-After, ``/healthz`` says ``postgres unreachable``, nothing hangs, and the daemon
recovers by itself once the server is back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import assert_error, base_url, create_tenant, gateway_daemon, launch
from helpers import wait_for
from pg_server import PgServer, private_server
from scaleout.conftest import store_env
from studioctl.store import UsageRepo
from studioctl.store.postgres import PostgresDatabase

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OUTAGE_S = 5.0
# Limits far above what the load sends: the only refusals are the store's.
UNLIMITED = ("--rpm", "1000000", "--tpm", "100000000", "--max-concurrent", "64")
BODY = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def server() -> Iterator[PgServer]:
    """A server of this test's own, since the test stops it."""
    with private_server() as pg:
        yield pg


class Load:
    """Requests one after another from a few threads until stopped: statuses, slowest."""

    def __init__(self, d: Daemon, key: str, threads: int = 3) -> None:
        self.url = base_url(d) + "/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.slowest = 0.0
        self.retry_after_missing = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=20) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                resp = c.post(self.url, json=BODY, headers=self.headers)
                took = time.monotonic() - t0
                with self._lock:
                    self.statuses[resp.status_code] += 1
                    self.slowest = max(self.slowest, took)
                    if resp.status_code != 200:
                        self.codes[resp.json()["error"]["code"]] += 1
                        if "retry-after" not in resp.headers:
                            self.retry_after_missing += 1
                time.sleep(0.005)


def healthz(d: Daemon) -> dict[str, object]:
    out: dict[str, object] = httpx.get(base_url(d) + "/healthz", timeout=10).json()
    return out


def outage(server: PgServer, during: object = None) -> None:
    time.sleep(1.0)  # load before
    server.stop("fast")
    t0 = time.monotonic()
    if callable(during):
        during()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t0)))
    server.start()
    time.sleep(2.0)  # load after


def test_fail_open_answers_from_the_cache_and_loses_no_usage_row(server: PgServer) -> None:
    url = server.new_database()
    with gateway_daemon({"alpha": {}}, env=store_env(url, fail_open=True)) as d:
        launch(d, "alpha")
        tenant, key = create_tenant(d, "steady", *UNLIMITED)
        assert httpx.post(
            base_url(d) + "/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
        ).is_success  # the key is in the cache before the outage
        with Load(d, key) as load:
            outage(server)
        answered = sum(load.statuses.values())
        assert load.statuses[200] == answered, (load.statuses, load.codes)
        assert load.slowest < 5.0, load.slowest  # no request waited out the outage
        with PostgresDatabase(url) as db:
            repo = UsageRepo(db)
            wait_for(
                lambda: len(repo.rows(tenant=str(tenant["id"]), limit=100_000)) == answered + 1,
                timeout=30,
                what=lambda: f"{answered + 1} usage rows",
            )


def test_fail_closed_answers_503_store_unavailable_and_recovers(server: PgServer) -> None:
    url = server.new_database()
    with gateway_daemon({"alpha": {}}, env=store_env(url)) as d:
        launch(d, "alpha")
        _, key = create_tenant(d, "strict", *UNLIMITED)
        seen: list[dict[str, object]] = []

        def during() -> None:
            time.sleep(1.0)
            seen.append(healthz(d))
            resp = httpx.post(
                base_url(d) + "/v1/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {key}"},
                timeout=20,
            )
            assert_error(resp, 503, "store_unavailable")
            assert int(resp.headers["retry-after"]) >= 1

        with Load(d, key) as load:
            outage(server, during)
        assert seen and seen[0]["store"] == "postgres unreachable", seen
        assert load.statuses[503] > 0 and load.statuses[200] > 0, load.statuses
        assert set(load.statuses) <= {200, 503}, (load.statuses, load.codes)
        assert set(load.codes) == {"store_unavailable"}, load.codes
        assert load.retry_after_missing == 0
        assert load.slowest < 5.0, load.slowest
        # Back by itself: requests pass and /healthz is ok again.
        wait_for(lambda: healthz(d)["store"] == "ok", timeout=15, what="the store back")
        resp = httpx.post(
            base_url(d) + "/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
        )
        assert resp.status_code == 200, resp.text
