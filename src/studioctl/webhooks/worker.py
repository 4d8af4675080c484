"""The delivery worker: the outbox's pending deliveries sent in the background, retried.

One asyncio task in the daemon reads what is due from the outbox (``store.mailbox``; the
store's calls run in a thread, never on the event loop) and sends each in its own task, at
most ``webhook.max_concurrent`` at once, with one ``httpx.AsyncClient`` (no proxies from
the environment: a proxy would connect where ``target`` did not check; no redirects: a
redirect could lead anywhere). A try is a POST of the stored payload, the exact bytes it was
signed over (``signing``), to the address ``target.resolve`` checked; a 2xx answer delivers,
anything else (a status, a refusal, a timeout) is logged in the delivery log and tried
again after ``retry_delay_ms * 2**(tries - 1)``, stretched by up to half again at random
(jitter: receivers coming back are not hit by every sender at once), until
``retry_count`` retries were made: then the delivery is ``failed``. The outbox row is the only
state, so a restart goes on where the last daemon stopped (a try cut short by the stop is
made again: at least once; ``X-Request-Id`` and ``id`` in the payload let a receiver drop a
duplicate). Every minute the mailbox's expired records are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from studioctl.settings.webhook import WebhookAuth, WebhookSettings
from studioctl.store.mailbox import Attempt, MailboxRepo, OutboxEntry
from studioctl.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from studioctl.webhooks.target import TargetRefused, resolve, shown

if TYPE_CHECKING:
    import httpx

__all__ = ["PRUNE_EVERY_S", "DeliveryWorker", "delivery_headers"]

_log = logging.getLogger("studioctl.webhooks")

PRUNE_EVERY_S = 60.0
_POLL_S = 5.0  # the longest sleep: a delivery queued by another process is seen this late
_MAX_ERROR = 200


def delivery_headers(
    settings: WebhookSettings, entry: OutboxEntry, body: bytes, at: float
) -> dict[str, str]:
    """The headers of one try: the configured ones, the configured auth, the request's own
    (its bearer), then ours (content type, request id, timestamp, signatures)."""
    out = dict(settings.headers)
    auth = settings.auth or WebhookAuth()
    if auth.bearer is not None:
        out["Authorization"] = f"Bearer {auth.bearer}"
    if auth.api_key is not None and auth.api_key_header is not None:
        out[auth.api_key_header] = auth.api_key
    out.update(entry.headers)
    stamp = str(int(at))
    out["Content-Type"] = "application/json"
    out["X-Request-Id"] = entry.request_id
    out[TIMESTAMP_HEADER] = stamp
    if settings.sign_payload and settings.signing_secret is not None:
        out[SIGNATURE_HEADER] = sign(settings.signing_secret, "sha256", stamp, body)
    if auth.hmac_secret is not None:
        out[auth.hmac_header] = sign(auth.hmac_secret, auth.hmac_algorithm, stamp, body)
    return out


def _error_text(exc: BaseException) -> str:
    """A try's error as the delivery log keeps it: its kind and a bounded message."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, TargetRefused):
        text = f"{type(exc).__name__}: {text}"
    return text[:_MAX_ERROR]


class DeliveryWorker:
    """Sends the outbox's deliveries (see the module docstring)."""

    def __init__(
        self,
        *,
        repo: MailboxRepo,
        settings: WebhookSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._pruned_at = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop (in the running event loop)."""
        import httpx

        self._client = httpx.AsyncClient(
            timeout=self.settings.timeout_secs, follow_redirects=False, trust_env=False
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop: tries in flight are cut (made again after the restart), the client closed."""
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look at the outbox now (a delivery was queued)."""
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                wait = await self._step()
            except Exception:
                _log.exception("webhook worker step failed")
                wait = _POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _step(self) -> float:
        """Start what is due (within the bound), prune when it is time; seconds to sleep."""
        now = self.clock()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            pruned = await asyncio.to_thread(self.repo.prune, now)
            if pruned:
                _log.info("mailbox: pruned %d expired records", pruned)
        room = self.settings.max_concurrent - len(self._inflight)
        if room > 0:
            due = await asyncio.to_thread(self.repo.due, now, room + len(self._inflight))
            for entry in due:
                if entry.request_id in self._inflight or room <= 0:
                    continue
                room -= 1
                task = asyncio.get_running_loop().create_task(self._deliver(entry))
                self._inflight[entry.request_id] = task
        nxt = await asyncio.to_thread(self.repo.next_due)
        if nxt is None or nxt <= now:  # nothing, or only what runs: its end wakes us
            return _POLL_S
        return min(_POLL_S, max(nxt - now, 0.01))

    async def _deliver(self, entry: OutboxEntry) -> None:
        try:
            attempt = await self.attempt(entry)
            tries = entry.attempts + 1
            if attempt.status_code is not None and 200 <= attempt.status_code < 300:
                state, next_at = "delivered", attempt.at
            elif tries >= entry.max_attempts:
                state, next_at = "failed", attempt.at
                _log.warning(
                    "webhook for request %s failed after %d tries: %s",
                    entry.request_id,
                    tries,
                    attempt.error or attempt.status_code,
                )
            else:
                delay = self.settings.retry_delay_ms / 1000 * 2 ** (tries - 1)
                state, next_at = "pending", attempt.at + delay * random.uniform(1.0, 1.5)
            await asyncio.to_thread(self.repo.attempted, attempt, state, tries, next_at)
        except Exception:
            _log.exception("webhook delivery of request %s failed", entry.request_id)
        finally:
            self._inflight.pop(entry.request_id, None)
            self._wake.set()

    # -- one try ------------------------------------------------------------------------------

    async def attempt(self, entry: OutboxEntry) -> Attempt:
        """One POST of ``entry``'s payload; its log line (not yet stored)."""
        number = await asyncio.to_thread(self.repo.last_attempt, entry.request_id) + 1
        at = self.clock()
        t0 = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            status = await self._post(entry, at)
            if not 200 <= status < 300:
                error = f"answered {status}"
        except (TargetRefused, OSError, TimeoutError) as exc:
            error = _error_text(exc)
        except Exception as exc:  # httpx's errors (timeouts, protocol) and the unforeseen
            error = _error_text(exc)
        return Attempt(
            request_id=entry.request_id,
            attempt=number,
            at=at,
            url=shown(entry.url),
            status_code=status,
            error=error,
            duration_ms=(time.perf_counter() - t0) * 1000.0,
        )

    async def _post(self, entry: OutboxEntry, at: float) -> int:
        client = self._client
        if client is None:
            raise RuntimeError("the webhook worker is not started")
        target = await resolve(entry.url, allow_private=self.settings.allow_private)
        body = entry.payload.encode()
        headers = delivery_headers(self.settings, entry, body, at)
        headers["Host"] = target.host
        extensions = {"sni_hostname": target.sni} if target.sni is not None else None
        request = client.build_request(
            "POST", target.url, content=body, headers=headers, extensions=extensions
        )
        # The answer's body is never read: its status says all, and it is the receiver's.
        response = await client.send(request, stream=True)
        await response.aclose()
        return response.status_code
