"""The one home of the ``redis`` package (redis-py ≥ 5, asyncio): connections, scripts, PING.

Imported only when ``limits.backend`` is ``redis`` (``config validate`` imports it for its
PING too); nothing else in studioctl imports ``redis`` (an import-linter contract).

Bounded: connecting and every command time out after ``timeout_s``, and at most
``max_connections`` connections are open (a caller waits at most ``timeout_s`` for one).
Every failure to reach Redis — refused, reset, timed out, no connection free — is raised as
the builtin ``ConnectionError`` naming the URL without its password; script errors (a bug)
pass as they are.

Cancellation safety: a cancelled caller must never leave a connection with an unread reply
in the pool (the next command on it would read the previous one's answer; redis-py had such
a bug). A call cancelled while it waits for its reply hands its connection to a background
task that reads the reply (bounded by the socket timeout) before the connection goes back
to the pool, and gives ``orphan`` (when given) the reply the caller will never see — so that
what the call took in Redis can be given back. Any other interruption closes the connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from studioctl.errors import ConfigError
from studioctl.settings import redact_url

__all__ = ["DEFAULT_TIMEOUT_S", "RedisClient", "Script", "pack", "ping"]

log = logging.getLogger("studioctl.gateway")

#: Connect and command timeout: a request never waits longer than this on Redis.
DEFAULT_TIMEOUT_S = 0.5
_UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    __slots__ = ("lua", "sha")

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()


class RedisClient:
    """A bounded pool of connections to one Redis, with its scripts."""

    def __init__(
        self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_connections: int = 64
    ) -> None:
        self.shown = redact_url(url)
        self.timeout_s = timeout_s
        # redis-py's pool only as the factory of its connections (URL, timeouts, AUTH,
        # SELECT, TLS); the pool itself is this list: its get/release cost ~5x a round trip.
        self._factory = aioredis.ConnectionPool.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._idle: list[Any] = []
        self._free = asyncio.Semaphore(max_connections)
        self._orphans: set[asyncio.Task[Any]] = set()

    def script(self, lua: str) -> Script:
        """A script run by EVALSHA, loaded (SCRIPT LOAD) on NOSCRIPT: a new or restarted Redis."""
        return Script(lua)

    async def run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[str | int],
        orphan: Callable[[Any], None] | None = None,
    ) -> Any:
        """One script call (one round trip; two after a NOSCRIPT)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._command(command, orphan)
        except redis_errors.NoScriptError:
            await self._command(("SCRIPT", "LOAD", script.lua), None)
            return await self._command(command, orphan)

    async def execute(self, *args: str | int) -> Any:
        """One plain command (``PING``, …), as safe to cancel as :meth:`run`."""
        return await self._command(args, None)

    async def _command(
        self, args: Sequence[str | int], orphan: Callable[[Any], None] | None
    ) -> Any:
        """One command on a pooled connection (packed here in one buffer: redis-py's
        packer is pure Python and costs more than the round trip)."""
        free = self._free
        if free.locked():  # every connection busy: wait at most timeout_s for one
            try:
                await asyncio.wait_for(free.acquire(), self.timeout_s)
            except TimeoutError:
                raise ConnectionError(f"redis at {self.shown}: no connection free") from None
        else:
            await free.acquire()
        factory = self._factory
        conn = self._idle.pop() if self._idle else factory.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(pack(args), check_health=False)
            reply = await conn.read_response()
        except asyncio.CancelledError:
            # The reply may still come: it is read off this connection in the background,
            # so the connection goes back clean and ``orphan`` learns what the call took.
            task = asyncio.get_running_loop().create_task(self._drain(conn, orphan))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)
            raise
        except redis_errors.ResponseError:
            self._give(conn)  # an error reply (NOSCRIPT, a script's error), read whole
            raise
        except BaseException as exc:
            # Cut short (a timeout, a reset): the connection's state is unknown; it is
            # closed, never reused with a reply left unread.
            await conn.disconnect(nowait=True)
            self._give(conn)
            if isinstance(exc, _UNREACHABLE):
                raise ConnectionError(
                    f"redis at {self.shown}: {exc or type(exc).__name__}"
                ) from None
            raise
        self._give(conn)
        return reply

    def _give(self, conn: Any) -> None:
        self._idle.append(conn)
        self._free.release()

    async def _drain(self, conn: Any, orphan: Callable[[Any], None] | None) -> None:
        """A cancelled caller's reply: read (bounded by the socket timeout), handed over."""
        try:
            reply = await conn.read_response()
        except BaseException:
            await conn.disconnect(nowait=True)
            self._give(conn)
            return  # nothing was answered: nothing to give back (a lease expires anyway)
        self._give(conn)
        if orphan is not None and not isinstance(reply, redis_errors.ResponseError):
            try:
                orphan(reply)
            except Exception:
                log.exception("giving back what a cancelled Redis call took failed")

    async def close(self) -> None:
        """Wait (briefly) for calls whose callers were cancelled, then close every connection."""
        if self._orphans:
            await asyncio.wait(set(self._orphans), timeout=1.0)
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()


def pack(args: Sequence[str | int]) -> bytes:
    """A command in RESP (an array of bulk strings), in one buffer."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def ping(url: str, timeout_s: float = 2.0) -> None:
    """``config validate``: PING ``url`` once, or ``ConfigError`` naming it (no password)."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        client.ping()
    except redis_errors.RedisError as exc:
        raise ConfigError(
            f"limits.redis_url: Redis at {redact_url(url)} does not answer PING: {exc}",
            key="limits.redis_url",
            hint="start Redis there, or fix limits.redis_url (limits.backend: memory needs none)",
        ) from None
    finally:
        client.close()
