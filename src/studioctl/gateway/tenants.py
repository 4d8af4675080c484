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

import builtins
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studioctl.errors import UsageError

if TYPE_CHECKING:
    from studioctl.store.db import Database
    from studioctl.store.tenants import ApiKey, Tenant

__all__ = [
    "ANONYMOUS_TENANT_ID",
    "DEFAULT_ROTATION_GRACE_S",
    "LIMIT_FIELDS",
    "PROFILES",
    "KeyInfo",
    "TenantContext",
    "TenantInfo",
    "TenantLimits",
    "TenantService",
    "anonymous_context",
    "normalize_allowed_models",
    "profiles_dict",
    "resolve_limits",
    "validate_tenant_name",
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


def profiles_dict() -> dict[str, dict[str, Any]]:
    """The profiles as plain data (admin API, ``tenant`` help)."""
    return {name: limits.to_dict() for name, limits in PROFILES.items()}


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


# -- the service -----------------------------------------------------------------------------

DEFAULT_ROTATION_GRACE_S = 86_400.0  # a rotated-out key stays valid for 24 h


@dataclass(frozen=True)
class TenantInfo:
    """A tenant as the admin API and the CLI show it: stored fields plus resolved limits."""

    id: str
    name: str
    enabled: bool
    profile: str
    overrides: dict[str, int]  # the per-field overrides of the profile
    limits: TenantLimits  # the profile with the overrides and allowed models applied
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "profile": self.profile,
            "overrides": dict(self.overrides),
            "limits": self.limits.to_dict(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class KeyInfo:
    """An API key as listed: its display prefix and dates, never its hash or plaintext."""

    id: str
    tenant_id: str
    prefix: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    status: str  # "active" | "expired" | "revoked" (at the time of listing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "status": self.status,
        }


class TenantService:
    """Tenants and keys over the store; every change notifies ``on_change`` listeners.

    ``lookup`` (the ``Authenticator``'s key → tenant function) does one indexed query and
    no write: the time a key was last used is kept in memory and written by
    ``flush_last_used()`` (the daemon calls it now and then and at shutdown; ``list_keys``
    calls it first). Its precision is the authenticator's cache TTL, since lookups happen
    on cache misses only.
    """

    def __init__(
        self,
        db: Database,
        *,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from studioctl.store.tenants import KeyRepo, TenantRepo

        self.db = db
        self.tenants = TenantRepo(db)
        self.keys = KeyRepo(db)
        self._clock = clock
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []
        self._last_used: dict[str, float] = {}

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change (e.g. ``Authenticator.invalidate``)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- tenants --

    def create(
        self,
        name: str,
        profile: str = "standard",
        overrides: Mapping[str, Any] | None = None,
        allowed_models: Sequence[str] | str | None = None,
    ) -> tuple[TenantInfo, str]:
        """A new tenant and its first API key: ``(tenant, plaintext key)``. Show the key
        once: only its hash is stored. ConflictError when the name is taken."""
        validate_tenant_name(name)
        stored, models = _split_overrides(profile, dict(overrides or {}), allowed_models)
        plaintext, prefix, digest = _new_key()
        ts = self._clock()
        with self.db.transaction():
            tenant = self.tenants.create(
                name,
                profile=profile,
                limits=stored,
                allowed_models=list(models) if models is not None else None,
                ts=ts,
            )
            self.keys.add(tenant.id, digest, prefix, ts=ts)
        self._changed()
        return _info(tenant), plaintext

    def list(self) -> builtins.list[TenantInfo]:
        return [_info(t) for t in self.tenants.list()]

    def get(self, id_or_name: str) -> TenantInfo:
        """NotFoundError naming the tenant when there is none."""
        return _info(self.tenants.require(id_or_name))

    def set(
        self,
        id_or_name: str,
        profile: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        enabled: bool | None = None,
        allowed_models: Sequence[str] | str | None = None,
    ) -> TenantInfo:
        """Change a tenant; ``None`` leaves a field as it is.

        ``overrides`` merge into the existing ones; an override set to ``None`` goes back
        to the profile's value. ``allowed_models``: names, or ``[]``/``["*"]`` for all.
        Applies to the tenant's very next request.
        """
        tenant = self.tenants.require(id_or_name)
        new_profile = tenant.profile if profile is None else profile
        merged: dict[str, Any] = dict(tenant.limits)
        extra = dict(overrides or {})
        if "allowed_models" in extra:
            if allowed_models is not None:
                raise UsageError(
                    "allowed_models given twice (as an argument and in the overrides)",
                    details={"param": "allowed_models"},
                )
            allowed_models = extra.pop("allowed_models")
            if allowed_models is None:
                allowed_models = ["*"]  # an override of None goes back to the default: all
        for key, value in extra.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        stored, _ = _split_overrides(new_profile, merged, None)
        changes: dict[str, Any] = {"profile": new_profile, "limits": stored}
        if enabled is not None:
            changes["enabled"] = bool(enabled)
        if allowed_models is not None:
            models = normalize_allowed_models(allowed_models)
            changes["allowed_models"] = list(models) if models is not None else None
        updated = self.tenants.update(tenant.id, ts=self._clock(), **changes)
        self._changed()
        return _info(updated)

    def delete(self, id_or_name: str) -> TenantInfo:
        """Delete a tenant and its keys (its usage rows stay); returns what was deleted."""
        tenant = self.tenants.require(id_or_name)
        self.tenants.delete(tenant.id)
        self._changed()
        return _info(tenant)

    # -- keys --

    def create_key(self, tenant: str | TenantInfo) -> str:
        """A new additional key for the tenant; returns the plaintext (shown once)."""
        tid = self._tenant_id(tenant)
        plaintext, prefix, digest = _new_key()
        self.keys.add(tid, digest, prefix, ts=self._clock())
        self._changed()
        return plaintext

    def rotate_key(
        self, tenant: str | TenantInfo, grace_s: float = DEFAULT_ROTATION_GRACE_S
    ) -> str:
        """A new key; the tenant's other keys stay valid ``grace_s`` seconds more
        (``0``: revoked now). Returns the new plaintext."""
        if not isinstance(grace_s, int | float) or isinstance(grace_s, bool) or grace_s < 0:
            raise UsageError(
                f"rotation grace must be a number of seconds >= 0, got {grace_s!r}",
                details={"param": "grace_s"},
            )
        tid = self._tenant_id(tenant)
        plaintext, prefix, digest = _new_key()
        ts = self._clock()
        with self.db.transaction():
            new = self.keys.add(tid, digest, prefix, ts=ts)
            if grace_s == 0:
                for key in self.keys.list(tid):
                    if key.id != new.id and key.revoked_at is None:
                        self.keys.revoke(key.id, tenant_id=tid, ts=ts)
            else:
                self.keys.set_expiry(tid, ts + grace_s, except_key_id=new.id)
        self._changed()
        return plaintext

    def revoke_key(self, prefix_or_id: str, *, tenant: str | TenantInfo | None = None) -> KeyInfo:
        """Revoke one key (by id ``k_…`` or display prefix) from the very next request.

        NotFoundError when none matches; ConflictError when a prefix matches several.
        """
        tid = self._tenant_id(tenant) if tenant is not None else None
        key = self.keys.revoke(prefix_or_id, tenant_id=tid, ts=self._clock())
        self._changed()
        return self._key_info(key, self._clock())

    def list_keys(self, tenant: str | TenantInfo) -> builtins.list[KeyInfo]:
        """The tenant's keys, prefixes and dates only."""
        tid = self._tenant_id(tenant)
        self.flush_last_used()
        at = self._clock()
        return [self._key_info(k, at) for k in self.keys.list(tid)]

    # -- the gateway's side --

    def lookup(self, key_hash: str) -> TenantContext | None:
        """The tenant of a valid (not revoked, not expired) key, by its SHA-256 hex."""
        at = self._clock()
        found = self.keys.find_by_hash(key_hash, at=at)
        if found is None:
            return None
        key, tenant = found
        self._last_used[key.id] = at
        return TenantContext(
            tenant_id=tenant.id,
            name=tenant.name,
            enabled=tenant.enabled,
            limits=_limits_of(tenant),
            key_prefix=key.prefix,
            key_expires_at=key.expires_at,
        )

    def flush_last_used(self) -> int:
        """Write the in-memory last-used times of keys; returns how many were written."""
        pending, self._last_used = self._last_used, {}
        if pending:
            with self.db.transaction():
                for key_id, ts in pending.items():
                    self.keys.touch(key_id, ts)
        return len(pending)

    # -- helpers --

    def _tenant_id(self, tenant: str | TenantInfo) -> str:
        if isinstance(tenant, TenantInfo):
            return tenant.id
        return self.tenants.require(tenant).id

    def _key_info(self, key: ApiKey, at: float) -> KeyInfo:
        return KeyInfo(
            id=key.id,
            tenant_id=key.tenant_id,
            prefix=key.prefix,
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            last_used_at=self._last_used.get(key.id, key.last_used_at),
            status=key.status(at),
        )


def _new_key() -> tuple[str, str, str]:
    from studioctl.gateway.keys import generate_key

    return generate_key()


def _split_overrides(
    profile: str,
    overrides: dict[str, Any],
    allowed_models: Sequence[str] | str | None,
) -> tuple[dict[str, int], tuple[str, ...] | None]:
    """Validate against the profile; return the integer overrides to store (normalized,
    ``None`` values dropped) and the allowed models (``None`` = all)."""
    if "allowed_models" in overrides:
        from_overrides = overrides.pop("allowed_models")
        if allowed_models is not None and from_overrides is not None:
            raise UsageError(
                "allowed_models given twice (as an argument and in the overrides)",
                details={"param": "allowed_models"},
            )
        if allowed_models is None:
            allowed_models = from_overrides
    limits = resolve_limits(profile, overrides)  # names the unknown profile/field/bad value
    stored = {k: getattr(limits, k) for k in LIMIT_FIELDS if overrides.get(k) is not None}
    return stored, normalize_allowed_models(allowed_models)


def _limits_of(tenant: Tenant) -> TenantLimits:
    overrides: dict[str, Any] = dict(tenant.limits)
    overrides["allowed_models"] = tenant.allowed_models
    return resolve_limits(tenant.profile, overrides)


def _info(tenant: Tenant) -> TenantInfo:
    limits = _limits_of(tenant)
    return TenantInfo(
        id=tenant.id,
        name=tenant.name,
        enabled=tenant.enabled,
        profile=tenant.profile,
        overrides={k: v for k, v in tenant.limits.items() if k in LIMIT_FIELDS},
        limits=limits,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
    )
