"""Address checks shared by the daemon's parts (one home for each)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only.

    ``localhost``, an IPv4 address in 127.0.0.0/8, or ``::1`` (bare or in brackets, as in a
    URL). Any other name is not: resolving it could give any address.
    """
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
