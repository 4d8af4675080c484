"""Scripts written for the combined vLLM + tenant gateway work against studioctl (issue 13,
items 2 and 3), through a real daemon over TCP with the admin token.

Its documented admin examples are replayed as they are written: ``tenant_name``,
``max_concurrent``, ``rpm_limit``, ``tpm_limit``, ``max_context_tokens`` and
``max_output_tokens`` on ``POST /admin/tenants`` and ``PATCH /admin/tenants/{id}`` (by id or
by name), its error types (``unauthorized``, ``admin_unavailable``), the usage windows, the
default limits of a tenant created without a profile (the settings ``tenants.default_*``),
``/version``'s build sha and time; and LMServ's clients' ``X-API-Key`` header.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    base_url,
    chat,
    gateway_daemon,
    launch,
    openai_client,
    request,
    retry_after,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
BUILD_SHA = "0123456789abcdef0123456789abcdef01234567"
BUILD_TIME = "2026-11-30T12:00:00Z"
# The tenant gateway's example tenant, as its documentation writes it.
EXAMPLE = {
    "tenant_name": "acme",
    "max_concurrent": 2,
    "rpm_limit": 120,
    "tpm_limit": 50000,
    "max_context_tokens": 8192,
    "max_output_tokens": 512,
}
# Requests to "slow" take this long in the engine: long enough to hold two in flight.
PREFILL_S = 2.0


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    env = {
        "STUDIOCTL_BUILD_SHA": BUILD_SHA,
        "STUDIOCTL_BUILD_TIME": BUILD_TIME,
        "STUDIOCTL_TENANTS_DEFAULT_MAX_CONCURRENT": "3",
        "STUDIOCTL_TENANTS_DEFAULT_RPM_LIMIT": "77",
    }
    recipes = {"alpha": {}, "slow": {"env": {"STANDIN_PREFILL_S": str(PREFILL_S)}}}
    with gateway_daemon(recipes, admin_token=ADMIN_TOKEN, env=env) as d:
        launch(d, "alpha")
        launch(d, "slow")
        yield d


def admin(d: Daemon, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return request(d, method, "/admin" + path, body=body, headers=ADMIN, **kw)


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, f"{resp.request.url} → {resp.status_code}: {resp.text}"
    return resp.json()


# -- the admin API's field names ---------------------------------------------------------------


def test_the_documented_create_read_and_patch_examples(daemon: Daemon) -> None:
    created = ok(admin(daemon, "POST", "/tenants", EXAMPLE), 201)
    tenant, key = created["tenant"], created["key"]
    assert tenant["name"] == "acme" and key.startswith("sk-st-")
    want = {"max_concurrent": 2, "rpm": 120, "tpm": 50000}
    want |= {"max_context_tokens": 8192, "max_output_tokens": 512}
    # Read back by id and by name: the limits are those given, whatever the profile says.
    for ref in (tenant["id"], "acme"):
        shown = ok(admin(daemon, "GET", f"/tenants/{ref}"))
        assert {k: shown["limits"][k] for k in want} == want, shown
        assert shown["profile"] == "default"
        # ... and in its own names at the top level, as its scripts read them.
        assert {k: shown[k] for k in EXAMPLE} == EXAMPLE, shown

    # PATCH by name with its names, then by id: each applies to the next request.
    patched = ok(admin(daemon, "PATCH", "/tenants/acme", {"rpm_limit": 90, "tpm_limit": 40000}))
    assert (patched["limits"]["rpm"], patched["limits"]["tpm"]) == (90, 40000)
    assert (patched["rpm_limit"], patched["tpm_limit"]) == (90, 40000)
    patched = ok(admin(daemon, "PATCH", f"/tenants/{tenant['id']}", {"max_output_tokens": 256}))
    assert patched["limits"]["max_output_tokens"] == 256 and patched["limits"]["rpm"] == 90
    # ... and the new output cap is enforced by the gateway at once.
    assert_error(chat(daemon, key, "alpha", max_tokens=300), 400, "output_too_long")
    assert chat(daemon, key, "alpha", max_tokens=256).status_code == 200
    # Renamed through its tenant_name.
    renamed = ok(admin(daemon, "PATCH", "/tenants/acme", {"tenant_name": "acme2"}))
    assert renamed["name"] == "acme2" and renamed["id"] == tenant["id"]
    assert_error(admin(daemon, "GET", "/tenants/acme"), 404, "not_found")
    ok(admin(daemon, "DELETE", "/tenants/acme2"))


def test_the_example_limits_are_in_effect_a_third_concurrent_request_is_429(
    daemon: Daemon,
) -> None:
    body = {**EXAMPLE, "tenant_name": "conc"}
    key = ok(admin(daemon, "POST", "/tenants", body), 201)["key"]
    answers: list[httpx.Response] = []
    started = threading.Barrier(3)

    def slow() -> None:
        started.wait()
        answers.append(chat(daemon, key, "slow"))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    try:
        # Both are in flight for PREFILL_S: wait until the gateway counts them, then a third.
        third = _third_while_two_run(daemon, key)
    finally:
        for t in threads:
            t.join(60)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    err = assert_error(third, 429, "limit_concurrent", "rate_limit_error")
    assert "2 concurrent" in err["message"]
    assert retry_after(third) >= 1
    ok(admin(daemon, "DELETE", "/tenants/conc"))


def _third_while_two_run(d: Daemon, key: str) -> httpx.Response:
    import time

    deadline = time.monotonic() + PREFILL_S
    while time.monotonic() < deadline:
        inflight = ok(admin(d, "GET", "/status")).get("gateway", {}).get("inflight")
        if inflight == 2:
            return chat(d, key, "alpha")
        time.sleep(0.05)
    raise AssertionError("the two slow requests were never in flight together")


def test_both_spellings_with_different_values_are_a_400_naming_both(daemon: Daemon) -> None:
    cases = [
        ({"tenant_name": "a1", "name": "a2"}, ("tenant_name", "name")),
        ({"tenant_name": "a1", "rpm_limit": 10, "rpm": 11}, ("rpm_limit", "rpm")),
        ({"tenant_name": "a1", "tpm_limit": 10, "overrides": {"tpm": 11}}, ("tpm_limit", "tpm")),
    ]
    for body, names in cases:
        err = assert_error(admin(daemon, "POST", "/tenants", body), 400, "invalid_request")
        assert all(n in err["message"] for n in names), err
    # The same value twice is one value.
    same = {"tenant_name": "same", "name": "same", "rpm_limit": 10, "rpm": 10}
    assert ok(admin(daemon, "POST", "/tenants", same), 201)["tenant"]["limits"]["rpm"] == 10
    err = assert_error(
        admin(daemon, "PATCH", "/tenants/same", {"rpm_limit": 5, "overrides": {"rpm": 6}}),
        400,
        "invalid_request",
    )
    assert "rpm_limit" in err["message"] and "overrides.rpm" in err["message"]
    ok(admin(daemon, "DELETE", "/tenants/same"))


def test_a_tenant_without_profile_gets_the_configured_defaults(daemon: Daemon) -> None:
    tenant = ok(admin(daemon, "POST", "/tenants", {"tenant_name": "plain"}), 201)["tenant"]
    # STUDIOCTL_TENANTS_DEFAULT_* of the fixture, the rest the settings' defaults.
    assert tenant["profile"] == "default"
    assert tenant["limits"] | {"allowed_models": None} == {
        "max_concurrent": 3,
        "rpm": 77,
        "tpm": 120000,
        "max_context_tokens": 8192,
        "max_output_tokens": 512,
        "allowed_models": None,
    }
    profiles = ok(admin(daemon, "GET", "/limits/profiles"))["profiles"]
    assert profiles["default"]["rpm"] == 77 and profiles["standard"]["rpm"] == 180
    ok(admin(daemon, "DELETE", "/tenants/plain"))


def test_admin_token_missing_or_wrong_is_401_unauthorized(daemon: Daemon) -> None:
    for headers in (None, {"X-Admin-Token": "wrong"}, {"X-Admin-Token": ""}):
        for method, path in (("POST", "/admin/tenants"), ("PATCH", "/admin/tenants/x")):
            resp = request(daemon, method, path, body=EXAMPLE, headers=headers)
            assert_error(resp, 401, "unauthorized", "unauthorized")
    listed = ok(admin(daemon, "GET", "/tenants"))["tenants"]
    assert all(t["name"] != "acme" for t in listed)


@pytest.mark.parametrize("window", ["1h", "24h", "7d"])
def test_usage_windows(daemon: Daemon, window: str) -> None:
    key = ok(admin(daemon, "POST", "/tenants", {"tenant_name": f"u{window}"}), 201)["key"]
    assert chat(daemon, key, "alpha").status_code == 200
    import time

    deadline = time.monotonic() + 5
    while True:
        out = ok(admin(daemon, "GET", "/usage", params={"window": window, "tenant": f"u{window}"}))
        if out["total"]["requests"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out["window"] == window and out["total"]["requests"] == 1, out
    ok(admin(daemon, "DELETE", f"/tenants/u{window}"))


def test_version_reports_the_build(daemon: Daemon) -> None:
    out = ok(request(daemon, "GET", "/version"))
    assert out["build_sha"] == BUILD_SHA and out["build_time"] == BUILD_TIME
    assert out["version"]


def test_without_an_admin_token_it_is_503_admin_unavailable() -> None:
    with gateway_daemon() as d:
        for method, path in (("POST", "/admin/tenants"), ("GET", "/admin/usage?window=1h")):
            resp = request(d, method, path, body=EXAMPLE, headers=ADMIN)
            assert_error(resp, 503, "admin_unavailable", "admin_unavailable")
            assert retry_after(resp) >= 1
        # No build sha from the environment: the checkout's or the package's (or null).
        version = ok(request(d, "GET", "/version"))
        assert "build_sha" in version and version["build_time"] is None


# -- X-API-Key ------------------------------------------------------------------------------


def test_x_api_key_with_httpx_and_the_openai_client(daemon: Daemon) -> None:
    key = ok(admin(daemon, "POST", "/tenants", {"tenant_name": "xkey"}), 201)["key"]
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = base_url(daemon)
    resp = httpx.post(url + "/v1/chat/completions", json=body, headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.text
    models = httpx.get(url + "/v1/models", headers={"x-api-key": key})
    assert models.status_code == 200 and "alpha" in [m["id"] for m in models.json()["data"]]
    # Both headers with the same key: fine; with different keys: 401 naming the conflict.
    same = {"X-API-Key": key, "Authorization": f"Bearer {key}"}
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=same).status_code == 200
    other = {"X-API-Key": key, "Authorization": "Bearer sk-st-someoneelse"}
    err = assert_error(
        httpx.post(url + "/v1/chat/completions", json=body, headers=other), 401, "invalid_api_key"
    )
    assert "Authorization" in err["message"] and "X-API-Key" in err["message"]
    bad = httpx.post(url + "/v1/chat/completions", json=body, headers={"X-API-Key": "sk-st-x"})
    assert_error(bad, 401, "invalid_api_key")

    import openai

    client = openai.OpenAI(
        base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60,
        default_headers={"X-API-Key": key, "Authorization": ""},
    )  # fmt: skip
    with client:
        out = client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert out.choices[0].message.content is not None
    with openai_client(daemon, key) as plain:  # the bearer token still works alongside
        assert plain.models.list().data
    ok(admin(daemon, "DELETE", "/tenants/xkey"))


def test_the_key_header_name_is_a_setting_and_empty_turns_it_off() -> None:
    env = {"STUDIOCTL_GATEWAY_API_KEY_HEADER": "X-Studio-Key"}
    with gateway_daemon({"alpha": {}}, env=env) as d:
        launch(d, "alpha")
        with d.client() as c:
            key = c.request("POST", "/tenants", json_body={"name": "hdr"})["key"]
        url = base_url(d) + "/v1/models"
        assert httpx.get(url, headers={"X-Studio-Key": key}).status_code == 200
        assert_error(httpx.get(url, headers={"X-API-Key": key}), 401, "invalid_api_key")
