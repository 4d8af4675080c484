"""The caller of one gateway request, as the authenticator resolved it.

``TenantContext`` is what ``TenantService.lookup`` returns for a valid key and what the
gateway carries through a request; ``anonymous_context`` stands for requests without a
key when ``gateway.allow_anonymous`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass

from studioctl.tenants.limits import PROFILES, TenantLimits


@dataclass(frozen=True, slots=True)
class TenantContext:
    """What the gateway knows about the caller of one request (built once per cache fill)."""

    tenant_id: str
    name: str
    enabled: bool
    limits: TenantLimits
    key_prefix: str
    # Wall-clock time (time.time()) at which the key used stops being valid (rotation
    # grace), so that the authenticator's cache never outlives it. None = no expiry.
    key_expires_at: float | None = None


ANONYMOUS_TENANT_ID = "anonymous"


def anonymous_context(limits: TenantLimits | None = None) -> TenantContext:
    """The tenant of unauthenticated requests when ``gateway.allow_anonymous`` is on.

    The proxy decides when (only when bound to a loopback address); the limits default to
    the ``conservative`` profile.
    """
    return TenantContext(
        tenant_id=ANONYMOUS_TENANT_ID,
        name=ANONYMOUS_TENANT_ID,
        enabled=True,
        limits=limits if limits is not None else PROFILES["conservative"],
        key_prefix="",
    )
