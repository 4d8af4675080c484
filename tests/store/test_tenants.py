"""TenantRepo and KeyRepo: CRUD, names, hash lookups, revocation, rotation expiry."""

from __future__ import annotations

import pytest
from tests.store.conftest import query_plan

from studioctl.errors import ConflictError, NotFoundError, UsageError
from studioctl.store import Database, KeyRepo, Store, TenantRepo
from studioctl.tenants import hash_key


def test_create_get_list(store: Store) -> None:
    repo = store.tenants
    acme = repo.create("acme", profile="pro", limits={"rpm": 10}, allowed_models=["tiny"], ts=5.0)
    assert acme.id.startswith("t_") and len(acme.id) == 18
    assert (acme.name, acme.enabled, acme.profile, acme.limits, acme.allowed_models) == (
        "acme",
        True,
        "pro",
        {"rpm": 10},
        ["tiny"],
    )
    assert (acme.created_at, acme.updated_at) == (5.0, 5.0)
    other = repo.create("beta")
    assert other.allowed_models is None
    assert other.limits == {} and other.profile == "standard"
    assert repo.get(acme.id) == acme
    assert repo.get_by_name("ACME") == acme  # names compare case-insensitively
    assert repo.require("acme") == acme and repo.require(acme.id) == acme
    assert [t.name for t in repo.list()] == ["acme", "beta"]
    assert repo.get("t_0000") is None
    with pytest.raises(NotFoundError, match="no tenant 'zeta'"):
        repo.require("zeta")


def test_names(store: Store) -> None:
    repo = store.tenants
    repo.create("acme")
    with pytest.raises(ConflictError, match="tenant 'Acme' already exists"):
        repo.create("Acme")
    for bad in ("", "has space", "-dash", "x" * 65, "t_0123abcd"):
        with pytest.raises(UsageError, match="tenant name"):
            repo.create(bad)
    assert repo.create("team_a.b-c").name == "team_a.b-c"


def test_update(store: Store) -> None:
    repo = store.tenants
    t = repo.create("acme", limits={"rpm": 1}, ts=1.0)
    out = repo.update(
        t.id,
        enabled=False,
        limits={"tpm": 5},
        allowed_models=["a", "b"],
        profile="conservative",
        ts=9.0,
    )
    assert (out.enabled, out.limits, out.allowed_models, out.profile) == (
        False,
        {"tpm": 5},  # replaced whole: merging is the caller's business
        ["a", "b"],
        "conservative",
    )
    assert (out.created_at, out.updated_at) == (1.0, 9.0)
    assert repo.update(t.id, allowed_models=None).allowed_models is None
    assert repo.update(t.id, name="acme2").name == "acme2"
    repo.create("beta")
    with pytest.raises(ConflictError, match="'beta' already exists"):
        repo.update(t.id, name="beta")
    with pytest.raises(TypeError, match="cannot set id"):
        repo.update(t.id, id="t_x")
    with pytest.raises(UsageError, match="allowed models"):
        repo.update(t.id, allowed_models="tiny")
    with pytest.raises(UsageError, match="limits must be a mapping"):
        repo.update(t.id, limits=[1])
    with pytest.raises(NotFoundError):
        repo.update("t_ffff", enabled=True)


def test_delete_cascades_to_keys(db: Database) -> None:
    tenants, keys = TenantRepo(db), KeyRepo(db)
    t = tenants.create("acme")
    k = keys.add(t.id, hash_key("sk-st-secret"), "sk-st-secr")
    assert tenants.delete(t.id) is True
    assert tenants.delete(t.id) is False
    assert keys.get(k.id) is None
    assert keys.find_by_hash(hash_key("sk-st-secret")) is None


def test_keys_add_and_find_by_hash(db: Database) -> None:
    tenants, keys = TenantRepo(db), KeyRepo(db)
    t = tenants.create("acme")
    digest = hash_key("sk-st-abc")
    assert len(digest) == 64
    k = keys.add(t.id, digest, "sk-st-abc", ts=10.0)
    assert k.id.startswith("k_") and k.tenant_id == t.id and k.created_at == 10.0
    found = keys.find_by_hash(digest, at=11.0)
    assert found is not None
    key, tenant = found
    assert key == k and tenant == t
    assert keys.find_by_hash(hash_key("sk-st-other")) is None
    with pytest.raises(ValueError, match="SHA-256 hex digest"):
        keys.add(t.id, "sk-st-plaintext", "sk-st-pla")
    with pytest.raises(ConflictError, match="already exists"):
        keys.add(t.id, digest, "sk-st-abc")
    with pytest.raises(NotFoundError, match="no tenant 't_nope'"):
        keys.add("t_nope", hash_key("x"), "x")


def test_lookup_uses_the_unique_index(db: Database) -> None:
    details = query_plan(
        db,
        "SELECT * FROM api_keys AS k JOIN tenants AS t ON t.id = k.tenant_id WHERE k.key_hash = ?",
        ("0" * 64,),
    )
    if db.backend == "sqlite":
        assert "USING INDEX api_keys_hash (key_hash=?)" in details
        assert "SCAN" not in details
    else:
        assert "api_keys_hash" in details


def test_disabled_tenant_is_still_found(db: Database) -> None:
    # The gateway answers 403 (not 401) for a disabled tenant: it needs to know who.
    tenants, keys = TenantRepo(db), KeyRepo(db)
    t = tenants.create("acme", enabled=False)
    keys.add(t.id, hash_key("k"), "k")
    found = keys.find_by_hash(hash_key("k"))
    assert found is not None and found[1].enabled is False


def test_revoke(db: Database) -> None:
    tenants, keys = TenantRepo(db), KeyRepo(db)
    t = tenants.create("acme")
    u = tenants.create("beta")
    a = keys.add(t.id, hash_key("a"), "sk-st-aaaa")
    keys.add(t.id, hash_key("b"), "sk-st-same")
    keys.add(u.id, hash_key("c"), "sk-st-same")
    out = keys.revoke("sk-st-aaaa", ts=20.0)
    assert out.id == a.id and out.revoked_at == 20.0
    assert out.status(19.0) == "active" and out.status(20.0) == "revoked"
    assert keys.find_by_hash(hash_key("a"), at=20.0) is None  # from the very next request
    stored = keys.get(a.id)
    assert stored is not None and stored.revoked_at == 20.0
    assert keys.revoke(a.id, ts=30.0).revoked_at == 20.0  # again: unchanged
    with pytest.raises(ConflictError, match="matches 2 keys"):
        keys.revoke("sk-st-same")
    assert keys.revoke("sk-st-same", tenant_id=u.id).tenant_id == u.id
    with pytest.raises(NotFoundError, match="no API key 'sk-st-zzzz'"):
        keys.revoke("sk-st-zzzz")


def test_rotation_grace_with_set_expiry(db: Database) -> None:
    tenants, keys = TenantRepo(db), KeyRepo(db)
    t = tenants.create("acme")
    old = keys.add(t.id, hash_key("old"), "old", ts=1.0)
    soon = keys.add(t.id, hash_key("soon"), "soon", expires_at=50.0, ts=1.1)
    gone = keys.add(t.id, hash_key("gone"), "gone", ts=1.2)
    keys.revoke(gone.id, ts=2.0)
    new = keys.add(t.id, hash_key("new"), "new", ts=10.0)
    assert keys.set_expiry(t.id, 10.0 + 86400, except_key_id=new.id) == 1
    by_id = {k.id: k for k in keys.list(t.id)}
    assert by_id[old.id].expires_at == 10.0 + 86400
    assert by_id[soon.id].expires_at == 50.0  # an earlier expiry is kept
    assert by_id[gone.id].expires_at is None  # revoked keys are left alone
    assert by_id[new.id].expires_at is None
    assert keys.find_by_hash(hash_key("old"), at=1000.0) is not None
    assert keys.find_by_hash(hash_key("old"), at=10.0 + 86400) is None  # expired
    assert keys.find_by_hash(hash_key("soon"), at=60.0) is None
    assert by_id[soon.id].status(60.0) == "expired"
    assert [k.id for k in keys.list(t.id)] == [old.id, soon.id, gone.id, new.id]


def test_touch(db: Database) -> None:
    tenants, keys = TenantRepo(db), KeyRepo(db)
    t = tenants.create("acme")
    k = keys.add(t.id, hash_key("a"), "a")
    assert k.last_used_at is None
    keys.touch(k.id, 42.0)
    assert (keys.get(k.id) or k).last_used_at == 42.0
