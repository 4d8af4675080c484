"""The ``default`` profile (settings ``tenants.default_*``), the tenant gateway's field names
on the admin bodies (``api.models``), and renaming a tenant: over the real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from studioctl.api import models as M
from studioctl.errors import ConflictError, UsageError
from studioctl.settings import load_settings
from studioctl.store.migrations import migrate
from studioctl.store.sqlite import SqliteDatabase as Database
from studioctl.tenants import (
    DEFAULT_LIMITS,
    DEFAULT_PROFILE,
    PROFILES,
    TenantLimits,
    TenantService,
    default_limits,
    profiles_dict,
)
from studioctl.tenants.keys import hash_key


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "state.db")
    migrate(database)
    yield database
    database.close()


def test_the_default_profile_is_the_tenant_gateways_defaults() -> None:
    assert TenantLimits(4, 120, 120_000, 8192, 512) == DEFAULT_LIMITS
    assert default_limits(load_settings(env={}).tenants) == DEFAULT_LIMITS
    configured = load_settings(
        env={
            "STUDIOCTL_TENANTS_DEFAULT_TPM_LIMIT": "999",
            "STUDIOCTL_TENANTS_DEFAULT_RPM_LIMIT": "7",
        }
    )
    assert default_limits(configured.tenants) == TenantLimits(4, 7, 999, 8192, 512)
    assert DEFAULT_PROFILE not in PROFILES  # the static profiles stay as they were
    assert list(profiles_dict()) == ["conservative", "standard", "pro"]


def test_a_tenant_of_the_default_profile_follows_the_settings(db: Database) -> None:
    mine = TenantLimits(3, 30, 3000, 2048, 128)
    svc = TenantService(db, default_limits=mine)
    info, key = svc.create("acme", profile=DEFAULT_PROFILE, overrides={"max_concurrent": 2})
    assert info.profile == "default" and info.overrides == {"max_concurrent": 2}
    assert (info.limits.max_concurrent, info.limits.rpm, info.limits.tpm) == (2, 30, 3000)
    ctx = svc.lookup(hash_key(key))
    assert ctx is not None and ctx.limits.max_output_tokens == 128
    assert svc.profiles[DEFAULT_PROFILE] == mine and svc.profiles["pro"] == PROFILES["pro"]
    # Another daemon with other defaults: the same stored tenant gets those (what is stored
    # is the profile's name and the overrides, as for every profile).
    other = TenantService(db)
    assert other.get("acme").limits.rpm == DEFAULT_LIMITS.rpm
    assert other.get("acme").limits.max_concurrent == 2
    with pytest.raises(UsageError, match=r"unknown limits profile 'gold'.*default"):
        svc.create("b", profile="gold")


def test_rename_through_set(db: Database) -> None:
    svc = TenantService(db)
    a, _ = svc.create("acme")
    svc.create("taken")
    renamed = svc.set(a.id, name="acme2", overrides={"rpm": 5})
    assert (renamed.id, renamed.name, renamed.limits.rpm) == (a.id, "acme2", 5)
    assert svc.get("acme2").id == a.id
    with pytest.raises(ConflictError, match="taken"):
        svc.set("acme2", name="taken")
    with pytest.raises(UsageError, match="invalid tenant name"):
        svc.set("acme2", name="t_reserved")
    assert svc.set("acme2", name="acme2").name == "acme2"  # its own name: no change


# -- the admin bodies -------------------------------------------------------------------------


def test_create_body_in_the_tenant_gateways_names() -> None:
    body = {
        "tenant_name": "acme",
        "max_concurrent": 2,
        "rpm_limit": 120,
        "tpm_limit": 50000,
        "max_context_tokens": 8192,
        "max_output_tokens": 512,
    }
    req = M.parse(M.TenantCreate, body)
    assert (req.name, req.profile) == ("acme", None)
    assert req.limit_overrides() == {
        "max_concurrent": 2,
        "rpm": 120,
        "tpm": 50000,
        "max_context_tokens": 8192,
        "max_output_tokens": 512,
    }
    # Ours are read as before; nulls are "not given"; the client still sends our names.
    ours = M.parse(M.TenantCreate, {"name": "a", "overrides": {"rpm": 5}, "tpm_limit": None})
    assert ours.limit_overrides() == {"rpm": 5}
    assert M.body(M.TenantCreate(name="a")) == {"name": "a"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"tenant_name": "a", "name": "b"}, ("tenant_name", "name")),
        ({"name": "a", "rpm_limit": 1, "rpm": 2}, ("rpm_limit", "rpm")),
        ({"name": "a", "tpm_limit": 1, "tpm": 2}, ("tpm_limit", "tpm")),
        ({"name": "a", "rpm_limit": 1, "overrides": {"rpm": 2}}, ("rpm_limit", "overrides.rpm")),
        ({"name": "a", "rpm": 1, "overrides": {"rpm": 2}}, ("rpm", "overrides.rpm")),
        (
            {"name": "a", "max_concurrent": 1, "overrides": {"max_concurrent": 3}},
            ("max_concurrent", "overrides.max_concurrent"),
        ),
    ],
)  # fmt: skip
def test_two_spellings_with_different_values_name_both(
    body: dict[str, object], named: tuple[str, str]
) -> None:
    for model in (M.TenantCreate, M.TenantPatch):
        with pytest.raises(UsageError) as info:
            M.parse(model, body)  # type: ignore[arg-type]
        assert all(n in info.value.message for n in named), info.value.message
        assert info.value.details["param"] == named[0]


def test_patch_body_names_and_agreeing_spellings() -> None:
    req = M.parse(M.TenantPatch, {"tenant_name": "new", "rpm_limit": 9, "rpm": 9})
    assert req.name == "new" and req.limit_overrides() == {"rpm": 9}
    assert M.parse(M.TenantPatch, {}).limit_overrides() == {}
    with pytest.raises(UsageError, match="name"):
        M.parse(M.TenantPatch, {"tenant_name": 5})
