"""API key generation and the Authenticator (cache, invalidation, expiry, anonymous)."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest

from studioctl.errors import GatewayError, StudioError
from studioctl.gateway.auth import Authenticator
from studioctl.tenants import PROFILES, TenantContext, anonymous_context
from studioctl.tenants.keys import KEY_SCHEME, generate_key, hash_key, key_prefix


class Clock:
    def __init__(self, t: float = 500.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Lookup:
    """A key table standing in for TenantService.lookup; counts calls."""

    def __init__(self) -> None:
        self.by_hash: dict[str, TenantContext] = {}
        self.calls: list[str] = []
        self.fail: Exception | None = None

    def add(self, name: str = "acme", *, enabled: bool = True, **kw: object) -> str:
        plaintext, prefix, digest = generate_key()
        self.by_hash[digest] = TenantContext(
            tenant_id=f"t_{name}",
            name=name,
            enabled=enabled,
            limits=PROFILES["standard"],
            key_prefix=prefix,
            **kw,  # type: ignore[arg-type]
        )
        return plaintext

    def __call__(self, digest: str) -> TenantContext | None:
        self.calls.append(digest)
        if self.fail is not None:
            raise self.fail
        return self.by_hash.get(digest)


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def auth_error(auth: Authenticator, header: bytes | None) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        auth.authenticate(header)
    return info.value


# -- keys --------------------------------------------------------------------------------


def test_generated_key_format_prefix_and_hash() -> None:
    plaintext, prefix, digest = generate_key()
    assert re.fullmatch(r"sk-st-[A-Za-z0-9_-]{43}", plaintext), plaintext
    assert prefix == plaintext[:14] == key_prefix(plaintext)
    assert prefix.startswith(KEY_SCHEME) and len(prefix) == len("sk-st-AbCd1234")
    assert digest == hashlib.sha256(plaintext.encode()).hexdigest() == hash_key(plaintext)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_one_hash_for_a_stored_key_and_a_header_token() -> None:
    # The authenticator hashes the header's bytes; the service hashes the str it generated.
    plaintext, _, digest = generate_key()
    assert hash_key(plaintext.encode("ascii")) == hash_key(plaintext) == digest
    assert hash_key("sk-st-é") == hashlib.sha256("sk-st-é".encode()).hexdigest()


def test_generated_keys_are_unique() -> None:
    keys = {generate_key()[0] for _ in range(2000)}
    assert len(keys) == 2000
    assert len({k[:14] for k in keys}) == 2000  # 48-bit prefixes: no collision expected


# -- authenticate ------------------------------------------------------------------------


def test_valid_key_returns_the_tenant_and_is_cached() -> None:
    lookup = Lookup()
    key = lookup.add("acme")
    auth = Authenticator(lookup, clock=Clock())
    ctx = auth.authenticate(bearer(key))
    assert ctx.name == "acme" and ctx.key_prefix == key[:14]
    for _ in range(100):
        assert auth.authenticate(bearer(key)) is ctx
    assert lookup.calls == [hash_key(key)]  # one index lookup, then dict hits


def test_scheme_is_case_insensitive_and_whitespace_tolerated() -> None:
    lookup = Lookup()
    key = lookup.add()
    auth = Authenticator(lookup, clock=Clock())
    assert auth.authenticate(f"bearer {key}".encode()).name == "acme"
    assert auth.authenticate(f"BEARER  {key} ".encode()).name == "acme"


@pytest.mark.parametrize("header", [None, b""])
def test_missing_key_is_401_in_the_openai_envelope(header: bytes | None) -> None:
    err = auth_error(Authenticator(Lookup()), header)
    assert err.http_status == 401
    assert err.code == "invalid_api_key"
    body = err.to_dict()
    assert body["type"] == "authentication_error" and body["code"] == "invalid_api_key"
    assert "missing API key" in body["message"]


@pytest.mark.parametrize(
    "header",
    [b"Basic dXNlcjpwYXNz", b"Token sk-st-abc", b"Bearer", b"Bearer ", b"sk-st-abc"],
)
def test_malformed_authorization_is_401(header: bytes) -> None:
    lookup = Lookup()
    err = auth_error(Authenticator(lookup), header)
    assert err.http_status == 401 and err.code == "invalid_api_key"
    assert lookup.calls == []  # no database probe for garbage


def test_a_token_without_the_key_scheme_is_refused_without_a_lookup() -> None:
    lookup = Lookup()
    err = auth_error(Authenticator(lookup), b"Bearer sk-proj-openai-key")
    assert err.http_status == 401 and lookup.calls == []


def test_unknown_key_is_401_and_remembered_until_invalidate() -> None:
    lookup = Lookup()
    auth = Authenticator(lookup, clock=Clock())
    stray = generate_key()[0]
    for _ in range(50):
        err = auth_error(auth, bearer(stray))
        assert err.http_status == 401 and err.code == "invalid_api_key"
    assert len(lookup.calls) == 1  # bad keys do not cost a query each
    auth.invalidate()
    auth_error(auth, bearer(stray))
    assert len(lookup.calls) == 2


def test_a_key_created_after_a_failed_attempt_works_once_invalidated() -> None:
    lookup = Lookup()
    auth = Authenticator(lookup, clock=Clock())
    plaintext, prefix, digest = generate_key()
    auth_error(auth, bearer(plaintext))
    lookup.by_hash[digest] = TenantContext("t_new", "new", True, PROFILES["pro"], prefix)
    auth.invalidate()  # TenantService calls this on every change
    assert auth.authenticate(bearer(plaintext)).name == "new"


def test_disabled_tenant_is_403() -> None:
    lookup = Lookup()
    key = lookup.add("sleepy", enabled=False)
    err = auth_error(Authenticator(lookup), bearer(key))
    assert err.http_status == 403 and err.code == "tenant_disabled"
    assert err.to_dict()["type"] == "permission_error"
    assert "'sleepy'" in err.message


def test_revocation_applies_to_the_very_next_request() -> None:
    lookup = Lookup()
    key = lookup.add()
    auth = Authenticator(lookup, clock=Clock(), cache_ttl_s=3600)
    auth.authenticate(bearer(key))
    del lookup.by_hash[hash_key(key)]
    auth.invalidate()
    assert auth_error(auth, bearer(key)).http_status == 401


def test_disabling_applies_to_the_very_next_request() -> None:
    lookup = Lookup()
    key = lookup.add()
    auth = Authenticator(lookup, clock=Clock(), cache_ttl_s=3600)
    auth.authenticate(bearer(key))
    digest = hash_key(key)
    lookup.by_hash[digest] = dataclasses.replace(lookup.by_hash[digest], enabled=False)
    auth.invalidate()
    assert auth_error(auth, bearer(key)).http_status == 403


def test_cache_entries_expire_after_the_ttl() -> None:
    lookup = Lookup()
    key = lookup.add()
    clock = Clock()
    auth = Authenticator(lookup, clock=clock, cache_ttl_s=10)
    auth.authenticate(bearer(key))
    clock.t += 9.9
    auth.authenticate(bearer(key))
    assert len(lookup.calls) == 1
    clock.t += 0.2
    auth.authenticate(bearer(key))
    assert len(lookup.calls) == 2


def test_cache_never_outlives_the_key_expiry() -> None:
    # A rotated-out key expiring in 2 s is looked up again after 2 s even with a long TTL.
    lookup = Lookup()
    clock = Clock(100.0)
    wall = Clock(1_700_000_000.0)
    key = lookup.add(key_expires_at=wall.t + 2.0)
    auth = Authenticator(lookup, clock=clock, wall_clock=wall, cache_ttl_s=3600)
    auth.authenticate(bearer(key))
    clock.t += 1.5
    auth.authenticate(bearer(key))
    assert len(lookup.calls) == 1
    clock.t += 1.0
    wall.t += 2.5
    del lookup.by_hash[hash_key(key)]  # expired: the store no longer returns it
    assert auth_error(auth, bearer(key)).http_status == 401


@pytest.mark.parametrize(
    "failure", [StudioError("database is locked"), OSError("database is locked")]
)
def test_store_failure_is_503_with_retry_after(failure: Exception) -> None:
    lookup = Lookup()
    key = lookup.add()
    lookup.fail = failure
    auth = Authenticator(lookup)
    err = auth_error(auth, bearer(key))
    assert err.http_status == 503 and err.code == "auth_unavailable"
    assert err.retry_after is not None and err.retry_after > 0
    assert "database is locked" in err.message
    lookup.fail = None  # a failure is not cached as "unknown key"
    assert auth.authenticate(bearer(key)).name == "acme"


def test_anonymous_context_serves_requests_without_a_key_only() -> None:
    lookup = Lookup()
    anon = anonymous_context(PROFILES["conservative"])
    auth = Authenticator(lookup, anonymous=anon)
    assert auth.authenticate(None) is anon
    assert auth.authenticate(b"") is anon
    # A wrong key is still refused: no silent downgrade to anonymous.
    assert auth_error(auth, bearer(generate_key()[0])).http_status == 401
    key = lookup.add("acme")
    assert auth.authenticate(bearer(key)).name == "acme"


def test_anonymous_context_defaults() -> None:
    anon = anonymous_context()
    assert anon.tenant_id == anon.name == "anonymous"
    assert anon.enabled and anon.key_prefix == ""
    assert anon.limits == PROFILES["conservative"]


def test_cache_is_bounded() -> None:
    lookup = Lookup()
    keys = [lookup.add(f"t{i}") for i in range(30)]
    auth = Authenticator(lookup, clock=Clock(), max_entries=10)
    for key in keys:
        auth.authenticate(bearer(key))
    assert len(auth._cache) <= 10
    for key in keys:  # still correct after evictions
        assert auth.authenticate(bearer(key)).key_prefix == key[:14]
