"""Admin routes over TCP (``/admin/…`` with ``X-Admin-Token``) and anonymous access, through a
real daemon: no token configured → 503 everywhere on TCP while the Unix socket still works;
with a token, missing/wrong → 401 and the right one gives the same tenants API as the socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    chat,
    cli_ok,
    create_tenant,
    gateway_daemon,
    launch,
    parse_metrics,
    request,
    scrape,
    usage_api,
    usage_cli,
    usage_rows,
    wait_usage,
)
from studioctl.netaddr import is_loopback

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADMIN = {"X-Admin-Token": ADMIN_TOKEN}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """Admin token set; anonymous access off (the default)."""
    with gateway_daemon({"alpha": {}}, admin_token=ADMIN_TOKEN) as d:
        launch(d, "alpha")
        yield d


@pytest.fixture(scope="module")
def open_daemon() -> Iterator[Daemon]:
    """No admin token; anonymous access on (bound to 127.0.0.1); /metrics public."""
    env = {"STUDIOCTL_GATEWAY_ALLOW_ANONYMOUS": "true", "STUDIOCTL_GATEWAY_METRICS_PUBLIC": "true"}
    with gateway_daemon({"alpha": {}}, env=env) as d:
        launch(d, "alpha")
        yield d


def admin(d: Daemon, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    """An admin call over TCP with the right token; asserts 2xx and returns the JSON."""
    resp = request(d, method, "/admin" + path, body=body, headers=ADMIN, **kw)
    assert resp.status_code in (200, 201), (
        f"{method} /admin{path} → {resp.status_code}: {resp.text}"
    )
    return resp.json()


def socket_call(d: Daemon, method: str, path: str, body: Any = None) -> Any:
    with d.client() as c:
        return c.request(method, path, json_body=body)


# -- no admin token configured ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/tenants"),
        ("POST", "/admin/tenants"),
        ("GET", "/admin/usage"),
        ("GET", "/admin/limits/profiles"),
        ("GET", "/admin/status"),
        ("GET", "/admin"),
    ],
)
def test_without_an_admin_token_tcp_admin_is_503_admin_unavailable(
    open_daemon: Daemon, method: str, path: str
) -> None:
    for headers in (None, {"X-Admin-Token": "anything"}):
        resp = request(open_daemon, method, path, body={"name": "x"}, headers=headers)
        err = assert_error(resp, 503, "admin_unavailable", "admin_unavailable")
        assert "admin_token" in err["message"] or "ADMIN_TOKEN" in err["message"], err
    # ... and nothing was created by the refused POST: the socket still serves the admin API.
    assert socket_call(open_daemon, "GET", "/tenants")["tenants"] == []


def test_without_an_admin_token_the_socket_still_administers(open_daemon: Daemon) -> None:
    tenant, key = create_tenant(open_daemon, "sockonly")
    assert cli_ok(open_daemon, "tenant", "show", "sockonly", "--json")
    # The key works on the gateway even though TCP admin is off.
    assert chat(open_daemon, key, "alpha").status_code == 200
    cli_ok(open_daemon, "tenant", "rm", tenant["id"], "--yes")


def test_metrics_public_needs_no_token(open_daemon: Daemon) -> None:
    m = scrape(open_daemon, token=None)
    assert m.families["studioctl_gateway_requests"] == "counter"
    assert m.get("studioctl_instance_up", instance="alpha-1", recipe="alpha", state="ready") == 1


# -- anonymous access (loopback only) ----------------------------------------------------------


def test_anonymous_on_loopback_serves_requests_without_a_key(open_daemon: Daemon) -> None:
    before = usage_api(open_daemon, tenant="anonymous")["total"]
    resp = chat(open_daemon, None, "alpha", content="four five six seven", max_tokens=2)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    models = request(open_daemon, "GET", "/v1/models")
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["alpha"]
    # Accounted to the anonymous tenant (`usage --tenant anonymous`), with the engine's counts.
    after = wait_usage(open_daemon, before["requests"] + 1, tenant="anonymous")["total"]
    assert after["prompt_tokens"] - before["prompt_tokens"] == 5
    assert after["completion_tokens"] - before["completion_tokens"] == 2
    out = usage_cli(open_daemon, "--tenant", "anonymous", "--window", "1h")
    assert list(out["by_tenant"]) == ["anonymous"] and out["total"] == after
    (row,) = usage_rows(open_daemon, tenant="anonymous", limit=1)
    assert (row.status, row.key_prefix, row.model) == (200, "", "alpha")
    # A wrong key is still refused: anonymous access is for requests without a key only.
    assert_error(chat(open_daemon, "sk-st-wrongwrongwrong", "alpha"), 401, "invalid_api_key")


def test_anonymous_tenant_gets_the_conservative_limits(open_daemon: Daemon) -> None:
    # conservative: max_output_tokens 256
    resp = chat(open_daemon, None, "alpha", max_tokens=257)
    err = assert_error(resp, 400, "output_too_long")
    assert "256" in err["message"], err


def test_without_allow_anonymous_a_request_without_a_key_is_401(daemon: Daemon) -> None:
    for resp in (chat(daemon, None, "alpha"), request(daemon, "GET", "/v1/models")):
        err = assert_error(resp, 401, "invalid_api_key", "authentication_error")
        assert "key" in err["message"].lower(), err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("[127.0.0.1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("fe80::1", False),
        ("gateway.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- with an admin token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"X-Admin-Token": ""},
        {"X-Admin-Token": "wrong"},
        {"X-Admin-Token": ADMIN_TOKEN + "x"},
        {"X-Admin-Token": ADMIN_TOKEN[:-1]},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + ADMIN_TOKEN},
    ],
)
def test_missing_or_wrong_admin_token_is_401(
    daemon: Daemon, headers: dict[str, str] | None
) -> None:
    for method, path in (
        ("GET", "/admin/tenants"),
        ("POST", "/admin/tenants"),
        ("GET", "/metrics"),
    ):
        resp = request(daemon, method, path, body={"name": "intruder"}, headers=headers)
        assert_error(resp, 401, "unauthorized", "unauthorized")
    assert all(t["name"] != "intruder" for t in socket_call(daemon, "GET", "/tenants")["tenants"])


def test_admin_token_as_bearer_is_accepted(daemon: Daemon) -> None:
    resp = request(
        daemon, "GET", "/admin/limits/profiles", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert resp.status_code == 200, resp.text
    assert set(resp.json()["profiles"]) == {"conservative", "standard", "pro", "default"}


def test_metrics_need_the_admin_token_unless_public(daemon: Daemon) -> None:
    resp = request(daemon, "GET", "/metrics")
    assert_error(resp, 401, "unauthorized")
    ok = request(daemon, "GET", "/metrics", headers=ADMIN)
    assert ok.status_code == 200, ok.text
    assert parse_metrics(ok.text).families["studioctl_gateway_requests"] == "counter"


def test_tenants_crud_over_tcp_matches_the_socket(daemon: Daemon) -> None:
    # Create over TCP: 201, the key once, limits from the profile plus overrides.
    created = request(
        daemon,
        "POST",
        "/admin/tenants",
        body={"name": "tcp-acme", "profile": "conservative", "overrides": {"rpm": 77}},
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    tenant, key = created.json()["tenant"], created.json()["key"]
    assert key.startswith("sk-st-")
    assert tenant["limits"]["rpm"] == 77 and tenant["limits"]["max_concurrent"] == 1
    tid = tenant["id"]

    # The same object over TCP and over the socket, by name and by id.
    for ref in ("tcp-acme", tid):
        assert admin(daemon, "GET", f"/tenants/{ref}") == socket_call(
            daemon, "GET", f"/tenants/{ref}"
        )
    assert admin(daemon, "GET", "/tenants") == socket_call(daemon, "GET", "/tenants")
    assert tid in {t["id"] for t in admin(daemon, "GET", "/tenants")["tenants"]}

    # A tenant created on the socket (the CLI) is seen over TCP.
    other, _ = create_tenant(daemon, "sock-acme", "--profile", "pro")
    seen = admin(daemon, "GET", "/tenants/sock-acme")
    assert seen["id"] == other["id"] and seen["limits"] == other["limits"]

    # The key from the TCP create works on the gateway.
    assert chat(daemon, key, "alpha").status_code == 200

    # PATCH over TCP; the socket sees it.
    patched = admin(daemon, "PATCH", f"/tenants/{tid}", {"overrides": {"max_output_tokens": 5}})
    assert patched["limits"]["max_output_tokens"] == 5
    assert socket_call(daemon, "GET", f"/tenants/{tid}")["limits"]["max_output_tokens"] == 5
    assert_error(chat(daemon, key, "alpha", max_tokens=6), 400, "output_too_long")

    # Keys over TCP: create, list (prefixes only), rotate with grace 0, revoke.
    key2 = admin(daemon, "POST", f"/tenants/{tid}/keys")["key"]
    listed = admin(daemon, "GET", f"/tenants/{tid}/keys")["keys"]
    assert [k["prefix"] for k in listed] == [key[:14], key2[:14]]
    assert key not in str(listed) and key2 not in str(listed)
    assert listed == socket_call(daemon, "GET", f"/tenants/{tid}/keys")["keys"]
    key3 = admin(daemon, "POST", f"/tenants/{tid}/keys/rotate", {"grace_s": 0})["key"]
    assert_error(chat(daemon, key, "alpha"), 401, "invalid_api_key")
    assert_error(chat(daemon, key2, "alpha"), 401, "invalid_api_key")
    assert chat(daemon, key3, "alpha").status_code == 200
    revoked = admin(daemon, "POST", f"/keys/{key3[:14]}/revoke", {"tenant": tid})
    assert revoked["prefix"] == key3[:14] and revoked["status"] == "revoked"
    assert_error(chat(daemon, key3, "alpha"), 401, "invalid_api_key")

    # Usage over TCP equals the socket's (same window, same rows).
    # tcp-acme's rows: 200, 400 output_too_long, 200 (key3); the 401s have no tenant.
    wait_usage(daemon, 3, window="1h", tenant="tcp-acme")
    tcp_usage = admin(daemon, "GET", "/usage", params={"window": "1h", "tenant": "tcp-acme"})
    with daemon.client() as c:
        sock_usage = c.request("GET", "/usage", params={"window": "1h", "tenant": "tcp-acme"})
    for k in ("total", "by_tenant", "by_model", "window", "tenant_names"):
        assert tcp_usage[k] == sock_usage[k], k
    assert tcp_usage["total"]["requests"] == 3 and tcp_usage["total"]["errors"] == 1

    # Delete over TCP; gone on both sides.
    deleted = admin(daemon, "DELETE", f"/tenants/{tid}")
    assert deleted["deleted"]["id"] == tid
    gone = request(daemon, "GET", f"/admin/tenants/{tid}", headers=ADMIN)
    assert gone.status_code == 404, gone.text
    assert tid not in {t["id"] for t in socket_call(daemon, "GET", "/tenants")["tenants"]}
    cli_ok(daemon, "tenant", "rm", "sock-acme", "--yes")


def test_admin_errors_over_tcp_are_openai_envelopes(daemon: Daemon) -> None:
    missing = request(daemon, "GET", "/admin/tenants/no-such-tenant", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"], missing.text
    bad = request(daemon, "POST", "/admin/tenants", body={"name": "bad name!"}, headers=ADMIN)
    assert bad.status_code == 400
    assert "bad name!" in bad.json()["error"]["message"], bad.text
    assert bad.json()["error"]["param"] == "name", bad.text
    window = request(daemon, "GET", "/admin/usage", params={"window": "5y"}, headers=ADMIN)
    assert window.status_code == 400 and window.json()["error"]["param"] == "window", window.text
