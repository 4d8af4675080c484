"""Gateway tenants and their API keys.

Keys are stored only as their SHA-256 (hex) and a short display prefix; ``add`` refuses
anything that is not a SHA-256 hex digest, so a plaintext key cannot be stored by mistake.
The gateway looks a key up by hash on every request through a unique index.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studioctl.errors import ConflictError, NotFoundError, UsageError
from studioctl.store.db import Database, Row, dumps, loads, now

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TENANT_ID = re.compile(r"^t_[0-9a-f]+$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    enabled: bool
    profile: str
    limits: dict[str, Any] = field(default_factory=dict)  # overrides of the profile
    allowed_models: list[str] | None = None  # None: every model
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    key_hash: str
    prefix: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None

    def status(self, at: float) -> str:
        """The key's status at time ``at``: revoked, expired or active."""
        if self.revoked_at is not None and self.revoked_at <= at:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= at:
            return "expired"
        return "active"

    def active(self, at: float) -> bool:
        return self.status(at) == "active"


def _tenant(row: Row, prefix: str = "") -> Tenant:
    return Tenant(
        id=row[prefix + "id"],
        name=row[prefix + "name"],
        enabled=bool(row[prefix + "enabled"]),
        profile=row[prefix + "profile"],
        limits=loads(row[prefix + "limits"]) or {},
        allowed_models=loads(row[prefix + "allowed_models"]),
        created_at=row[prefix + "created_at"],
        updated_at=row[prefix + "updated_at"],
    )


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        key_hash=row["key_hash"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def _new_id(prefix: str) -> str:
    import secrets

    return prefix + secrets.token_hex(8)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(
            f"tenant name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if _TENANT_ID.match(name):
        raise UsageError(f"tenant name {name!r} looks like a tenant id (t_…): choose another")
    return name


def _check_models(models: Any) -> str | None:
    if models is None:
        return None
    if isinstance(models, str) or not all(isinstance(m, str) and m for m in models):
        raise UsageError(f"allowed models must be a list of model names, got {models!r}")
    return dumps(list(models))


def _check_limits(limits: Any) -> str:
    if not isinstance(limits, dict):
        raise UsageError(f"tenant limits must be a mapping, got {limits!r}")
    return dumps(limits)


class TenantRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        name: str,
        *,
        profile: str = "standard",
        limits: dict[str, Any] | None = None,
        allowed_models: builtins.list[str] | None = None,
        enabled: bool = True,
        ts: float | None = None,
    ) -> Tenant:
        """A new tenant with a fresh id ``t_<hex>``; ConflictError when the name is taken
        (names compare case-insensitively)."""
        _check_name(name)
        t = now(ts)
        tenant_id = _new_id("t_")
        try:
            self.db.execute(
                "INSERT INTO tenants (id, name, enabled, profile, limits, allowed_models,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tenant_id,
                    name,
                    int(enabled),
                    profile,
                    _check_limits(limits or {}),
                    _check_models(allowed_models),
                    t,
                    t,
                ),
            )
        except self.db.integrity_errors as exc:
            if self.get_by_name(name) is not None:
                raise ConflictError(f"tenant {name!r} already exists") from exc
            raise
        return self.require(tenant_id)

    def get(self, tenant_id: str) -> Tenant | None:
        row = self.db.query_one("SELECT * FROM tenants WHERE id = ?", (tenant_id,))
        return _tenant(row) if row else None

    def get_by_name(self, name: str) -> Tenant | None:
        row = self.db.query_one("SELECT * FROM tenants WHERE name = ?", (name,))
        return _tenant(row) if row else None

    def require(self, id_or_name: str) -> Tenant:
        """The tenant with this id or name, or NotFoundError."""
        tenant = self.get(id_or_name) or self.get_by_name(id_or_name)
        if tenant is None:
            raise NotFoundError(f"no tenant {id_or_name!r}", hint="see `studioctl tenant list`")
        return tenant

    def list(self) -> builtins.list[Tenant]:
        return [_tenant(r) for r in self.db.query("SELECT * FROM tenants ORDER BY name")]

    def update(self, tenant_id: str, *, ts: float | None = None, **changes: Any) -> Tenant:
        """Set name, enabled, profile, limits (replaced whole) and/or allowed_models."""
        encoders: dict[str, Callable[[Any], Any]] = {
            "name": _check_name,
            "enabled": lambda v: int(bool(v)),
            "profile": str,
            "limits": _check_limits,
            "allowed_models": _check_models,
        }
        bad = set(changes) - set(encoders)
        if bad:
            raise TypeError(f"TenantRepo.update: cannot set {', '.join(sorted(bad))}")
        values = {k: encoders[k](v) for k, v in changes.items()}
        values["updated_at"] = now(ts)
        assignments = ", ".join(f"{k} = :{k}" for k in values)
        try:
            cur = self.db.execute(
                f"UPDATE tenants SET {assignments} WHERE id = :_id", {**values, "_id": tenant_id}
            )
        except self.db.integrity_errors as exc:
            raise ConflictError(f"tenant {changes.get('name')!r} already exists") from exc
        if cur.rowcount == 0:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        return self.require(tenant_id)

    def delete(self, tenant_id: str) -> bool:
        """Delete a tenant and (cascade) its keys. Its usage rows stay, for accounting."""
        return self.db.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,)).rowcount > 0


class KeyRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        tenant_id: str,
        key_hash: str,
        prefix: str,
        *,
        expires_at: float | None = None,
        ts: float | None = None,
    ) -> ApiKey:
        """Store a key's hash (``tenants.keys.hash_key``) and display prefix for a tenant."""
        if not _SHA256_HEX.match(key_hash):
            raise ValueError("key_hash must be a SHA-256 hex digest (hash_key(key)), not a key")
        key_id = _new_id("k_")
        try:
            with self.db.transaction():
                if self.db.query_one("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)) is None:
                    raise NotFoundError(f"no tenant {tenant_id!r}")
                self.db.execute(
                    "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, created_at,"
                    " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, tenant_id, key_hash, prefix, now(ts), expires_at),
                )
        except self.db.integrity_errors as exc:
            raise ConflictError("an API key with this hash already exists") from exc
        key = self.get(key_id)
        assert key is not None
        return key

    def get(self, key_id: str) -> ApiKey | None:
        row = self.db.query_one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return _key(row) if row else None

    def find_by_hash(
        self, key_hash: str, *, at: float | None = None
    ) -> tuple[ApiKey, Tenant] | None:
        """The key with this hash and its tenant, in one indexed lookup.

        Revoked and expired keys (at time ``at``) are not found. A disabled tenant is
        returned: the caller answers 403.
        """
        row = self.db.query_one(
            "SELECT k.*, t.id AS t_id, t.name AS t_name, t.enabled AS t_enabled,"
            " t.profile AS t_profile, t.limits AS t_limits,"
            " t.allowed_models AS t_allowed_models, t.created_at AS t_created_at,"
            " t.updated_at AS t_updated_at"
            " FROM api_keys AS k JOIN tenants AS t ON t.id = k.tenant_id"
            " WHERE k.key_hash = ?",
            (key_hash,),
        )
        if row is None:
            return None
        key = _key(row)
        if not key.active(now(at)):
            return None
        return key, _tenant(row, "t_")

    def list(self, tenant_id: str) -> builtins.list[ApiKey]:
        rows = self.db.query(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at, rowid", (tenant_id,)
        )
        return [_key(r) for r in rows]

    def revoke(
        self, key_id_or_prefix: str, *, tenant_id: str | None = None, ts: float | None = None
    ) -> ApiKey:
        """Revoke one key, named by id or prefix (within a tenant, if given), from now on.

        NotFoundError when nothing matches, ConflictError when a prefix matches several
        keys. Revoking a revoked key changes nothing.
        """
        sql = "SELECT * FROM api_keys WHERE (id = ? OR prefix = ?)"
        params: builtins.list[Any] = [key_id_or_prefix, key_id_or_prefix]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        with self.db.transaction():
            rows = self.db.query(sql, params)
            if not rows:
                raise NotFoundError(f"no API key {key_id_or_prefix!r}")
            if len(rows) > 1:
                ids = ", ".join(r["id"] for r in rows)
                raise ConflictError(
                    f"{key_id_or_prefix!r} matches {len(rows)} keys ({ids}): name one by id"
                )
            key = _key(rows[0])
            if key.revoked_at is None:
                self.db.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now(ts), key.id)
                )
        out = self.get(key.id)
        assert out is not None
        return out

    def set_expiry(self, tenant_id: str, expires_at: float, *, except_key_id: str) -> int:
        """Make the tenant's other live keys expire at ``expires_at`` (rotation grace).

        A key that already expires earlier keeps its earlier expiry; revoked keys are
        left alone. Returns how many keys changed.
        """
        return self.db.execute(
            "UPDATE api_keys SET expires_at = ?"
            " WHERE tenant_id = ? AND id != ? AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (expires_at, tenant_id, except_key_id, expires_at),
        ).rowcount

    def touch(self, key_id: str, ts: float | None = None) -> None:
        """Record that a key was used (callers batch this off the request path)."""
        self.db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now(ts), key_id))
