"""Tenant limits, profiles and TenantService over the real SQLite store."""

from __future__ import annotations

from typing import Any

import pytest

from studioctl.errors import UsageError
from studioctl.gateway.tenants import (
    LIMIT_FIELDS,
    PROFILES,
    TenantLimits,
    normalize_allowed_models,
    resolve_limits,
    validate_tenant_name,
)

# -- profiles and limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "values"),
    [
        ("conservative", (1, 60, 30_000, 4096, 256)),
        ("standard", (2, 180, 120_000, 8192, 512)),
        ("pro", (4, 600, 400_000, 16384, 1024)),
    ],
)
def test_profiles_have_the_seed_gateway_values(profile: str, values: tuple[int, ...]) -> None:
    limits = PROFILES[profile]
    assert tuple(getattr(limits, f) for f in LIMIT_FIELDS) == values
    assert limits.allowed_models is None
    assert resolve_limits(profile, {}) == limits


def test_overrides_replace_single_fields() -> None:
    limits = resolve_limits("standard", {"rpm": 30, "max_output_tokens": "128", "tpm": None})
    assert limits == TenantLimits(
        max_concurrent=2, rpm=30, tpm=120_000, max_context_tokens=8192, max_output_tokens=128
    )


def test_allowed_models_override() -> None:
    limits = resolve_limits("pro", {"allowed_models": ["tiny", "big", "tiny"]})
    assert limits.allowed_models == ("tiny", "big")
    assert limits.allows("tiny") and not limits.allows("other")
    assert PROFILES["pro"].allows("anything")


def test_unknown_profile_is_named() -> None:
    with pytest.raises(UsageError, match=r"unknown limits profile 'gold'.*conservative"):
        resolve_limits("gold", {})


def test_unknown_field_is_named() -> None:
    with pytest.raises(UsageError, match="unknown limit 'rps'") as info:
        resolve_limits("standard", {"rps": 3})
    assert info.value.to_dict()["param"] == "rps"


@pytest.mark.parametrize("bad", [0, -5, 1.5, "ten", "", True, [3]])
def test_bad_limit_values_are_named(bad: Any) -> None:
    with pytest.raises(UsageError, match="limit 'tpm' must be a whole number") as info:
        resolve_limits("standard", {"tpm": bad})
    assert info.value.exit_code == 2
    assert info.value.to_dict()["param"] == "tpm"


def test_limits_cannot_be_built_with_nonsense() -> None:
    with pytest.raises(UsageError, match="'rpm'"):
        TenantLimits(max_concurrent=1, rpm=0, tpm=1, max_context_tokens=1, max_output_tokens=1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ([], None),
        (["*"], None),
        ("*", None),
        ("tiny, big", ("tiny", "big")),
        (("a",), ("a",)),
        ([" a ", "b"], ("a", "b")),
    ],
)
def test_normalize_allowed_models(raw: Any, expected: tuple[str, ...] | None) -> None:
    assert normalize_allowed_models(raw) == expected


@pytest.mark.parametrize("raw", [[""], [3], {"a": 1}, ["*", "tiny"], 7])
def test_bad_allowed_models(raw: Any) -> None:
    with pytest.raises(UsageError, match="allowed_models"):
        normalize_allowed_models(raw)


@pytest.mark.parametrize("name", ["acme", "Team-7", "a", "x.y_z", "9lives"])
def test_valid_tenant_names(name: str) -> None:
    assert validate_tenant_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "has space", "t_123", "anonymous", "a" * 65, "é"])
def test_invalid_tenant_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid tenant name"):
        validate_tenant_name(name)
