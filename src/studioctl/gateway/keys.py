"""API keys: random, prefixed, shown once, stored only as their SHA-256.

A key looks like ``sk-st-`` followed by 43 URL-safe characters (32 random bytes, 256 bits).
Its first 14 characters (``sk-st-`` + 8) are the *display prefix*: stored in clear so that
people can tell their keys apart (``tenant key list``) and revoke one by prefix. The prefix
carries 48 bits of the key; the remaining 208 bits keep it unguessable.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_SCHEME = "sk-st-"
# 32 random bytes → 43 URL-safe base64 characters (no padding).
_RANDOM_BYTES = 32
_PREFIX_LEN = len(KEY_SCHEME) + 8


def generate_key() -> tuple[str, str, str]:
    """A new key: ``(plaintext, display prefix, sha256 hex)``. Show the plaintext once."""
    plaintext = KEY_SCHEME + secrets.token_urlsafe(_RANDOM_BYTES)
    return plaintext, key_prefix(plaintext), hash_key(plaintext)


def hash_key(plaintext: str) -> str:
    """The SHA-256 hex digest a key is stored and looked up by."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def key_prefix(plaintext: str) -> str:
    """The display prefix of a key, e.g. ``sk-st-AbCd1234``."""
    return plaintext[:_PREFIX_LEN]
