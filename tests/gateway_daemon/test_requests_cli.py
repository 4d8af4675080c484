"""The request log through a real daemon: request ids from the gateway to the usage rows,
``studioctl requests`` (filters, ``--json``, ``-f``), ``requests show`` with and without
stored bodies (a recipe's and a tenant's ``log_bodies``), and ``GET /admin/requests``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    create_tenant,
    gateway_daemon,
    launch,
    request,
)
from helpers import wait_for
from studioctl.errors import EXIT_NOT_FOUND, EXIT_USAGE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROW_KEYS = {
    "id",
    "request_id",
    "ts",
    "tenant_id",
    "tenant",
    "key_prefix",
    "model",
    "instance_id",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "duration_ms",
    "queue_ms",
    "streamed",
    "disconnected",
    "error_code",
}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon(
        {"alpha": {}, "logged": {"log_bodies": True}}, admin_token=ADMIN_TOKEN
    ) as d:
        launch(d, "alpha")
        launch(d, "logged")
        yield d


@pytest.fixture(scope="module")
def key(daemon: Daemon) -> str:
    _, k = create_tenant(daemon, "acme")
    return k


def chat_id(
    d: Daemon, key: str, model: str, rid: str | None = None, content: str = "one two three"
) -> Any:
    """A chat through the gateway, sent with ``X-Request-Id: rid`` when given."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3}
    headers = {"X-Request-Id": rid} if rid is not None else None
    return request(d, "POST", "/v1/chat/completions", key=key, body=body, headers=headers)


def requests_json(d: Daemon, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = d.cli_json("requests", *args, "--json")
    return out


def wait_row(d: Daemon, request_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        with d.client() as c:
            rows = c.requests(params={"limit": 50})["data"]
        return next((r for r in rows if r["request_id"] == request_id), None)

    row: dict[str, Any] = wait_for(found, timeout=10, what=f"the row of {request_id}")
    return row


def test_a_request_id_reaches_the_row_and_the_listing(daemon: Daemon, key: str) -> None:
    r = chat_id(daemon, key, "alpha", "cli-test-1")
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "cli-test-1"
    row = wait_row(daemon, "cli-test-1")
    assert set(row) == ROW_KEYS
    assert (row["tenant"], row["model"], row["status"]) == ("acme", "alpha", 200)
    assert row["completion_tokens"] == 3 and row["error_code"] is None
    out = requests_json(daemon, "--tenant", "acme")
    assert set(out) == {"object", "data", "last_id"} and out["object"] == "list"
    assert out["data"][0]["request_id"] == "cli-test-1"
    assert out["last_id"] >= out["data"][0]["id"]
    ids = [x["id"] for x in out["data"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    table = daemon.cli_ok("requests", "--model", "alpha", "--limit", "5")
    header, first = table.splitlines()[:2]
    assert header.split()[:3] == ["request", "id", "time"]
    assert first.startswith("cli-test-1") and " acme " in first and " alpha " in first


def test_filters_and_their_errors(daemon: Daemon, key: str) -> None:
    bad = chat_id(daemon, key, "no-such-model", "cli-404")
    err = assert_error(bad, 404, "model_not_found")
    assert err["message"].endswith("(request id cli-404)")
    wait_row(daemon, "cli-404")
    four = requests_json(daemon, "--status", "4xx")["data"]
    assert [x["request_id"] for x in four][:1] == ["cli-404"]
    assert all(400 <= x["status"] <= 499 for x in four)
    assert all(x["status"] == 200 for x in requests_json(daemon, "--status", "200")["data"])
    assert len(requests_json(daemon, "--limit", "1")["data"]) == 1
    assert requests_json(daemon, "--since", "1h")["data"]
    for args, named in (
        (("--status", "7xx"), "'7xx'"),
        (("--status", "4x"), "'4x'"),
        (("--since", "5x"), "'5x'"),
        (("--limit", "0"), "limit"),
        (("--limit", "10001"), "10001"),
    ):
        r = daemon.cli("requests", *args)
        assert r.returncode == EXIT_USAGE, (args, r.stdout, r.stderr)
        assert named in r.stderr, (args, r.stderr)
    r = daemon.cli("requests", "--tenant", "nobody")
    assert r.returncode == EXIT_NOT_FOUND and "nobody" in r.stderr


def test_admin_requests_over_http(daemon: Daemon, key: str) -> None:
    chat_id(daemon, key, "alpha", "http-1")
    wait_row(daemon, "http-1")
    assert_error(request(daemon, "GET", "/admin/requests"), 401, "unauthorized")
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    r = request(
        daemon,
        "GET",
        "/admin/requests",
        headers=admin,
        params={"tenant": "acme", "model": "alpha", "status": "2xx", "since": "1h", "limit": "2"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["data"][0]["request_id"] == "http-1" and len(body["data"]) <= 2
    for params, param in (
        ({"status": "abc"}, "status"),
        ({"since": "forever"}, "since"),
        ({"limit": "99999"}, "limit"),
        ({"after": "-1"}, "after"),
    ):
        bad = request(daemon, "GET", "/admin/requests", headers=admin, params=params)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == param
    one = request(daemon, "GET", "/admin/requests/http-1", headers=admin)
    assert one.status_code == 200 and one.json()["data"][0]["request_id"] == "http-1"
    missing = request(daemon, "GET", "/admin/requests/never-sent", headers=admin)
    assert missing.status_code == 404


def test_bodies_only_with_log_bodies(daemon: Daemon, key: str) -> None:
    plain = chat_id(daemon, key, "alpha", content="private words here")
    rid = plain.headers["x-request-id"]
    wait_row(daemon, rid)
    shown = daemon.cli_ok("requests", "show", rid)
    assert "not stored" in shown and "private" not in shown
    # The recipe with log_bodies: a stream, its text assembled.
    with request_stream(daemon, key, "logged", "say something") as (rid2, text):
        pass
    wait_row(daemon, rid2)
    out = daemon.cli_json("requests", "show", rid2, "--json")
    row = out["data"][0]
    assert json.loads(row["request_body"])["messages"][0]["content"] == "say something"
    assert row["response_body"] == text and text.split()[0] == "tok0"
    assert row["truncated"] is False and row["streamed"] is True
    human = daemon.cli_ok("requests", "show", rid2)
    assert "request body:" in human and "say something" in human
    # The tenant flag (`tenant set --log-bodies`): the same plain recipe, now stored.
    assert "bodies logged" in daemon.cli_ok("tenant", "set", "acme", "--log-bodies")
    logged = chat_id(daemon, key, "alpha", content="now it is kept")
    rid3 = logged.headers["x-request-id"]
    wait_row(daemon, rid3)
    row3 = daemon.cli_json("requests", "show", rid3, "--json")["data"][0]
    assert "now it is kept" in row3["request_body"]
    assert json.loads(row3["response_body"])["usage"]["completion_tokens"] == 3
    off = daemon.cli_json("tenant", "set", "acme", "--no-log-bodies", "--json")
    assert "log_bodies" not in off["limits"]
    unlogged = chat_id(daemon, key, "alpha", content="not kept again")
    wait_row(daemon, unlogged.headers["x-request-id"])
    assert "not stored" in daemon.cli_ok("requests", "show", unlogged.headers["x-request-id"])
    r = daemon.cli("requests", "show", "never-sent")
    assert r.returncode == EXIT_NOT_FOUND and "never-sent" in r.stderr


class request_stream:
    """A streamed chat through the gateway: (its request id, the text it carried)."""

    def __init__(self, d: Daemon, key: str, model: str, content: str) -> None:
        self.args = (d, key, model, content)

    def __enter__(self) -> tuple[str, str]:
        import httpx

        from gateway_daemon.helpers import base_url

        d, key, model, content = self.args
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}
        text: list[str] = []
        with httpx.stream(
            "POST",
            base_url(d) + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as r:
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:]).get("choices", []):
                        text.append(choice.get("delta", {}).get("content") or "")
        return rid, "".join(text)

    def __exit__(self, *exc: object) -> None:
        return None


def test_follow_prints_new_rows_as_json_lines(daemon: Daemon, key: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "studioctl", "requests", "-f", "--json", "--limit", "1"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: lines or None, timeout=20, what="the newest row")
        assert len(lines) == 1 and set(lines[0]) == ROW_KEYS
        for n in range(2):
            r = chat_id(daemon, key, "alpha", f"follow-{n}")
            assert r.status_code == 200
        wait_for(lambda: len(lines) >= 3 or None, timeout=20, what="the followed rows")
        assert [x["request_id"] for x in lines[1:]] == ["follow-0", "follow-1"]  # oldest first
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
