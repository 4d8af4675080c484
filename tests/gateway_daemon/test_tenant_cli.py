"""``studioctl tenant …`` and ``tenant key …`` against a real daemon, each change checked on
the very next gateway request; the per-tenant limits (rpm, max output) end to end."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    assert_error,
    chat,
    cli_answer,
    cli_ok,
    create_tenant,
    gateway_daemon,
    launch,
    retry_after,
)
from studioctl.errors import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_USAGE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

KEY_RE = re.compile(r"sk-st-[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon({"alpha": {}, "beta": {}}) as d:
        launch(d, "alpha")
        launch(d, "beta")
        yield d


def ok(d: Daemon, key: str, model: str = "alpha", **kw: object) -> None:
    resp = chat(d, key, model, **kw)  # type: ignore[arg-type]
    assert resp.status_code == 200, resp.text


def refused_key(d: Daemon, key: str) -> None:
    assert_error(chat(d, key, "alpha"), 401, "invalid_api_key", "authentication_error")


def keys_json(d: Daemon, tenant: str) -> list[dict[str, object]]:
    keys: list[dict[str, object]] = d.cli_json("tenant", "key", "list", tenant, "--json")["keys"]
    return keys


# -- create / list / show ----------------------------------------------------------------------


def test_create_prints_the_key_once(daemon: Daemon) -> None:
    r = daemon.cli("tenant", "create", "acme", "--profile", "pro", "--rpm", "1200")
    assert r.returncode == 0, r.stderr
    found = KEY_RE.findall(r.stdout)
    assert len(found) == 1, r.stdout
    key = found[0]
    assert "shown once" in r.stdout
    assert "acme" in r.stdout and "rpm 1200" in r.stdout and "profile pro" in r.stdout
    ok(daemon, key)

    # Never again: not in any listing, text or JSON; the prefix is.
    outputs = [
        cli_ok(daemon, "tenant", "list"),
        cli_ok(daemon, "tenant", "list", "--json"),
        cli_ok(daemon, "tenant", "show", "acme"),
        cli_ok(daemon, "tenant", "show", "acme", "--json"),
        cli_ok(daemon, "tenant", "key", "list", "acme"),
        cli_ok(daemon, "tenant", "key", "list", "acme", "--json"),
    ]
    for out in outputs:
        assert key not in out and key[14:24] not in out, out
    assert key[:14] in outputs[2] and key[:14] in outputs[4] and key[:14] in outputs[5]


def test_create_json_list_and_show_json(daemon: Daemon) -> None:
    tenant, key = create_tenant(
        daemon, "globex", "--profile", "conservative", "--tpm", "5000", "--max-output", "64"
    )
    assert KEY_RE.fullmatch(key), key
    assert tenant["name"] == "globex" and tenant["enabled"] is True
    assert tenant["profile"] == "conservative" and tenant["id"].startswith("t_")
    assert tenant["overrides"] == {"tpm": 5000, "max_output_tokens": 64}
    assert tenant["limits"] == {
        "max_concurrent": 1,
        "rpm": 60,
        "tpm": 5000,
        "max_context_tokens": 4096,
        "max_output_tokens": 64,
        "allowed_models": None,
    }
    listed = daemon.cli_json("tenant", "list", "--json")["tenants"]
    assert tenant in listed
    shown = daemon.cli_json("tenant", "show", "globex", "--json")
    assert shown == daemon.cli_json("tenant", "show", tenant["id"], "--json")
    assert {k: v for k, v in shown.items() if k != "keys"} == tenant
    assert [k["prefix"] for k in shown["keys"]] == [key[:14]]
    assert shown["keys"][0]["status"] == "active"
    text = cli_ok(daemon, "tenant", "list")
    assert "globex" in text and tenant["id"] in text


def test_create_errors_name_what_was_wrong(daemon: Daemon) -> None:
    create_tenant(daemon, "dupe")
    r = daemon.cli("tenant", "create", "dupe")
    assert r.returncode == EXIT_CONFLICT, (r.returncode, r.stderr)
    assert "dupe" in r.stderr
    r = daemon.cli("tenant", "create", "bad name")
    assert r.returncode == EXIT_USAGE and "bad name" in r.stderr, (r.returncode, r.stderr)
    r = daemon.cli("tenant", "create", "p", "--profile", "platinum")
    assert r.returncode == EXIT_USAGE and "platinum" in r.stderr, (r.returncode, r.stderr)
    r = daemon.cli("tenant", "show", "nobody")
    assert r.returncode == EXIT_NOT_FOUND and "nobody" in r.stderr, (r.returncode, r.stderr)


# -- set / disable / enable / rm ------------------------------------------------------------------


def test_set_applies_to_the_next_request(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "initech", "--max-output", "100")
    ok(daemon, key, max_tokens=50)

    out = daemon.cli_json("tenant", "set", "initech", "--max-output", "10", "--json")
    assert out["limits"]["max_output_tokens"] == 10
    err = assert_error(chat(daemon, key, "alpha", max_tokens=50), 400, "output_too_long")
    assert "10" in err["message"], err
    ok(daemon, key, max_tokens=10)

    daemon.cli_json("tenant", "set", "initech", "--models", "beta", "--json")
    assert_error(chat(daemon, key, "alpha"), 403, "model_not_allowed", "permission_error")
    ok(daemon, key, "beta")
    cli_ok(daemon, "tenant", "set", "initech", "--models", "*")
    ok(daemon, key, "alpha")

    out = daemon.cli_json("tenant", "set", "initech", "--profile", "pro", "--json")
    assert out["profile"] == "pro" and out["limits"]["max_concurrent"] == 4
    assert out["limits"]["max_output_tokens"] == 10  # the override stays
    text = cli_ok(daemon, "tenant", "set", "initech", "--rpm", "7")
    assert "rpm 7" in text


def test_disable_refuses_the_next_request_and_enable_restores(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "hooli")
    ok(daemon, key)
    out = daemon.cli_json("tenant", "disable", "hooli", "--json")
    assert out["enabled"] is False
    err = assert_error(chat(daemon, key, "alpha"), 403, "tenant_disabled", "permission_error")
    assert "hooli" in err["message"]
    assert "DISABLED" in cli_ok(daemon, "tenant", "show", "hooli")
    assert cli_ok(daemon, "tenant", "key", "list", "hooli", "--json")  # keys are kept
    assert daemon.cli_json("tenant", "enable", "hooli", "--json")["enabled"] is True
    ok(daemon, key)


def test_rm_deletes_the_tenant_and_its_keys(daemon: Daemon) -> None:
    tenant, key = create_tenant(daemon, "umbrella")
    ok(daemon, key)
    # Without --yes it asks; "n" → nothing deleted.
    r = cli_answer(daemon, "n\n", "tenant", "rm", "umbrella")
    assert r.returncode == 1 and "umbrella" in r.stdout, (r.returncode, r.stdout, r.stderr)
    ok(daemon, key)
    out = cli_ok(daemon, "tenant", "rm", "umbrella", "--yes")
    assert "umbrella" in out and tenant["id"] in out
    refused_key(daemon, key)
    r = daemon.cli("tenant", "show", "umbrella")
    assert r.returncode == EXIT_NOT_FOUND, r.stderr
    assert "umbrella" not in cli_ok(daemon, "tenant", "list")


# -- keys --------------------------------------------------------------------------------------


def test_key_create_and_list_show_prefixes_only(daemon: Daemon) -> None:
    _, key1 = create_tenant(daemon, "wayne")
    r = daemon.cli("tenant", "key", "create", "wayne")
    assert r.returncode == 0, r.stderr
    key2 = r.stdout.strip()
    assert KEY_RE.fullmatch(key2) and key2 != key1, r.stdout
    ok(daemon, key1)
    ok(daemon, key2)
    keys = keys_json(daemon, "wayne")
    assert [k["prefix"] for k in keys] == [key1[:14], key2[:14]]
    assert all(k["status"] == "active" and k["expires_at"] is None for k in keys)
    assert all(k["last_used_at"] is not None for k in keys)  # both were just used
    text = cli_ok(daemon, "tenant", "key", "list", "wayne")
    assert key1[:14] in text and key2[:14] in text
    assert key1 not in text and key2 not in text and "active" in text


def test_rotate_with_grace_keeps_the_old_key_working(daemon: Daemon) -> None:
    _, old = create_tenant(daemon, "stark")
    t0 = time.time()
    r = daemon.cli("tenant", "key", "rotate", "stark")
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert KEY_RE.fullmatch(new) and new != old
    assert "24h" in r.stderr
    ok(daemon, old)
    ok(daemon, new)
    by_prefix = {k["prefix"]: k for k in keys_json(daemon, "stark")}
    assert by_prefix[new[:14]]["expires_at"] is None
    expires = by_prefix[old[:14]]["expires_at"]
    assert isinstance(expires, float) and abs(expires - (t0 + 86400)) < 60, expires

    # A shorter grace moves the expiry of the other keys.
    out = daemon.cli_json("tenant", "key", "rotate", "stark", "--grace", "30m", "--json")
    assert out["grace_s"] == 1800
    newest = out["key"]
    keys = {k["prefix"]: k for k in keys_json(daemon, "stark")}
    for prefix in (old[:14], new[:14]):
        exp = keys[prefix]["expires_at"]
        assert isinstance(exp, float) and abs(exp - (t0 + 1800)) < 60, keys[prefix]
    for k in (old, new, newest):
        ok(daemon, k)


def test_rotate_with_grace_0_refuses_the_old_key_on_the_very_next_request(daemon: Daemon) -> None:
    _, old = create_tenant(daemon, "tyrell")
    _, other = create_tenant(daemon, "tyrell-neighbour")
    ok(daemon, old)  # cached by the authenticator now
    r = daemon.cli("tenant", "key", "rotate", "tyrell", "--grace", "0")
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert "revoked" in r.stderr
    refused_key(daemon, old)
    ok(daemon, new)
    ok(daemon, other)  # another tenant's key is untouched
    status = {k["prefix"]: k["status"] for k in keys_json(daemon, "tyrell")}
    assert status == {old[:14]: "revoked", new[:14]: "active"}


def test_revoke_refuses_the_key_on_the_very_next_request(daemon: Daemon) -> None:
    _, key1 = create_tenant(daemon, "cyberdyne")
    key2 = cli_ok(daemon, "tenant", "key", "create", "cyberdyne").strip()
    ok(daemon, key1)
    ok(daemon, key2)
    out = cli_ok(daemon, "tenant", "key", "revoke", key1[:14])
    assert key1[:14] in out
    refused_key(daemon, key1)
    ok(daemon, key2)  # the tenant's other key still works
    out_json = daemon.cli_json(
        "tenant", "key", "revoke", key2[:14], "--tenant", "cyberdyne", "--json"
    )
    assert out_json["status"] == "revoked" and out_json["revoked_at"] is not None
    refused_key(daemon, key2)
    r = daemon.cli("tenant", "key", "revoke", "sk-st-NoSuchKy")
    assert r.returncode == EXIT_NOT_FOUND and "sk-st-NoSuchKy" in r.stderr, (r.returncode, r.stderr)


# -- limits end to end ---------------------------------------------------------------------------


def test_rpm_2_refuses_the_third_request_in_a_minute_with_retry_after(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "rpm2", "--rpm", "2")
    _, other = create_tenant(daemon, "rpm2-neighbour", "--rpm", "2")
    ok(daemon, key)
    ok(daemon, key)
    resp = chat(daemon, key, "alpha")
    err = assert_error(resp, 429, "limit_rpm", "rate_limit_error")
    # Computed, not a constant: one request refills every 30 s at 2 rpm.
    assert 20 <= retry_after(resp) <= 30, resp.headers
    assert "rpm" in err["message"].lower() or "per minute" in err["message"], err
    # Refused again (a refusal consumes nothing, but nothing refilled either) …
    assert_error(chat(daemon, key, "alpha"), 429, "limit_rpm")
    # … while another tenant's bucket is its own.
    ok(daemon, other)
    # Raising the limit applies to the next request.
    cli_ok(daemon, "tenant", "set", "rpm2", "--rpm", "600")
    ok(daemon, key)


def test_max_output_cap_rejects_and_fills_in(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "capped", "--max-output", "8")
    resp = chat(daemon, key, "alpha", max_tokens=9)
    err = assert_error(resp, 400, "output_too_long", "invalid_request_error")
    assert err["param"] == "max_tokens" and "8" in err["message"], err
    resp = chat(daemon, key, "alpha", max_tokens=None, max_completion_tokens=9)
    assert_error(resp, 400, "output_too_long")
    # At the cap: served. Naming none: the cap is set explicitly (the stand-in would make 16).
    assert chat(daemon, key, "alpha", max_tokens=8).json()["usage"]["completion_tokens"] == 8
    none = chat(daemon, key, "alpha", max_tokens=None)
    assert none.status_code == 200 and none.json()["usage"]["completion_tokens"] == 8
