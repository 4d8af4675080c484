"""``Mailbox``: what the gateway and the control API do with kept results and webhooks.

The gateway keeps a record (:meth:`Mailbox.keep`) when a request in mailbox mode ends with
its client gone (or, in ``always`` mode, at every end), and queues its delivery in the same
transaction when a webhook is wanted; the worker is woken. Reads are per tenant (the admin
passes ``None``): a record of another tenant is a plain 404, as one that never existed.
:meth:`Mailbox.redeliver` makes one try at once (optionally to another URL with another
bearer and headers) and answers whether it was delivered; it is logged like the others.

The webhook payload (the bytes every try sends, stored in the outbox)::

    {"id": REQUEST_ID, "request_id": REQUEST_ID, "event": "request.completed",
     "client_disconnected": true, "model": ..., "created": ..., "status": "completed",
     "response": {the complete non-stream answer, usage included}}
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studioctl.errors import GatewayError, NotFoundError
from studioctl.settings.webhook import MailboxSettings, WebhookSettings
from studioctl.store.mailbox import MailboxRecord, MailboxRepo, OutboxEntry
from studioctl.webhooks.target import TargetRefused, check_url
from studioctl.webhooks.worker import DeliveryWorker

__all__ = ["MAX_LIST", "Mailbox", "WebhookRequest", "payload_bytes"]

MAX_LIST = 1000


@dataclass(frozen=True)
class WebhookRequest:
    """Where a record's delivery goes: ``url`` (checked), and the request's own headers
    (``Authorization`` from ``X-Webhook-Bearer``)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)


def payload_bytes(record: MailboxRecord, disconnected: bool) -> str:
    """The delivery's body (see the module docstring), compact JSON."""
    doc = {
        "id": record.request_id,
        "request_id": record.request_id,
        "event": "request.completed" if record.status == "completed" else "request.failed",
        "client_disconnected": disconnected,
        "model": record.model,
        "created": int(record.created),
        "status": record.status,
        "response": record.response,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _not_found(request_id: str) -> NotFoundError:
    return NotFoundError(
        f"no mailbox record {request_id[:128]!r} (never kept, deleted, or past "
        "mailbox.retention_secs)",
        details={"param": "request_id"},
    )


class Mailbox:
    """Kept results and their deliveries (see the module docstring)."""

    def __init__(
        self,
        *,
        repo: MailboxRepo,
        webhook: WebhookSettings,
        mailbox: MailboxSettings,
        worker: DeliveryWorker,
        clock: Callable[[], float],
    ) -> None:
        self.repo = repo
        self.webhook = webhook
        self.settings = mailbox
        self.worker = worker
        self.clock = clock

    # -- the gateway's side -------------------------------------------------------------------

    async def keep(
        self,
        *,
        request_id: str,
        tenant_id: str,
        model: str | None,
        created: float,
        status: str,
        response: Any,
        disconnected: bool,
        webhook: WebhookRequest | None,
    ) -> None:
        """Store the record (and queue its delivery); runs in a thread (the store's calls)."""
        now = self.clock()
        record = MailboxRecord(
            request_id=request_id,
            tenant_id=tenant_id,
            model=model,
            created=created,
            status=status,
            response=response,
            expires_at=now + self.settings.retention_secs,
        )
        entry = None
        if webhook is not None:
            entry = OutboxEntry(
                request_id=request_id,
                url=webhook.url,
                payload=payload_bytes(record, disconnected),
                headers=dict(webhook.headers),
                max_attempts=self.webhook.retry_count + 1,
                next_at=now,
            )
        await asyncio.to_thread(self.repo.put, record, entry, now)
        if entry is not None:
            self.worker.wake()

    # -- reading ------------------------------------------------------------------------------

    async def listing(self, tenant_id: str | None, limit: int = 100) -> dict[str, Any]:
        """``{"object": "list", "count", "data"}``: the records (no responses), newest first."""
        rows = await asyncio.to_thread(self.repo.list, tenant_id, max(1, min(limit, MAX_LIST)))
        data = [r.to_dict() for r in rows]
        return {"object": "list", "count": len(data), "data": data}

    async def read(self, request_id: str, tenant_id: str | None, *, auto_delete: bool) -> Any:
        """The record (``auto_delete``: read and deleted in one transaction)."""
        fn = self.repo.take if auto_delete else self.repo.get
        record = await asyncio.to_thread(fn, request_id, tenant_id)
        if record is None:
            raise _not_found(request_id)
        return record.to_dict()

    async def details(self, request_id: str, tenant_id: str | None) -> dict[str, Any]:
        """The record with its delivery: the outbox state and every try."""
        record = await asyncio.to_thread(self.repo.get, request_id, tenant_id)
        if record is None:
            raise _not_found(request_id)
        entry = await asyncio.to_thread(self.repo.outbox, request_id)
        tries = await asyncio.to_thread(self.repo.attempts, request_id)
        out = record.to_dict()
        out["tenant_id"] = record.tenant_id
        out["delivery"] = None
        if entry is not None:
            out["delivery"] = {
                "state": entry.state,
                "tries": entry.attempts,
                "max_tries": entry.max_attempts,
                "next_at": entry.next_at if entry.state == "pending" else None,
            }
        out["attempts"] = [a.to_dict() for a in tries]
        return out

    async def delete(self, request_id: str, tenant_id: str | None) -> None:
        if not await asyncio.to_thread(self.repo.delete, request_id, tenant_id):
            raise _not_found(request_id)

    # -- delivering again ---------------------------------------------------------------------

    async def redeliver(
        self,
        request_id: str,
        tenant_id: str | None,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One try now, to ``url`` (else the record's, else ``webhook.url``): 502
        ``webhook_failed`` naming why when it is not delivered."""
        record = await asyncio.to_thread(self.repo.get, request_id, tenant_id)
        if record is None:
            raise _not_found(request_id)
        old = await asyncio.to_thread(self.repo.outbox, request_id)
        target = url or (old.url if old is not None else None) or self.webhook.url
        if target is None:
            raise GatewayError(
                400,
                "webhook_url_missing",
                "no webhook URL: give one (url) or set webhook.url",
                param="url",
            )
        try:
            check_url(target)
        except TargetRefused as exc:
            raise GatewayError(400, "invalid_webhook_url", str(exc), param="url") from None
        merged = dict(old.headers) if old is not None and url is None else {}
        merged.update(headers or {})
        now = self.clock()
        entry = OutboxEntry(
            request_id=request_id,
            url=target,
            payload=old.payload if old is not None else payload_bytes(record, False),
            headers=merged,
            max_attempts=1,
            state="sending",  # not pending: the worker leaves it, this try is made here
            next_at=now,
        )
        attempt = await self.worker.attempt(entry)
        ok = attempt.status_code is not None and 200 <= attempt.status_code < 300
        await asyncio.to_thread(self.repo.enqueue, entry, now)
        await asyncio.to_thread(
            self.repo.attempted, attempt, "delivered" if ok else "failed", 1, attempt.at
        )
        if not ok:
            raise GatewayError(
                502,
                "webhook_failed",
                f"the webhook at {attempt.url} was not delivered: {attempt.error}",
            )
        return {"status": "delivered", "request_id": request_id, "url": attempt.url}
