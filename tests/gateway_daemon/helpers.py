"""Helpers for the gateway-through-the-daemon tests (and the gateway end-to-end test).

``gateway_daemon()`` runs a real ``studioctl daemon run`` with the gateway on (a free TCP port
on 127.0.0.1, ``d.gateway_port``) and stand-in recipes written *before* it starts, so they are
known models from the first request on. The rest are thin, explicit wrappers: raw HTTP to the
gateway (``httpx``), the official ``openai`` client, the tenant / usage CLI, the daemon's usage
store read directly, and ``/metrics`` parsed with ``prometheus_client``'s parser.

The stand-in counts tokens predictably (see ``tests/standin/standin_engine.py``): a chat
prompt is one token per message plus the words of its content; a completion produces exactly
``max_tokens`` tokens.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon_helpers import Daemon, running_daemon
from helpers import wait_for

if TYPE_CHECKING:
    import httpx
    import openai

    from studioctl.store.usage import UsageRecord

ADMIN_TOKEN = "test-admin-token-4f1c9a"
LOOPBACK = "127.0.0.1"


# -- the daemon ------------------------------------------------------------------------------


@contextlib.contextmanager
def gateway_daemon(
    recipes: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    admin_token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Daemon]:
    """A running daemon with the gateway on and ``recipes`` (id → extra recipe fields, see
    ``Daemon.recipe``) in its recipe folder; ``admin_token`` sets STUDIOCTL_ADMIN_TOKEN."""
    extra = dict(env or {})
    if admin_token is not None:
        extra["STUDIOCTL_ADMIN_TOKEN"] = admin_token
    with running_daemon(extra, start=False, gateway=True) as d:
        for rid, fields in (recipes or {}).items():
            d.recipe(rid, **dict(fields))
        d.start()
        yield d


def base_url(d: Daemon) -> str:
    return f"http://{LOOPBACK}:{d.gateway_port}"


def launch(d: Daemon, recipe: str, *args: str) -> dict[str, Any]:
    """``studioctl launch RECIPE --json`` (waits for ready unless ``--no-wait``): the result."""
    return d.launch(recipe, *args, timeout=60)


def evict(d: Daemon, target: str, *args: str) -> dict[str, Any]:
    """``studioctl evict TARGET --json``: the report."""
    d.remember()
    out: dict[str, Any] = d.cli_json("evict", target, "--json", *args, timeout=60)
    return out


# -- raw HTTP to the gateway ----------------------------------------------------------------


def request(
    d: Daemon,
    method: str,
    path: str,
    *,
    key: str | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> httpx.Response:
    """One HTTP request to the gateway's TCP port (``key``: sent as a Bearer token)."""
    import httpx

    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    with httpx.Client(base_url=base_url(d), timeout=timeout) as c:
        return c.request(method, path, json=body, headers=h, params=params)


def chat(
    d: Daemon,
    key: str | None,
    model: str,
    *,
    content: str = "one two three",
    max_tokens: int | None = 3,
    **extra: Any,
) -> httpx.Response:
    """POST /v1/chat/completions with one user message (stand-in prompt: 1 + words)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(extra)
    return request(d, "POST", "/v1/chat/completions", key=key, body=body)


def chat_prompt_tokens(*contents: str) -> int:
    """The stand-in's prompt token count for user messages with these contents."""
    return sum(1 + len(c.split()) for c in contents)


def assert_error(
    resp: httpx.Response, status: int, code: str, error_type: str | None = None
) -> dict[str, Any]:
    """Assert an OpenAI error envelope with ``status`` and ``code``; return the error."""
    assert resp.status_code == status, (
        f"expected {status} {code}, got {resp.status_code}: {resp.text}"
    )
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    data = resp.json()
    assert set(data) == {"error"}, data
    err: dict[str, Any] = data["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    if error_type is not None:
        assert err["type"] == error_type, err
    return err


def retry_after(resp: httpx.Response) -> int:
    """The Retry-After header as whole seconds (asserting it is there and an integer)."""
    value = resp.headers.get("retry-after")
    assert value is not None, f"no Retry-After on {resp.status_code}: {dict(resp.headers)}"
    assert value.isdigit(), f"Retry-After is not whole seconds: {value!r}"
    return int(value)


def openai_client(d: Daemon, key: str) -> openai.OpenAI:
    """The official client, pointed at the gateway; no retries (a retry hides a refusal)."""
    import openai

    return openai.OpenAI(base_url=base_url(d) + "/v1", api_key=key, max_retries=0, timeout=60)


# -- tenants (CLI) ----------------------------------------------------------------------------


def create_tenant(d: Daemon, name: str, *options: str) -> tuple[dict[str, Any], str]:
    """``studioctl tenant create NAME OPTIONS --json`` → (tenant, its first key)."""
    out = d.cli_json("tenant", "create", name, *options, "--json")
    tenant: dict[str, Any] = out["tenant"]
    key: str = out["key"]
    return tenant, key


def cli_ok(d: Daemon, *args: str) -> str:
    """Run a CLI command that must succeed; its stdout."""
    return d.cli_ok(*args)


def cli_answer(d: Daemon, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a CLI command that asks a question, answering ``answer`` on its stdin."""
    return subprocess.run(
        [sys.executable, "-m", "studioctl", *args],
        env=d.env,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- usage ----------------------------------------------------------------------------------


def usage_api(d: Daemon, **params: str) -> dict[str, Any]:
    """GET /usage on the control socket (the same route the CLI calls; cheap to poll)."""
    with d.client() as c:
        out: dict[str, Any] = c.request("GET", "/usage", params=params or None)
    return out


def wait_usage(d: Daemon, requests: int, *, timeout: float = 5.0, **params: str) -> dict[str, Any]:
    """Poll the usage summary until its total counts ``requests`` (rows are written by a
    background writer, batched); fail if it counts more."""
    last: list[dict[str, Any]] = []

    def counted() -> dict[str, Any] | None:
        out = usage_api(d, **params)
        n = out["total"]["requests"]
        assert n <= requests, f"more usage than expected ({n} > {requests}): {out['total']}"
        last[:] = [out["total"]]
        return out if n == requests else None

    return wait_for(counted, timeout=timeout, what=lambda: f"{requests} requests in {last}")


def usage_cli(d: Daemon, *args: str) -> dict[str, Any]:
    """``studioctl usage ARGS --json``, parsed."""
    out: dict[str, Any] = d.cli_json("usage", *args, "--json")
    return out


def db_path(d: Daemon) -> Path:
    """The daemon's SQLite store (``paths.database_file()`` under its STUDIOCTL_HOME)."""
    return d.home / "state" / "studioctl.db"


def usage_rows(d: Daemon, **filters: Any) -> list[UsageRecord]:
    """The raw usage rows in the daemon's store, newest first (read beside the daemon: WAL)."""
    from studioctl.store.sqlite import SqliteDatabase as Database
    from studioctl.store.usage import UsageRepo

    path = db_path(d)
    assert path.is_file(), f"no database at {path}"
    db = Database(path)
    try:
        return UsageRepo(db).rows(**filters)
    finally:
        db.close()


# -- /metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """Samples of one /metrics scrape, parsed by ``prometheus_client.parser``."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: dict[str, str]  # family name → type

    def get(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` (0.0 if absent: counters start there)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def sum(self, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


def parse_metrics(text: str) -> Metrics:
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    families: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return Metrics(samples, families)


def scrape(d: Daemon, token: str | None = ADMIN_TOKEN) -> Metrics:
    """GET /metrics over TCP (with the admin token unless None), asserted 200, parsed."""
    headers = {"X-Admin-Token": token} if token is not None else None
    resp = request(d, "GET", "/metrics", headers=headers)
    assert resp.status_code == 200, f"/metrics → {resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
    return parse_metrics(resp.text)


def engine_port(d: Daemon, recipe: str) -> int:
    """The port of ``recipe``'s live instance, from ``studioctl ps --json``."""
    instances = d.cli_json("ps", "--json")["instances"]
    live = [i for i in instances if i["recipe"] == recipe and i["state"] == "ready"]
    assert len(live) == 1, f"expected one ready {recipe} in ps --json: {instances}"
    return int(live[0]["port"])


def engine_metrics(port: int) -> Metrics:
    """The engine's own GET /metrics (straight to its port, not through the gateway)."""
    import httpx

    resp = httpx.get(f"http://{LOOPBACK}:{port}/metrics", timeout=30)
    assert resp.status_code == 200, f"engine /metrics → {resp.status_code}: {resp.text[:300]}"
    return parse_metrics(resp.text)


def engine_tokens(port: int, flavour: str = "vllm") -> tuple[float, float]:
    """(prompt, generation) token counters of the engine, summed over their labels."""
    m = engine_metrics(port)
    return m.sum(f"{flavour}:prompt_tokens_total"), m.sum(f"{flavour}:generation_tokens_total")
