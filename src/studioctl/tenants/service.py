"""Tenants and their keys over the store: the library side of ``studioctl tenant …``.

A tenant has an id (``t_<hex>``), a unique name, an enabled flag, a limits *profile* plus
per-field overrides (see ``tenants.limits``), the models it may use (default all), and one
or more API keys.

``TenantService`` serves the admin routes: CRUD and keys. Every change calls its listeners
(the daemon subscribes ``Authenticator.invalidate``) so that revocations and limit changes
apply to the very next request. ``TenantService.lookup`` is the ``Authenticator``'s
key hash → tenant function.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studioctl.errors import UsageError
from studioctl.tenants.context import ANONYMOUS_TENANT_ID, TenantContext
from studioctl.tenants.keys import generate_key
from studioctl.tenants.limits import (
    OVERRIDE_FIELDS,
    TenantLimits,
    normalize_allowed_models,
    profile_table,
    resolve_limits,
)

if TYPE_CHECKING:
    from studioctl.store.db import Database
    from studioctl.store.tenants import ApiKey, Tenant


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
            # The combined vLLM + tenant gateway's names, so its scripts read our answers too.
            "tenant_name": self.name,
            "max_concurrent": self.limits.max_concurrent,
            "rpm_limit": self.limits.rpm,
            "tpm_limit": self.limits.tpm,
            "max_context_tokens": self.limits.max_context_tokens,
            "max_output_tokens": self.limits.max_output_tokens,
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
        default_limits: TenantLimits | None = None,
    ) -> None:
        """``default_limits``: the ``default`` profile's values (the settings'
        ``tenants.default_*``; None: ``tenants.DEFAULT_LIMITS``)."""
        from studioctl.store.tenants import KeyRepo, TenantRepo

        self.db = db
        self.tenants = TenantRepo(db)
        self.keys = KeyRepo(db)
        self._clock = clock
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []
        self._last_used: dict[str, float] = {}
        #: Every profile a tenant may have: PROFILES and ``default``.
        self.profiles: dict[str, TenantLimits] = profile_table(default_limits)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change (e.g. ``Authenticator.invalidate``)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        # Daemons sharing the database: the change feed's ``announce`` is a listener.
        self.changed_elsewhere()

    def changed_elsewhere(self) -> None:
        """Another daemon changed tenants or keys (its change feed said so): tell the
        listeners, without announcing it again."""
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
        stored, models = self._split(profile, dict(overrides or {}), allowed_models)
        plaintext, prefix, digest = generate_key()
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
        return self._info(tenant), plaintext

    def list(self) -> builtins.list[TenantInfo]:
        return [self._info(t) for t in self.tenants.list()]

    def get(self, id_or_name: str) -> TenantInfo:
        """NotFoundError naming the tenant when there is none."""
        return self._info(self.tenants.require(id_or_name))

    def set(
        self,
        id_or_name: str,
        profile: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        enabled: bool | None = None,
        allowed_models: Sequence[str] | str | None = None,
        name: str | None = None,
    ) -> TenantInfo:
        """Change a tenant; ``None`` leaves a field as it is (``name``: a new name).

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
        stored, _ = self._split(new_profile, merged, None)
        changes: dict[str, Any] = {"profile": new_profile, "limits": stored}
        if name is not None and name != tenant.name:
            changes["name"] = validate_tenant_name(name)  # ConflictError when taken
        if enabled is not None:
            changes["enabled"] = bool(enabled)
        if allowed_models is not None:
            models = normalize_allowed_models(allowed_models)
            changes["allowed_models"] = list(models) if models is not None else None
        updated = self.tenants.update(tenant.id, ts=self._clock(), **changes)
        self._changed()
        return self._info(updated)

    def delete(self, id_or_name: str) -> TenantInfo:
        """Delete a tenant and its keys (its usage rows stay); returns what was deleted."""
        tenant = self.tenants.require(id_or_name)
        self.tenants.delete(tenant.id)
        self._changed()
        return self._info(tenant)

    # -- keys --

    def create_key(self, tenant: str | TenantInfo) -> str:
        """A new additional key for the tenant; returns the plaintext (shown once)."""
        tid = self._tenant_id(tenant)
        plaintext, prefix, digest = generate_key()
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
        plaintext, prefix, digest = generate_key()
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
            limits=self._limits_of(tenant),
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

    def _split(
        self,
        profile: str,
        overrides: dict[str, Any],
        allowed_models: Sequence[str] | str | None,
    ) -> tuple[dict[str, int], tuple[str, ...] | None]:
        return _split_overrides(profile, overrides, allowed_models, self.profiles)

    def _limits_of(self, tenant: Tenant) -> TenantLimits:
        overrides: dict[str, Any] = dict(tenant.limits)
        overrides["allowed_models"] = tenant.allowed_models
        return resolve_limits(tenant.profile, overrides, self.profiles)

    def _info(self, tenant: Tenant) -> TenantInfo:
        return TenantInfo(
            id=tenant.id,
            name=tenant.name,
            enabled=tenant.enabled,
            profile=tenant.profile,
            overrides={k: v for k, v in tenant.limits.items() if k in OVERRIDE_FIELDS},
            limits=self._limits_of(tenant),
            created_at=tenant.created_at,
            updated_at=tenant.updated_at,
        )

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


def _split_overrides(
    profile: str,
    overrides: dict[str, Any],
    allowed_models: Sequence[str] | str | None,
    profiles: Mapping[str, TenantLimits],
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
    # names the unknown profile, field or bad value
    limits = resolve_limits(profile, overrides, profiles)
    stored = {k: getattr(limits, k) for k in OVERRIDE_FIELDS if overrides.get(k) is not None}
    return stored, normalize_allowed_models(allowed_models)
