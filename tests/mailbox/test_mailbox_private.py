"""Receivers on the loopback only with ``webhook.allow_private``; webhooks only for tenants
allowed them. A daemon without the setting: an override naming a loopback address is
refused at once (403), the configured loopback receiver is refused at delivery (its address
resolved and checked), logged in the delivery log, and never called."""

from __future__ import annotations

from collections.abc import Iterator
from mailbox.helpers import leave_after_first_chunk, wait_record
from mailbox.receiver import Receiver, receiver

import httpx
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import assert_error, base_url, create_tenant, gateway_daemon, launch
from helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture(scope="module")
def daemon(rx: Receiver) -> Iterator[Daemon]:
    env = {
        "STUDIOCTL_WEBHOOK_URL": rx.url,  # on the loopback, without allow_private
        "STUDIOCTL_WEBHOOK_RETRY_COUNT": "0",
    }
    recipes = {"slow": {"env": {"STANDIN_TOKEN_DELAY_S": "0.05"}}}
    with gateway_daemon(recipes, env=env) as d:
        launch(d, "slow")
        yield d


def chat(d: Daemon, key: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": "slow", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=base_url(d), timeout=30) as c:
        return c.post(
            "/v1/chat/completions", json=body, headers={**headers, "Authorization": f"Bearer {key}"}
        )


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/", "http://10.0.0.7/"],
)
def test_an_override_naming_a_private_address_is_refused(daemon: Daemon, url: str) -> None:
    _, key = create_tenant(daemon, f"t{abs(hash(url)) % 100000}", "--webhook-url-override")
    err = assert_error(chat(daemon, key, {"X-Webhook-URL": url}), 403, "webhook_url_refused")
    assert "webhook.allow_private" in err["message"]


def test_a_tenant_without_webhooks_may_not_ask_for_one(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "quiet", "--no-webhooks")
    err = assert_error(chat(daemon, key, {"X-Webhook-Mode": "always"}), 403, "webhooks_not_allowed")
    assert "quiet" in err["message"]
    shown = daemon.cli_json("tenant", "show", "quiet", "--json")
    assert shown["limits"]["webhooks"] is False


def test_the_configured_loopback_receiver_is_refused_at_delivery(
    daemon: Daemon, rx: Receiver
) -> None:
    _, key = create_tenant(daemon, "acme")
    rid = leave_after_first_chunk(
        daemon, key, "slow", max_tokens=10, headers={"X-Webhook-Mode": "on_disconnect"}
    )
    assert wait_record(daemon, key, rid)["status"] == "completed"

    def failed() -> dict[str, object] | None:
        shown: dict[str, object] = daemon.cli_json("mailbox", "show", rid, "--json")
        delivery = shown["delivery"]
        return shown if isinstance(delivery, dict) and delivery["state"] == "failed" else None

    shown = wait_for(failed, timeout=20, what="the refused delivery")
    attempts = shown["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 1
    assert attempts[0]["status_code"] is None
    assert "not a public address" in attempts[0]["error"]
    assert "webhook.allow_private" in attempts[0]["error"]
    assert rx.count() == 0


def test_a_redelivery_to_a_refused_receiver_answers_502_and_an_override_403(
    daemon: Daemon,
) -> None:
    _, key = create_tenant(daemon, "redo")
    rid = leave_after_first_chunk(daemon, key, "slow", max_tokens=6, headers={"X-Mailbox": "keep"})
    wait_record(daemon, key, rid)
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url(daemon), timeout=30) as c:
        failed = assert_error(
            c.post(f"/v1/mailbox/{rid}/webhook", headers=h), 502, "webhook_failed"
        )
        assert "not a public address" in failed["message"]
        override = c.post(
            f"/v1/mailbox/{rid}/webhook", json={"url": "https://example.com/x"}, headers=h
        )
        assert_error(override, 403, "webhook_url_override_forbidden")
