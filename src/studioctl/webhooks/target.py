"""A webhook receiver's URL: checked when given, resolved and checked again when called.

A URL is ``http`` or ``https``, at most ``MAX_URL`` characters, without user info. At
delivery its host is resolved and *every* address is checked: unless
``webhook.allow_private``, an address that is not public (``netaddr.is_public``: loopback,
private, link-local with the cloud metadata address, ...) refuses the delivery. The request
is then sent to the checked address itself (the name kept in ``Host`` and for TLS), so a
name that resolves differently a moment later (DNS rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from studioctl.netaddr import is_loopback, is_public

__all__ = [
    "MAX_URL",
    "Resolved",
    "TargetRefused",
    "check_url",
    "literal_private",
    "resolve",
    "shown",
]

MAX_URL = 2048


class TargetRefused(ValueError):
    """The URL is malformed, or its host is not an address deliveries may go to."""


@dataclass(frozen=True)
class Resolved:
    url: str  # the URL with the checked address as its host
    host: str  # the Host header (the name as given, with its port)
    sni: str | None  # the TLS server name (https with a name), else None


def check_url(url: str) -> str:
    """``url`` if it is an acceptable receiver URL (syntax only), else TargetRefused."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise TargetRefused(f"a webhook URL is 1-{MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise TargetRefused("a webhook URL holds no spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("a webhook URL is http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("a webhook URL carries no user or password (use the bearer)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise TargetRefused("the webhook URL's port is not a number from 0 to 65535") from None
    return url


def literal_private(url: str) -> bool:
    """Whether the URL names a non-public address outright (an IP or ``localhost``): what
    the gateway refuses at once when private receivers are not allowed."""
    host = urlsplit(url).hostname or ""
    if is_loopback(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return not is_public(host)


def shown(url: str) -> str:
    """The URL as logs and the delivery log show it: scheme, host, port and path only (a
    query string may carry a token)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"[:256]


async def resolve(url: str, *, allow_private: bool) -> Resolved:
    """Resolve the URL's host and check every address (see the module docstring)."""
    check_url(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"cannot resolve {host[:253]!r}: {exc.strerror or exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise TargetRefused(f"{host[:253]!r} resolves to no address")
    if not allow_private:
        bad = next((a for a in addresses if not is_public(a)), None)
        if bad is not None:
            raise TargetRefused(
                f"{host[:253]!r} resolves to {bad}, which is not a public address "
                "(receivers on loopback or private networks need webhook.allow_private)"
            )
    address = addresses[0]
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    target = parts._replace(netloc=netloc).geturl()
    named = not _is_ip(host)
    sni = host if parts.scheme == "https" and named else None
    return Resolved(url=target, host=parts.netloc.rpartition("@")[2], sni=sni)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
