"""API key → tenant, for every gateway request.

``Authenticator.authenticate`` takes the raw ``Authorization`` header (and the key header,
``gateway.api_key_header``, ``X-API-Key: KEY`` as LMServ's clients send it), hashes the bearer
token with SHA-256 and finds the tenant through a dict cache in front of ``lookup`` (the
store's unique index on the key hash: ``TenantService.lookup``). A cache hit costs one
hash and one dict probe; no I/O, no lock (the gateway runs in one asyncio thread). The
caller picks the key header out in the same pass over the headers as ``Authorization``
(``key_header``: its lower-case name), so accepting it costs no extra lookup.

Freshness: every tenant or key change calls ``invalidate()`` (``TenantService`` does it
through its ``on_change`` hook), so a revocation, a disabled tenant or new limits apply to
the very next request. Entries also expire after ``cache_ttl_s`` (a safety net for changes
made by another process on the same SQLite file; daemons sharing PostgreSQL hear of each
other's changes through ``refresh``, the change feed) and never outlive the key's own expiry
(rotation grace). Unknown keys are remembered too (bounded) so that a client hammering
with a bad key costs no database query per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from studioctl.errors import GatewayError, StoreUnavailable, StudioError
from studioctl.tenants import KEY_SCHEME, TenantContext, hash_key

__all__ = ["Authenticator"]

_SCHEME = KEY_SCHEME.encode("ascii")
_MISSING = (
    "missing API key: send it as 'Authorization: Bearer sk-st-…' (or in the key header, "
    "gateway.api_key_header) "
    "(create one with `studioctl tenant create NAME`)"
)
_INVALID = "invalid API key: unknown, revoked or expired (see `studioctl tenant key list`)"
_BEARER = b"Bearer "


class Authenticator:
    __slots__ = (
        "_anonymous",
        "_bad",
        "_cache",
        "_clock",
        "_fail_open",
        "_key_name",
        "_lookup",
        "_max_entries",
        "_refresh",
        "_stale",
        "_ttl",
        "_wall",
        "key_header",
    )

    def __init__(
        self,
        lookup: Callable[[str], TenantContext | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_ttl_s: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
        anonymous: TenantContext | None = None,
        max_entries: int = 10_000,
        api_key_header: str = "X-API-Key",
        refresh: Callable[[], object] | None = None,
        fail_open: bool = False,
    ) -> None:
        """``lookup(sha256_hex)`` returns the tenant of a valid key, else ``None``.

        ``anonymous``: the context of requests without any ``Authorization`` header (see
        ``tenants.anonymous_context``); ``None`` (the default) answers them 401. A request
        presenting a wrong key is refused either way.

        ``api_key_header``: the header a key may come in instead of ``Authorization:
        Bearer`` (``gateway.api_key_header``); "" accepts ``Authorization`` only.

        ``refresh``: called before each key is looked at (the store's change feed:
        ``ChangeFeed.poll``, which calls ``invalidate`` when another daemon changed tenants
        or keys). When it, or ``lookup``, raises ``StoreUnavailable``: 503
        ``store_unavailable``, or with ``fail_open`` the cached tenant (even past its TTL).
        """
        #: The key header's lower-case name as ASGI gives it (None: not accepted).
        self.key_header: bytes | None = api_key_header.lower().encode() or None
        self._key_name = api_key_header
        self._lookup = lookup
        self._refresh = refresh
        self._fail_open = fail_open
        self._clock = clock
        self._wall = wall_clock
        self._ttl = cache_ttl_s
        self._anonymous = anonymous
        self._max_entries = max_entries
        # key hash → (monotonic deadline, context)
        self._cache: dict[str, tuple[float, TenantContext]] = {}
        # The cache as it was before the last invalidate(): what fail_open answers with
        # when the store cannot be asked (a daemon's cache is invalidated as its change
        # feed comes back, before its own connection may be).
        self._stale: dict[str, tuple[float, TenantContext]] = {}
        # key hash → monotonic deadline, for keys the lookup did not know
        self._bad: dict[str, float] = {}

    def authenticate(
        self, authorization_header: bytes | None, api_key: bytes | None = None
    ) -> TenantContext:
        """The tenant of a request, or ``GatewayError`` 401 ``invalid_api_key`` / 403
        ``tenant_disabled``. ``api_key``: the value of the ``key_header`` header, if sent."""
        if api_key is not None:
            authorization_header = self._with_key(authorization_header, api_key)
        if not authorization_header:
            if self._anonymous is not None:
                return self._anonymous
            raise GatewayError(401, "invalid_api_key", _MISSING)
        scheme = authorization_header[:7]
        if scheme != b"Bearer " and scheme.lower() != b"bearer ":
            raise GatewayError(
                401, "invalid_api_key", "invalid Authorization header: expected 'Bearer <key>'"
            )
        token = authorization_header[7:].strip()
        if not token.startswith(_SCHEME):
            raise GatewayError(401, "invalid_api_key", _INVALID)
        if self._refresh is not None:
            self._refreshed()
        digest = hash_key(token)
        now = self._clock()
        entry = self._cache.get(digest)
        ctx = entry[1] if entry is not None and entry[0] > now else self._fill(digest, now)
        if not ctx.enabled:
            raise GatewayError(
                403, "tenant_disabled", f"tenant {ctx.name!r} is disabled; ask an administrator"
            )
        return ctx

    def _with_key(self, authorization: bytes | None, api_key: bytes) -> bytes | None:
        """The ``Authorization`` value to check, given a key header: the key as a bearer
        token; when both are sent they must carry the same key."""
        token = api_key.strip()
        if not token:
            return authorization
        if not authorization:
            return _BEARER + token
        scheme = authorization[:7]
        same = authorization[7:].strip() == token
        if same and (scheme == _BEARER or scheme.lower() == b"bearer "):
            return authorization
        raise GatewayError(
            401,
            "invalid_api_key",
            f"conflicting credentials: the Authorization header and the {self._key_name} "
            "header carry different keys; send one of them",
        )

    def _refreshed(self) -> None:
        assert self._refresh is not None
        try:
            self._refresh()
        except StoreUnavailable as exc:
            if not self._fail_open:  # a revocation may be unheard: trust no cached key
                raise _store_down(exc) from exc

    def _fill(self, digest: str, now: float) -> TenantContext:
        bad_until = self._bad.get(digest)
        if bad_until is not None and bad_until > now:
            raise GatewayError(401, "invalid_api_key", _INVALID)
        try:
            ctx = self._lookup(digest)
        except StoreUnavailable as exc:
            stale = self._cache.get(digest) or self._stale.get(digest)
            if self._fail_open and stale is not None:
                return stale[1]  # fail open: the tenant as last seen
            raise _store_down(exc) from exc
        except Exception as exc:  # the store failing (locked, disk): not the client's fault
            reason = exc.message if isinstance(exc, StudioError) else repr(exc)
            raise GatewayError(
                503,
                "auth_unavailable",
                f"cannot check the API key right now: {reason}",
                retry_after=1.0,
            ) from exc
        if ctx is None:
            self._cache.pop(digest, None)
            if len(self._bad) >= self._max_entries:
                self._bad.clear()
            self._bad[digest] = now + self._ttl
            raise GatewayError(401, "invalid_api_key", _INVALID)
        deadline = now + self._ttl
        if ctx.key_expires_at is not None:
            # Never serve a rotated-out key from the cache past its expiry.
            deadline = min(deadline, now + (ctx.key_expires_at - self._wall()))
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[digest] = (deadline, ctx)
        return ctx

    def invalidate(self) -> None:
        """Forget everything: the next request of every key asks ``lookup`` again."""
        if self._fail_open and self._cache:  # two in a row must not forget what it knew
            self._stale = self._cache
            self._cache = {}
        self._cache.clear()
        self._bad.clear()

    @property
    def anonymous(self) -> TenantContext | None:
        return self._anonymous


def _store_down(exc: StoreUnavailable) -> GatewayError:
    return GatewayError(
        503, "store_unavailable", f"cannot check the API key right now: {exc.message}"
    )
