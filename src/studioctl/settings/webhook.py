"""The ``webhook`` and ``mailbox`` sections (issue 15).

``webhook.headers`` and ``webhook.auth`` are mappings in the file and JSON in the environment,
checked by ``settings.webhook_checks``; their secrets are redacted by ``Settings.to_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from studioctl.settings.webhook_checks import MAX_HEADER_VALUE, WebhookAuth, check_headers

if TYPE_CHECKING:
    from studioctl.settings.rules import (
        AtLeastOne,
        AtLeastZero,
        MailboxBackend,
        PositiveInt,
        Seconds,
        Token,
        WebhookAuthRule,
        WebhookHeaders,
    )

__all__ = [
    "MAX_HEADER_VALUE",
    "MailboxSettings",
    "WebhookAuth",
    "WebhookSettings",
    "check_headers",
]


@dataclass(frozen=True)
class WebhookSettings:
    # The receiver of deliveries; a request's X-Webhook-URL replaces it only for a tenant
    # with the webhook_url_override flag.
    url: Token = None
    enabled: bool = False  # the configured URL is called without a request asking for it
    on_disconnect: bool = True  # ... when the client of a request went away (the default)
    on_complete: bool = False  # ... for every completed request ("always")
    timeout_secs: Seconds = 10.0
    retry_count: AtLeastZero = 3  # tries after the first
    retry_delay_ms: PositiveInt = 1000  # doubled per try, with jitter
    headers: WebhookHeaders = ()
    auth: WebhookAuthRule = None  # a WebhookAuth once set; None: no authentication
    sign_payload: bool = False  # X-Webhook-Signature: HMAC over "<timestamp>.<body>"
    signing_secret: Token = None
    # Receivers on loopback, private, link-local or otherwise non-public addresses: refused
    # unless this is on (a webhook URL is a server-side request forgery vector).
    allow_private: bool = False
    max_concurrent: AtLeastOne = 4  # deliveries in flight at once


@dataclass(frozen=True)
class MailboxSettings:
    backend: MailboxBackend = "sqlite"  # the store's database (postgres: once it has one)
    retention_secs: Seconds = 3600.0  # records (and their delivery logs) pruned after this
    max_response_bytes: PositiveInt = 8 * 1024 * 1024  # a larger answer is kept cut, marked
