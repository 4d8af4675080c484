"""The checks of the ``webhook`` section's mappings, without pydantic (``settings.rules``
wraps them): ``webhook.headers`` (extra headers of every delivery) and ``webhook.auth`` (how
the receiver authenticates us), each into a frozen value."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

__all__ = ["HMAC_ALGORITHMS", "MAX_HEADER_VALUE", "WebhookAuth", "check_auth", "check_headers"]

HMAC_ALGORITHMS = ("sha256", "sha512")
#: The longest header value (or secret) a setting or a request may give.
MAX_HEADER_VALUE = 4096
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
# Headers the worker writes itself: a configured value would be sent twice or lie.
_OWN_HEADERS = frozenset(
    {"content-length", "content-type", "host", "transfer-encoding", "x-request-id", "connection"}
)


@dataclass(frozen=True)
class WebhookAuth:
    """How deliveries authenticate to the receiver (all optional, any combination)."""

    bearer: str | None = None
    api_key_header: str | None = None
    api_key: str | None = None
    hmac_secret: str | None = None
    hmac_algorithm: str = "sha256"
    hmac_header: str = "X-Webhook-Signature"

    def to_dict(self, redact: str | None) -> dict[str, Any]:
        """As written in the file; secrets replaced by ``redact`` unless it is None."""

        def hide(v: str | None) -> str | None:
            return v if v is None or redact is None else redact

        out: dict[str, Any] = {}
        if self.bearer is not None:
            out["bearer"] = hide(self.bearer)
        if self.api_key is not None:
            out["api_key"] = {"header": self.api_key_header, "key": hide(self.api_key)}
        if self.hmac_secret is not None:
            out["hmac"] = {
                "secret": hide(self.hmac_secret),
                "algorithm": self.hmac_algorithm,
                "header": self.hmac_header,
            }
        return out


def _bad(message: str, *subpath: str) -> ValueError:
    err = ValueError(message)
    err.subpath = subpath  # type: ignore[attr-defined]
    return err


def _header_name(name: Any, *where: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= _TOKEN_CHARS:
        raise _bad(f"{name!r} is not an HTTP header name", *where)
    return name


def _header_value(value: Any, *where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
        raise _bad(f"must be a string of at most {MAX_HEADER_VALUE} characters", *where)
    if any(c in value for c in "\r\n\0"):
        raise _bad("must not hold line breaks", *where)
    return value


def check_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """``{name: value}`` → sorted pairs (names checked, values single-line and bounded)."""
    if isinstance(value, tuple):
        return value
    if not isinstance(value, dict):
        raise _bad("must be a mapping of header names to values")
    out = []
    for name, v in value.items():
        _header_name(name, str(name))
        if name.lower() in _OWN_HEADERS:
            raise _bad(f"{name} is written by the delivery itself", str(name))
        out.append((name, _header_value(v, str(name))))
    return tuple(sorted(out))


def check_auth(value: Any) -> WebhookAuth:
    """``{bearer, api_key: {header, key}, hmac: {secret, algorithm, header}}`` → WebhookAuth."""
    if isinstance(value, WebhookAuth):
        return value
    if not isinstance(value, dict):
        raise _bad("must be a mapping with bearer, api_key and/or hmac")
    unknown = set(value) - {"bearer", "api_key", "hmac"}
    if unknown:
        raise _bad(f"unknown key {sorted(unknown)[0]!r} (keys: bearer, api_key, hmac)")
    fields: dict[str, Any] = {}
    if value.get("bearer") is not None:
        fields["bearer"] = _header_value(value["bearer"], "bearer") or None
    key = value.get("api_key")
    if key is not None:
        if not isinstance(key, dict) or set(key) != {"header", "key"}:
            raise _bad("must be a mapping with header and key", "api_key")
        fields["api_key_header"] = _header_name(key["header"], "api_key", "header")
        fields["api_key"] = _header_value(key["key"], "api_key", "key")
    mac = value.get("hmac")
    if mac is not None:
        if (
            not isinstance(mac, dict)
            or "secret" not in mac
            or set(mac)
            - {
                "secret",
                "algorithm",
                "header",
            }
        ):
            raise _bad("must be a mapping with secret (and algorithm, header)", "hmac")
        fields["hmac_secret"] = _header_value(mac["secret"], "hmac", "secret")
        algorithm = mac.get("algorithm", "sha256")
        if algorithm not in HMAC_ALGORITHMS:
            raise _bad(f"must be one of {', '.join(HMAC_ALGORITHMS)}", "hmac", "algorithm")
        fields["hmac_algorithm"] = algorithm
        fields["hmac_header"] = _header_name(
            mac.get("header", "X-Webhook-Signature"), "hmac", "header"
        )
    return WebhookAuth(**fields)
