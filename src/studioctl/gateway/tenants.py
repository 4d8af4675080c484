"""Tenants: who may call the gateway, with which limits.

A tenant has an id (``t_<hex>``), a unique name, an enabled flag, a limits *profile* plus
per-field overrides, the models it may use (default all), and one or more API keys.

Profiles (values of the seed gateway)::

    profile        max_concurrent  rpm  tpm      max_context_tokens  max_output_tokens
    conservative   1               60   30000    4096                256
    standard       2               180  120000   8192                512
    pro            4               600  400000   16384               1024

``TenantService`` is the library side of ``studioctl tenant …`` and the admin routes: CRUD
and keys over the store. Every change calls ``on_change`` (the daemon wires
``Authenticator.invalidate``) so that revocations and limit changes apply to the very next
request. ``TenantService.lookup`` is the ``Authenticator``'s key → tenant function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from studioctl.errors import UsageError

__all__ = [
    "ANONYMOUS_TENANT_ID",
    "LIMIT_FIELDS",
    "PROFILES",
    "TenantContext",
    "TenantLimits",
    "anonymous_context",
    "normalize_allowed_models",
    "resolve_limits",
]


@dataclass(frozen=True, slots=True)
class TenantLimits:
    max_concurrent: int
    rpm: int
    tpm: int
    max_context_tokens: int
    max_output_tokens: int
    allowed_models: tuple[str, ...] | None = None  # None = all models

    def __post_init__(self) -> None:
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UsageError(
                    f"limit {name!r} must be a whole number of at least 1, got {value!r}",
                    details={"param": name},
                )

    def allows(self, model: str) -> bool:
        """Whether the tenant may call ``model`` (a served name or alias)."""
        allowed = self.allowed_models
        return allowed is None or model in allowed

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_concurrent": self.max_concurrent,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_context_tokens": self.max_context_tokens,
            "max_output_tokens": self.max_output_tokens,
            "allowed_models": list(self.allowed_models)
            if self.allowed_models is not None
            else None,
        }


# The integer limits, in display order (allowed_models is separate: a list, not a number).
LIMIT_FIELDS: tuple[str, ...] = (
    "max_concurrent",
    "rpm",
    "tpm",
    "max_context_tokens",
    "max_output_tokens",
)

PROFILES: dict[str, TenantLimits] = {
    "conservative": TenantLimits(
        max_concurrent=1, rpm=60, tpm=30_000, max_context_tokens=4096, max_output_tokens=256
    ),
    "standard": TenantLimits(
        max_concurrent=2, rpm=180, tpm=120_000, max_context_tokens=8192, max_output_tokens=512
    ),
    "pro": TenantLimits(
        max_concurrent=4, rpm=600, tpm=400_000, max_context_tokens=16384, max_output_tokens=1024
    ),
}


def resolve_limits(profile: str, overrides: Mapping[str, Any]) -> TenantLimits:
    """The limits of ``profile`` with ``overrides`` applied.

    ``overrides`` maps limit names (``LIMIT_FIELDS`` and ``allowed_models``) to values; a
    ``None`` value means "the profile's value". Integers may be given as decimal strings
    (from query strings or flags). Unknown profile or field, or a bad value → ``UsageError``
    naming it.
    """
    base = PROFILES.get(profile)
    if base is None:
        raise UsageError(
            f"unknown limits profile {profile!r}; known: {', '.join(PROFILES)}",
            details={"param": "profile"},
        )
    values: dict[str, Any] = {
        name: getattr(base, name) for name in (*LIMIT_FIELDS, "allowed_models")
    }
    for key, raw in overrides.items():
        if raw is None:
            continue
        if key == "allowed_models":
            values[key] = normalize_allowed_models(raw)
        elif key in LIMIT_FIELDS:
            values[key] = _limit_int(key, raw)
        else:
            raise UsageError(
                f"unknown limit {key!r}; known: {', '.join((*LIMIT_FIELDS, 'allowed_models'))}",
                details={"param": key},
            )
    return TenantLimits(**values)


def _limit_int(key: str, raw: Any) -> int:
    value: int | None = None
    if type(raw) is int:
        value = raw
    elif isinstance(raw, str) and raw.strip().isdecimal():
        value = int(raw.strip())
    if value is None or value < 1:
        raise UsageError(
            f"limit {key!r} must be a whole number of at least 1, got {raw!r}",
            details={"param": key},
        )
    return value


def normalize_allowed_models(raw: Any) -> tuple[str, ...] | None:
    """``None``, ``[]`` or ``["*"]`` → all models (``None``); else a tuple of model names.

    Accepts a list/tuple of names or one comma-separated string.
    """
    if raw is None:
        return None
    items: Sequence[Any]
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, list | tuple):
        items = raw
    else:
        raise UsageError(
            f"allowed_models must be a list of model names, got {raw!r}",
            details={"param": "allowed_models"},
        )
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise UsageError(
                f"allowed_models must hold non-empty model names, got {item!r}",
                details={"param": "allowed_models"},
            )
        name = item.strip()
        if name not in names:
            names.append(name)
    if not names or names == ["*"]:
        return None
    if "*" in names:
        raise UsageError(
            "allowed_models: '*' (all models) cannot be combined with model names",
            details={"param": "allowed_models"},
        )
    return tuple(names)


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


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_tenant_name(name: str) -> str:
    """A tenant name: 1-64 of ``A-Z a-z 0-9 . _ -``, starting alphanumeric; not an id."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid tenant name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            details={"param": "name"},
        )
    if name.startswith("t_") or name == ANONYMOUS_TENANT_ID:
        raise UsageError(
            f"invalid tenant name {name!r}: names starting with 't_' and the name "
            f"{ANONYMOUS_TENANT_ID!r} are reserved",
            details={"param": "name"},
        )
    return name
