"""Tenant limits: the profiles, their per-field overrides, and how both are validated.

Profiles (values of the seed gateway)::

    profile        max_concurrent  rpm  tpm      max_context_tokens  max_output_tokens
    conservative   1               60   30000    4096                256
    standard       2               180  120000   8192                512
    pro            4               600  400000   16384               1024
    default        tenants.default_* settings (4, 120, 120000, 8192, 512 unless set)

``default`` is the profile of a tenant created over the admin API without one (the tenant
gateway's DEFAULT_* limits): its values are the daemon's settings, so ``TenantService``
holds the profile table (``PROFILES`` plus ``default``) and passes it to ``resolve_limits``.
A tenant stores its profile name and only the fields it overrides; ``resolve_limits``
turns both into the ``TenantLimits`` the gateway enforces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studioctl.errors import UsageError

if TYPE_CHECKING:
    from studioctl.settings import TenantsSettings


@dataclass(frozen=True, slots=True)
class TenantLimits:
    max_concurrent: int
    rpm: int
    tpm: int
    max_context_tokens: int
    max_output_tokens: int
    allowed_models: tuple[str, ...] | None = None  # None = all models
    # Store this tenant's request and response bodies (debugging; usage.body_* bound them).
    log_bodies: bool = False
    # Webhooks (issue 15): whether the tenant's requests may ask for one (X-Webhook-Mode,
    # X-Webhook-URL), and whether they may name their own receiver: an open URL override
    # lets a client make the daemon call any address (server-side request forgery).
    webhooks: bool = True
    webhook_url_override: bool = False

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
        out: dict[str, Any] = {
            "max_concurrent": self.max_concurrent,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_context_tokens": self.max_context_tokens,
            "max_output_tokens": self.max_output_tokens,
            "allowed_models": list(self.allowed_models)
            if self.allowed_models is not None
            else None,
        }
        if self.log_bodies:  # shown only when on: the usual answer keeps its shape
            out["log_bodies"] = True
        if not self.webhooks:  # the flags too, only when not their default
            out["webhooks"] = False
        if self.webhook_url_override:
            out["webhook_url_override"] = True
        return out


# The integer limits, in display order (allowed_models is separate: a list, not a number).
LIMIT_FIELDS: tuple[str, ...] = (
    "max_concurrent",
    "rpm",
    "tpm",
    "max_context_tokens",
    "max_output_tokens",
)

# The flags a tenant may set besides its limits (stored with its overrides).
FLAG_FIELDS: tuple[str, ...] = ("log_bodies", "webhooks", "webhook_url_override")
#: Every field a tenant's stored overrides may hold.
OVERRIDE_FIELDS: tuple[str, ...] = (*LIMIT_FIELDS, *FLAG_FIELDS)

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


#: The profile of a tenant created without one; its values come from the settings.
DEFAULT_PROFILE = "default"
#: ``default``'s values when the settings do not say otherwise (tenants.default_*).
DEFAULT_LIMITS = TenantLimits(
    max_concurrent=4, rpm=120, tpm=120_000, max_context_tokens=8192, max_output_tokens=512
)


def default_limits(settings: TenantsSettings) -> TenantLimits:
    """The ``default`` profile of the ``tenants`` settings section."""
    return TenantLimits(
        max_concurrent=settings.default_max_concurrent,
        rpm=settings.default_rpm_limit,
        tpm=settings.default_tpm_limit,
        max_context_tokens=settings.default_max_context_tokens,
        max_output_tokens=settings.default_max_output_tokens,
    )


def profile_table(default: TenantLimits | None = None) -> dict[str, TenantLimits]:
    """``PROFILES`` plus ``default`` (``default``: the configured values, else DEFAULT_LIMITS)."""
    return {**PROFILES, DEFAULT_PROFILE: default if default is not None else DEFAULT_LIMITS}


def resolve_limits(
    profile: str,
    overrides: Mapping[str, Any],
    profiles: Mapping[str, TenantLimits] = PROFILES,
) -> TenantLimits:
    """The limits of ``profile`` with ``overrides`` applied.

    ``overrides`` maps limit names (``LIMIT_FIELDS`` and ``allowed_models``) to values; a
    ``None`` value means "the profile's value". Integers may be given as decimal strings
    (from query strings or flags). Unknown profile or field, or a bad value → ``UsageError``
    naming it.
    """
    base = profiles.get(profile)
    if base is None:
        raise UsageError(
            f"unknown limits profile {profile!r}; known: {', '.join(profiles)}",
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
        elif key in FLAG_FIELDS:
            values[key] = _flag(key, raw)
        else:
            known = ", ".join((*OVERRIDE_FIELDS, "allowed_models"))
            raise UsageError(
                f"unknown limit {key!r}; known: {known}",
                details={"param": key},
            )
    return TenantLimits(**values)


def profiles_dict(
    profiles: Mapping[str, TenantLimits] = PROFILES,
) -> dict[str, dict[str, Any]]:
    """The profiles as plain data (admin API, ``tenant`` help)."""
    return {name: limits.to_dict() for name, limits in profiles.items()}


def _flag(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{key!r} must be true or false, got {raw!r}", details={"param": key})


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
