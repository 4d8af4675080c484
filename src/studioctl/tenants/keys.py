"""API keys: random, prefixed, shown once, stored only as their SHA-256.

A key looks like ``sk-st-`` followed by 43 URL-safe characters (32 random bytes, 256 bits).
Its first 14 characters (``sk-st-`` + 8) are the *display prefix*: stored in clear so that
people can tell their keys apart (``tenant key list``) and revoke one by prefix. The prefix
carries 48 bits of the key; the remaining 208 bits keep it unguessable.
"""

from __future__ import annotations

import secrets
from hashlib import sha256

KEY_SCHEME = "sk-st-"
# 32 random bytes → 43 URL-safe base64 characters (no padding).
_RANDOM_BYTES = 32
_PREFIX_LEN = len(KEY_SCHEME) + 8


def generate_key() -> tuple[str, str, str]:
    """A new key: ``(plaintext, display prefix, sha256 hex)``. Show the plaintext once."""
    plaintext = KEY_SCHEME + secrets.token_urlsafe(_RANDOM_BYTES)
    return plaintext, key_prefix(plaintext), hash_key(plaintext)


def hash_key(key: str | bytes) -> str:
    """The SHA-256 hex digest a key is stored and looked up by: the one definition.

    ``bytes`` as they came in an ``Authorization`` header (the gateway's hot path skips a
    decode), ``str`` from everywhere else (encoded UTF-8: the same digest for the same key).
    """
    return sha256(key.encode("utf-8") if isinstance(key, str) else key).hexdigest()


def key_prefix(plaintext: str) -> str:
    """The display prefix of a key, e.g. ``sk-st-AbCd1234``."""
    return plaintext[:_PREFIX_LEN]
