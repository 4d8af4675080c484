"""The mailbox through a real daemon and the stand-in engine streaming slowly: a client that
hangs up after the first chunk leaves a complete record, every token accounted; the webhook
reaches a real receiver signed, failing twice, and arrives on the third try across a daemon
restart; the tenant's routes (404 for another tenant, auto_delete, DELETE, the URL override
flag) and ``studioctl mailbox``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from mailbox.helpers import leave_after_first_chunk, mailbox_get, wait_record
from mailbox.receiver import Receiver, receiver
from typing import Any

import httpx
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    base_url,
    create_tenant,
    gateway_daemon,
    launch,
)
from helpers import wait_for
from studioctl.errors import EXIT_NOT_FOUND, NotFoundError
from studioctl.webhooks.signing import verify

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SECRET = "mailbox-test-signing-secret"
RETRY_MS = 3000  # the first retry comes 3-4.5 s after the first try: time to restart
TOKENS = 40  # 40 × 50 ms: the stream outlives its client by about 2 s


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with receiver([500, 500]) as r:  # the first two tries fail, the third succeeds
        yield r


@pytest.fixture(scope="module")
def daemon(rx: Receiver) -> Iterator[Daemon]:
    env = {
        "STUDIOCTL_WEBHOOK_URL": rx.url,
        "STUDIOCTL_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on the loopback
        "STUDIOCTL_WEBHOOK_RETRY_COUNT": "2",
        "STUDIOCTL_WEBHOOK_RETRY_DELAY_MS": str(RETRY_MS),
        "STUDIOCTL_WEBHOOK_SIGN_PAYLOAD": "true",
        "STUDIOCTL_WEBHOOK_SIGNING_SECRET": SECRET,
    }
    recipes = {"slow": {"env": {"STANDIN_TOKEN_DELAY_S": "0.05"}}}
    with gateway_daemon(recipes, admin_token=ADMIN_TOKEN, env=env) as d:
        launch(d, "slow")
        yield d


@pytest.fixture(scope="module")
def keys(daemon: Daemon) -> dict[str, str]:
    _, acme = create_tenant(daemon, "acme")
    _, other = create_tenant(daemon, "other")
    _, hooky = create_tenant(daemon, "hooky", "--webhook-url-override")
    return {"acme": acme, "other": other, "hooky": hooky}


def request_log(d: Daemon, rid: str) -> list[dict[str, Any]]:
    """The request log's rows of ``rid`` (none until the usage writer wrote it)."""
    with d.client() as c:
        try:
            out = c.requests(rid)
        except NotFoundError:
            return []
    rows: list[dict[str, Any]] = out["data"]
    return rows


def kept(d: Daemon, key: str, tokens: int = 8) -> str:
    """A request kept without a webhook (X-Mailbox: keep), its client gone; its id."""
    rid = leave_after_first_chunk(d, key, "slow", max_tokens=tokens, headers={"X-Mailbox": "keep"})
    wait_record(d, key, rid)
    return rid


def test_another_tenants_key_finds_nothing(daemon: Daemon, keys: dict[str, str]) -> None:
    rid = kept(daemon, keys["acme"])
    other = {"Authorization": f"Bearer {keys['other']}"}
    with httpx.Client(base_url=base_url(daemon), timeout=30) as c:
        assert_error(c.get(f"/v1/mailbox/{rid}", headers=other), 404, "not_found")
        assert_error(c.delete(f"/v1/mailbox/{rid}", headers=other), 404, "not_found")
        assert_error(c.post(f"/v1/mailbox/{rid}/webhook", headers=other), 404, "not_found")
        listing = c.get("/v1/mailbox", headers=other).json()
    assert listing == {"object": "list", "count": 0, "data": []}
    mine = mailbox_get(daemon, keys["acme"], rid)  # still there for its tenant
    assert mine.status_code == 200 and mine.json()["request_id"] == rid


def test_auto_delete_reads_once_and_delete_answers_204_then_404(
    daemon: Daemon, keys: dict[str, str]
) -> None:
    key = keys["acme"]
    rid = kept(daemon, key)
    listing = httpx.get(
        f"{base_url(daemon)}/v1/mailbox", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert listing["object"] == "list" and rid in [r["request_id"] for r in listing["data"]]
    assert listing["count"] == len(listing["data"])
    first = mailbox_get(daemon, key, rid, auto_delete="true")
    assert first.status_code == 200 and first.json()["status"] == "completed"
    assert_error(mailbox_get(daemon, key, rid), 404, "not_found")
    rid2 = kept(daemon, key)
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url(daemon), timeout=30) as c:
        assert c.delete(f"/v1/mailbox/{rid2}", headers=h).status_code == 204
        assert_error(c.delete(f"/v1/mailbox/{rid2}", headers=h), 404, "not_found")


def test_a_url_override_needs_the_tenant_flag(daemon: Daemon, keys: dict[str, str]) -> None:
    body = {"model": "slow", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"X-Webhook-URL": "http://127.0.0.1:9/elsewhere"}
    with httpx.Client(base_url=base_url(daemon), timeout=30) as c:
        refused = c.post(
            "/v1/chat/completions",
            json=body,
            headers={**headers, "Authorization": f"Bearer {keys['acme']}"},
        )
        err = assert_error(refused, 403, "webhook_url_override_forbidden")
        assert "X-Webhook-URL" in err["message"] and "acme" in err["message"]
        allowed = c.post(
            "/v1/chat/completions",
            json=body,
            headers={**headers, "Authorization": f"Bearer {keys['hooky']}"},
        )
        assert allowed.status_code == 200, allowed.text
        bad_mode = c.post(
            "/v1/chat/completions",
            json=body,
            headers={"X-Webhook-Mode": "sometimes", "Authorization": f"Bearer {keys['acme']}"},
        )
        assert_error(bad_mode, 400, "invalid_webhook_mode")


def test_always_mode_keeps_and_delivers_with_the_requests_bearer(
    daemon: Daemon, keys: dict[str, str]
) -> None:
    """A tenant with the override flag names its receiver and bearer; in ``always`` mode a
    whole (non-stream) answer its client received is kept and delivered too."""
    bearer = "receiver-bearer-7d1e"
    body = {"model": "slow", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    with receiver() as own, httpx.Client(base_url=base_url(daemon), timeout=30) as c:
        resp = c.post(
            "/v1/chat/completions",
            json=body,
            headers={
                "Authorization": f"Bearer {keys['hooky']}",
                "X-Webhook-URL": own.url,
                "X-Webhook-Mode": "always",
                "X-Webhook-Bearer": bearer,
            },
        )
        assert resp.status_code == 200, resp.text
        rid = resp.headers["x-request-id"]
        wait_for(lambda: own.count() >= 1, timeout=15, what="the delivery")
        hit = own.hits[0]
    assert hit.headers["authorization"] == f"Bearer {bearer}"
    payload = json.loads(hit.body)
    assert payload["client_disconnected"] is False
    assert payload["response"] == resp.json()  # the answer the client got, kept as it was
    record = wait_record(daemon, keys["hooky"], rid)
    assert record["response"]["usage"]["completion_tokens"] == 3
    shown = daemon.cli_ok("mailbox", "show", rid, "--json")
    assert bearer not in shown and bearer not in daemon.log_text(200_000)


def test_a_whole_answer_and_a_completions_stream_are_kept_when_the_client_leaves(
    daemon: Daemon, keys: dict[str, str]
) -> None:
    key = keys["acme"]
    body = {"model": "slow", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]}
    h = {"Authorization": f"Bearer {key}", "X-Mailbox": "keep", "X-Request-Id": "whole-1"}
    with (
        httpx.Client(base_url=base_url(daemon), timeout=0.5) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        c.post("/v1/chat/completions", json=body, headers=h)  # 30 × 50 ms: it gives up
    record = wait_record(daemon, key, "whole-1")
    assert record["response"]["object"] == "chat.completion"
    assert record["response"]["usage"]["completion_tokens"] == 30
    rid = leave_after_first_chunk(
        daemon, key, "slow", max_tokens=12, headers={"X-Mailbox": "keep"}, path="/v1/completions"
    )
    text = wait_record(daemon, key, rid)["response"]
    assert text["object"] == "text_completion"
    assert text["choices"][0]["text"].split() == [f"tok{i}" for i in range(12)]
    assert text["usage"]["completion_tokens"] == 12
    rid = leave_after_first_chunk(
        daemon, key, "slow", max_tokens=10, headers={"X-Mailbox": "keep"}, path="/v1/responses"
    )
    response = wait_record(daemon, key, rid)["response"]
    assert response["object"] == "response" and response["usage"]["output_tokens"] == 10


def test_a_tenant_redelivers_its_record_to_its_own_receiver(
    daemon: Daemon, keys: dict[str, str]
) -> None:
    rid = kept(daemon, keys["hooky"])
    h = {"Authorization": f"Bearer {keys['hooky']}"}
    with receiver() as own, httpx.Client(base_url=base_url(daemon), timeout=30) as c:
        body = {"url": own.url, "bearer_token": "b-42", "headers": {"X-Tag": "t"}}
        out = c.post(f"/v1/mailbox/{rid}/webhook", json=body, headers=h)
        assert out.status_code == 200, out.text
        assert out.json() == {"status": "delivered", "request_id": rid, "url": own.url}
        hit = own.hits[0]
        assert hit.headers["authorization"] == "Bearer b-42" and hit.headers["x-tag"] == "t"
        assert json.loads(hit.body)["request_id"] == rid
        other = {"Authorization": f"Bearer {keys['acme']}"}
        assert_error(c.post(f"/v1/mailbox/{rid}/webhook", headers=other), 404, "not_found")
        # An override is refused for what the tenant may do, before any record is looked up.
        refused = c.post(f"/v1/mailbox/{rid}/webhook", json={"url": own.url}, headers=other)
        assert_error(refused, 403, "webhook_url_override_forbidden")
        assert own.count() == 1


def test_the_mailbox_cli_lists_shows_redelivers_and_removes(
    daemon: Daemon, keys: dict[str, str]
) -> None:
    rid = kept(daemon, keys["acme"])
    listing = daemon.cli_json("mailbox", "list", "--tenant", "acme", "--json")
    assert rid in [r["request_id"] for r in listing["data"]]
    shown = daemon.cli_json("mailbox", "show", rid, "--json")
    assert shown["request_id"] == rid and shown["delivery"] is None and shown["attempts"] == []
    with receiver() as other:
        out = daemon.cli_json("mailbox", "redeliver", rid, "--url", other.url, "--json")
        assert out == {"status": "delivered", "request_id": rid, "url": other.url}
        assert other.count() == 1
        payload = json.loads(other.hits[0].body)
        assert payload["id"] == payload["request_id"] == rid
        assert other.hits[0].headers["x-request-id"] == rid
    shown = daemon.cli_json("mailbox", "show", rid, "--json")
    assert [a["status_code"] for a in shown["attempts"]] == [200]
    text = daemon.cli_ok("mailbox", "show", rid)
    assert "try 1" in text and "200" in text
    daemon.cli_ok("mailbox", "rm", rid)
    gone = daemon.cli("mailbox", "show", rid)
    assert gone.returncode == EXIT_NOT_FOUND, gone.stderr


def test_a_client_gone_leaves_a_complete_record_and_a_signed_webhook_across_a_restart(
    daemon: Daemon, keys: dict[str, str], rx: Receiver
) -> None:
    key = keys["acme"]
    t0 = time.time()
    rid = leave_after_first_chunk(
        daemon, key, "slow", max_tokens=TOKENS, headers={"X-Webhook-Mode": "on_disconnect"}
    )
    record = wait_record(daemon, key, rid)
    # The whole answer, assembled into the non-stream shape, with the engine's usage.
    assert record["status"] == "completed" and record["model"] == "slow"
    response = record["response"]
    assert response["object"] == "chat.completion"
    message = response["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"] == " ".join(f"tok{i}" for i in range(TOKENS))
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == TOKENS
    # The usage row counts every token, though the client left after the first.
    rows = wait_for(lambda: request_log(daemon, rid), timeout=10, what="the usage row")
    assert len(rows) == 1, rows
    assert rows[0]["completion_tokens"] == TOKENS
    assert rows[0]["disconnected"] and rows[0]["status"] == 200 and rows[0]["streamed"]
    # The first try fails (500); the daemon restarts before the second is due.
    wait_for(lambda: rx.count() >= 1, timeout=15, what="the first delivery")
    first_at = time.time()
    daemon.stop(stop_engines=False)
    assert rx.count() == 1, "the second try came before the restart: raise RETRY_MS"
    daemon.start()
    wait_for(lambda: rx.count() >= 3, timeout=40, what=lambda: f"3 tries, got {rx.count()}")
    time.sleep(0.5)
    assert rx.count() == 3  # exactly retry_count + 1 tries: no more after the success
    statuses = [h.status for h in rx.hits]
    assert statuses == [500, 500, 200]
    assert time.time() - first_at >= RETRY_MS / 1000  # the backoff held across the restart
    for hit in rx.hits:  # every try: the same bytes, signed, with the request id
        assert hit.body == rx.hits[0].body
        assert hit.headers["x-request-id"] == rid
        stamp = hit.headers["x-webhook-timestamp"]
        assert abs(int(stamp) - t0) < 120
        assert verify(SECRET, stamp, hit.body, hit.headers["x-webhook-signature"])
        assert not verify("another secret", stamp, hit.body, hit.headers["x-webhook-signature"])
    payload = json.loads(rx.hits[2].body)
    assert payload["id"] == payload["request_id"] == rid
    assert payload["client_disconnected"] is True
    assert payload["response"]["usage"]["completion_tokens"] == TOKENS
    # The delivery log: every try, its status, and the delivery done.
    shown = daemon.cli_json("mailbox", "show", rid, "--json")
    assert [a["status_code"] for a in shown["attempts"]] == [500, 500, 200]
    assert [a["attempt"] for a in shown["attempts"]] == [1, 2, 3]
    assert shown["delivery"]["state"] == "delivered" and shown["delivery"]["tries"] == 3
    assert all(SECRET not in json.dumps(a) for a in shown["attempts"])
    assert SECRET not in daemon.log_text(200_000)
