"""Signed deliveries: an HMAC over the exact bytes sent, bound to a timestamp.

Every delivery carries ``X-Webhook-Timestamp: <unix seconds>`` and ``X-Request-Id``. When
``webhook.sign_payload`` is on (secret ``webhook.signing_secret``), and for
``webhook.auth.hmac`` (its own secret, algorithm and header name), the signature header is::

    X-Webhook-Signature: sha256=<hex HMAC(secret, "<timestamp>." + body)>

(``sha512=`` with that algorithm). The signed string is the timestamp header's value, one
``.``, then the request body byte for byte, so a receiver recomputes it before parsing the
JSON, compares in constant time, and refuses a timestamp older than a few minutes (a replay).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "signed_string", "verify"]

TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Webhook-Signature"


def signed_string(timestamp: str, body: bytes) -> bytes:
    return timestamp.encode("ascii") + b"." + body


def sign(secret: str, algorithm: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``<algorithm>=<hex digest>``."""
    digest = hmac.new(
        secret.encode(), signed_string(timestamp, body), getattr(hashlib, algorithm)
    ).hexdigest()
    return f"{algorithm}={digest}"


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests): recompute and compare in constant time."""
    algorithm, _, _ = header.partition("=")
    if algorithm not in ("sha256", "sha512"):
        return False
    return hmac.compare_digest(sign(secret, algorithm, timestamp, body), header)
