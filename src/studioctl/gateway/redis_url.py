"""Where a Redis is and how to log in: ``limits.redis_url`` taken apart.

Forms (the ones redis-py and redis-cli take): ``redis://[[user]:password@]host[:port][/db]``,
``rediss://…`` for TLS (the system's CA certificates, host name checked; query
``ssl_cert_reqs=none`` turns the check off, ``ssl_ca_certs=PATH`` names a CA file), and
``unix://[[user]:password@]/path/to/socket[?db=N]``. ``?db=N`` works for every form, and
``?password=`` for a socket. Percent-escapes in the user and password are decoded.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisAddress", "parse_redis_url"]

DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A parsed ``redis_url``: where to connect and the commands that log in."""

    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""  # a unix socket (then host is unused)
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None

    def hello(self) -> list[tuple[str | int, ...]]:
        """The commands sent first on every new connection (AUTH, SELECT)."""
        out: list[tuple[str | int, ...]] = []
        if self.password is not None:
            if self.username:
                out.append(("AUTH", self.username, self.password))
            else:
                out.append(("AUTH", self.password))
        if self.db:
            out.append(("SELECT", self.db))
        return out


def parse_redis_url(url: str) -> RedisAddress:
    """``url`` taken apart, or ``ValueError`` saying what is wrong with it."""
    parts = urlsplit(url.strip())
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else query.get("password")
    db_text = query.get("db")
    if not db_text and parts.scheme != "unix":
        db_text = parts.path.strip("/")
    if db_text and not db_text.isdigit():
        raise ValueError(f"the database must be a number, got {db_text!r}")
    db = int(db_text) if db_text else 0
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs the socket's path (unix:///run/redis/redis.sock)")
        return RedisAddress(path=parts.path, username=username, password=password, db=db)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unknown scheme {parts.scheme!r} (redis://, rediss://, unix://)")
    if not parts.hostname:
        raise ValueError("needs a host: redis://host:6379/0")
    tls = _tls_context(query) if parts.scheme == "rediss" else None
    return RedisAddress(
        host=parts.hostname,
        port=parts.port or DEFAULT_PORT,
        username=username,
        password=password,
        db=db,
        tls=tls,
    )


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif reqs == "optional":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_OPTIONAL
    elif reqs != "required":
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, got {reqs!r}")
    return context
