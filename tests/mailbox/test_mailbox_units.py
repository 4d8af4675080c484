"""The mailbox's parts on their own: stream assembly, signatures, receiver URL checks, the
SQLite repository (tenant scoping, atomic read-and-delete, outbox, pruning), the settings,
and the delivery worker against a real receiver (retries, backoff, a new worker going on
from the outbox as after a restart)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from mailbox.receiver import receiver
from pathlib import Path

import pytest

from pg_server import pg_server  # noqa: F401 — the session's PostgreSQL, for ``repo``
from studioctl.errors import ConfigError, ConflictError
from studioctl.gateway.mailbox_assemble import (
    assemble_chat,
    assemble_completion,
    assemble_responses,
)
from studioctl.settings import load_settings
from studioctl.settings.webhook import WebhookSettings
from studioctl.store.db import Database
from studioctl.store.mailbox import MailboxRecord, MailboxRepo, OutboxEntry
from studioctl.store.migrations import migrate
from studioctl.store.sqlite import SqliteDatabase
from studioctl.webhooks.signing import sign, verify
from studioctl.webhooks.target import TargetRefused, check_url, literal_private, resolve, shown
from studioctl.webhooks.worker import DeliveryWorker


def sse(*objs: object) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs) + b"data: [DONE]\n\n"
    )


def test_a_chat_stream_is_assembled_with_tool_calls_reasoning_and_usage() -> None:
    head = {"id": "c1", "created": 7, "model": "m", "object": "chat.completion.chunk"}
    data = sse(
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**head, "choices": [{"index": 0, "delta": {"reasoning_content": "think "}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            **head,
            "choices": [
                {
                    "index": 1,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "t1",
                                "type": "function",
                                "function": {"name": "get", "arguments": '{"a":'},
                            }
                        ]
                    },
                }
            ],
        },
        {
            **head,
            "choices": [
                {
                    "index": 1,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]},
                    "finish_reason": "tool_calls",
                }
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ).replace(b"\n", b"\r\n")  # any line ends
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    out = assemble_chat(data, usage)
    assert out["object"] == "chat.completion" and out["id"] == "c1" and out["usage"] == usage
    first, second = out["choices"]
    assert first["message"] == {
        "role": "assistant",
        "content": "Hello",
        "reasoning_content": "think ",
    }
    assert first["finish_reason"] == "stop"
    assert second["message"]["content"] is None
    assert second["message"]["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]


def test_completions_and_responses_streams_are_assembled() -> None:
    head = {"id": "x", "created": 1, "model": "m"}
    data = sse(
        {**head, "choices": [{"index": 0, "text": "a "}]},
        {**head, "choices": [{"index": 0, "text": "b", "finish_reason": "length"}]},
    )
    out = assemble_completion(data, {"completion_tokens": 2})
    assert out["object"] == "text_completion"
    assert out["choices"] == [
        {"index": 0, "text": "a b", "logprobs": None, "finish_reason": "length"}
    ]
    response = {"id": "r", "output": [], "usage": {"output_tokens": 2}}
    events = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
        b"event: response.completed\ndata: "
        + json.dumps({"type": "response.completed", "response": response}).encode()
        + b"\n\n"
    )
    assert assemble_responses(events) == response
    assert assemble_responses(b"data: {}\n\n") is None


def test_a_signature_covers_the_timestamp_and_the_exact_bytes() -> None:
    body = b'{"id":"r1"}'
    header = sign("s", "sha256", "1700000000", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify("s", "1700000000", body, header)
    assert not verify("s", "1700000001", body, header)  # another time: a replay
    assert not verify("s", "1700000000", body + b" ", header)
    assert sign("s", "sha512", "1", body).startswith("sha512=")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://x/",
        "http://",
        "http://u:p@host/",
        "http://host:99999/",
        "http://a b/",
        "http://x/" + "a" * 3000,
    ],
)
def test_malformed_receiver_urls_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_url(url)


def test_private_addresses_are_refused_by_name_after_resolving_unless_allowed() -> None:
    assert literal_private("http://127.0.0.1/") and literal_private("http://localhost:8/")
    assert literal_private("http://169.254.169.254/latest") and literal_private("http://[::1]/")
    assert not literal_private("http://example.com/") and not literal_private("http://8.8.8.8/")
    assert shown("https://h:8443/p?token=secret") == "https://h:8443/p"

    async def go() -> None:
        with pytest.raises(TargetRefused, match="not a public address"):
            await resolve("http://localhost:8080/hook", allow_private=False)
        ok = await resolve("http://localhost:8080/hook", allow_private=True)
        assert ok.host == "localhost:8080" and ok.sni is None
        assert ok.url.startswith(("http://127.0.0.1:8080/", "http://[::1]:8080/"))

    asyncio.run(go())


@pytest.fixture(params=["sqlite", "postgres"])
def repo(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MailboxRepo]:
    """The repository on each store backend (the mailbox lives in the store's database)."""
    db: Database
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "m.db")
    else:
        from studioctl.store.postgres import PostgresDatabase

        server = request.getfixturevalue("pg_server")
        db = PostgresDatabase(server.new_database(), owner="host-a")
    migrate(db)
    yield MailboxRepo(db)
    db.close()


def record(rid: str, tenant: str = "t_a", expires: float = 2e9) -> MailboxRecord:
    return MailboxRecord(rid, tenant, "m", 100.0, "completed", {"choices": []}, expires)


def test_records_belong_to_their_tenant_and_are_taken_once(repo: MailboxRepo) -> None:
    repo.put(record("r1"), None, 1.0)
    repo.put(record("r2", "t_b"), None, 1.0)
    assert [r.request_id for r in repo.list("t_a", 10)] == ["r1"]
    assert {r.request_id for r in repo.list(None, 10)} == {"r1", "r2"}  # the admin
    assert repo.get("r1", "t_b") is None and not repo.delete("r1", "t_b")
    got = repo.take("r1", "t_a")
    assert got is not None and got.response == {"choices": []}
    assert repo.take("r1", "t_a") is None
    assert repo.delete("r2", None) and repo.list(None, 10) == []


def test_an_id_another_tenant_keeps_is_never_replaced(repo: MailboxRepo) -> None:
    """Tenant B sends tenant A's request id (X-Request-Id is the client's to choose): A's
    record and its delivery stay as they were; B's result is refused; A may replace its own."""
    entry = OutboxEntry("r1", "http://a/", "{}", {}, max_attempts=3)
    repo.put(record("r1"), entry, 1.0)
    with pytest.raises(ConflictError, match="another tenant's kept result"):
        repo.put(record("r1", "t_b"), None, 2.0)
    kept = repo.get("r1", "t_a")
    assert kept is not None and kept.tenant_id == "t_a" and repo.outbox("r1") == entry
    assert repo.get("r1", "t_b") is None
    repo.put(record("r1", expires=3e9), None, 3.0)  # its own tenant: replaced
    again = repo.get("r1", "t_a")
    assert again is not None and again.expires_at == 3e9 and repo.outbox("r1") is None


def test_the_outbox_and_pruning(repo: MailboxRepo) -> None:
    entry = OutboxEntry("r1", "http://h/", "{}", {"Authorization": "Bearer x"}, max_attempts=3)
    repo.put(record("r1", expires=50.0), entry, 10.0)
    assert [e.request_id for e in repo.due(10.0, 5)] == ["r1"] and repo.next_due() == 0.0
    assert repo.outbox("r1") == entry
    assert repo.prune(49.0) == 0 and repo.prune(50.0) == 1
    assert repo.outbox("r1") is None and repo.due(1e9, 5) == []


def test_webhook_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(
        "webhook:\n  url: ${HOOK}\n  headers: {X-Team: blue}\n"
        "  auth: {hmac: {secret: k, algorithm: sha512, header: X-Sig}, bearer: b}\n"
        "mailbox:\n  retention_secs: 60\n"
    )
    s = load_settings(file=f, env={"HOOK": "https://h/x", "STUDIOCTL_WEBHOOK_ENABLED": "yes"})
    assert s.webhook.url == "https://h/x" and s.webhook.enabled and s.mailbox.retention_secs == 60
    assert s.webhook.headers == (("X-Team", "blue"),)
    auth = s.webhook.auth
    assert auth is not None and auth.hmac_algorithm == "sha512" and auth.hmac_header == "X-Sig"
    shown_ = s.to_dict()["webhook"]
    assert shown_["auth"]["hmac"]["secret"] == "***" and shown_["auth"]["bearer"] == "***"
    env = load_settings(file=f, env={"HOOK": "h", "STUDIOCTL_WEBHOOK_HEADERS": '{"X-A": "1"}'})
    assert env.webhook.headers == (("X-A", "1"),)
    f.write_text("webhook:\n  auth:\n    hmac: {secret: k, algorithm: md5}\n")
    with pytest.raises(ConfigError, match=r"webhook\.auth\.hmac\.algorithm"):
        load_settings(file=f, env={})
    f.write_text("webhook:\n  headers: {Host: evil}\n")
    with pytest.raises(ConfigError, match="written by the delivery"):
        load_settings(file=f, env={})


def test_the_worker_retries_with_backoff_and_a_new_worker_goes_on(repo: MailboxRepo) -> None:
    """Tries 1 and 2 fail (500, then a 503); a new worker (a restarted daemon) makes try 3
    once its backoff is due, with the same signed bytes; then nothing more."""
    settings = WebhookSettings(
        allow_private=True, retry_count=2, retry_delay_ms=200, sign_payload=True,
        signing_secret="sec", headers=(("X-Team", "blue"),),
    )  # fmt: skip
    with receiver([500, 503]) as rx:
        entry = OutboxEntry("r1", rx.url, '{"id":"r1"}', {}, max_attempts=3, next_at=time.time())
        repo.put(record("r1"), entry, time.time())

        async def run(until: int, wait: float = 10.0) -> None:
            worker = DeliveryWorker(repo=repo, settings=settings)
            worker.start()
            try:
                deadline = time.monotonic() + wait
                while rx.count() < until and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)  # the log line of the last try is written
            finally:
                await worker.close()

        asyncio.run(run(2))
        assert [h.status for h in rx.hits] == [500, 503]
        gap = repo.attempts("r1")[1].at - repo.attempts("r1")[0].at
        assert 0.2 <= gap <= 0.5  # 200 ms, stretched by at most half
        pending = repo.outbox("r1")
        assert pending is not None and pending.state == "pending" and pending.attempts == 2
        assert pending.next_at - repo.attempts("r1")[1].at >= 0.4  # doubled
        asyncio.run(run(3))
        asyncio.run(run(4, wait=1.0))  # nothing is left to try: no fourth
        assert [h.status for h in rx.hits] == [500, 503, 200]
        done = repo.outbox("r1")
        assert done is not None and done.state == "delivered" and done.attempts == 3
        assert [a.attempt for a in repo.attempts("r1")] == [1, 2, 3]
        for hit in rx.hits:
            assert hit.body == b'{"id":"r1"}' and hit.headers["x-team"] == "blue"
            stamp = hit.headers["x-webhook-timestamp"]
            assert verify("sec", stamp, hit.body, hit.headers["x-webhook-signature"])
