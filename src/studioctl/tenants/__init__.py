"""Tenants: who may call the gateway, with which limits, by which API key.

- ``limits``: the limit profiles, per-field overrides and their validation.
- ``context``: ``TenantContext``, the caller of one gateway request.
- ``keys``: key generation, display prefix, and the one key hash.
- ``service``: ``TenantService``, tenants and keys over the store.
"""

from __future__ import annotations

from studioctl.tenants.context import ANONYMOUS_TENANT_ID, TenantContext, anonymous_context
from studioctl.tenants.keys import KEY_SCHEME, generate_key, hash_key, key_prefix
from studioctl.tenants.limits import (
    DEFAULT_LIMITS,
    DEFAULT_PROFILE,
    FLAG_FIELDS,
    LIMIT_FIELDS,
    OVERRIDE_FIELDS,
    PROFILES,
    TenantLimits,
    default_limits,
    normalize_allowed_models,
    profile_table,
    profiles_dict,
    resolve_limits,
)
from studioctl.tenants.service import (
    DEFAULT_ROTATION_GRACE_S,
    KeyInfo,
    TenantInfo,
    TenantService,
    validate_tenant_name,
)

__all__ = [
    "ANONYMOUS_TENANT_ID",
    "DEFAULT_LIMITS",
    "DEFAULT_PROFILE",
    "DEFAULT_ROTATION_GRACE_S",
    "FLAG_FIELDS",
    "KEY_SCHEME",
    "LIMIT_FIELDS",
    "OVERRIDE_FIELDS",
    "PROFILES",
    "KeyInfo",
    "TenantContext",
    "TenantInfo",
    "TenantLimits",
    "TenantService",
    "anonymous_context",
    "default_limits",
    "generate_key",
    "hash_key",
    "key_prefix",
    "normalize_allowed_models",
    "profile_table",
    "profiles_dict",
    "resolve_limits",
    "validate_tenant_name",
]
