"""``KeptRequest``: what a request in mailbox mode carries (``RequestContext.keep``): its
mode, its webhook, and its relayed stream bytes, bounded (see ``mailbox.py``)."""

from __future__ import annotations

from studioctl.webhooks.service import WebhookRequest

__all__ = ["KeptRequest"]


class KeptRequest:
    """A request in mailbox mode: its mode, its webhook, and the relayed bytes so far."""

    __slots__ = ("chunks", "limit", "mode", "size", "truncated", "webhook")

    def __init__(self, mode: str, webhook: WebhookRequest | None, limit: int) -> None:
        self.mode = mode  # on_disconnect | always
        self.webhook = webhook
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> None:
        """Keep relayed stream bytes (up to ``limit``: then the record is ``truncated``)."""
        if self.size + len(data) > self.limit:
            self.truncated = True
            return
        self.chunks.append(data)
        self.size += len(data)
