"""Address checks shared by the daemon's parts (one home for each)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback", "is_public"]


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


def is_public(address: str) -> bool:
    """Whether the IP ``address`` is a global unicast address anyone may be sent to.

    False for loopback, private (RFC 1918, fc00::/7), link-local (169.254/16 and its cloud
    metadata address, fe80::/10), carrier-grade NAT, multicast, reserved and unspecified
    addresses, and for an IPv4-mapped IPv6 address of any of those; a webhook receiver on one
    of them needs ``webhook.allow_private``. ``address`` must be an IP, not a name: the
    caller resolves the name and checks every address it will connect to.
    """
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast
