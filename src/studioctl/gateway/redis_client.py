"""The Redis client of the limits backend: one pipelined connection, replies parsed by hiredis.

The one home of ``hiredis`` (an import-linter contract); imported only when ``limits.backend``
is ``redis`` (and by ``config validate`` for its PING).

Why its own client: every admission waits on a round trip, and redis-py's asyncio client
spent ~150 µs of CPU on one (streams, its pool, its parser glue) where this spends ~40: an
``asyncio.Protocol`` feeding hiredis's C parser. All calls share one connection, pipelined:
Redis answers in order, so replies are matched to callers by position, commands written in
one turn of the event loop leave in one ``send``, and no call ever waits for a connection.

Bounded: connecting, and every reply, within ``timeout_s``. When the oldest command has no
reply after ``timeout_s`` (Redis paused, overloaded, gone without a FIN), the connection is
closed and every call on it fails. Every failure to reach Redis — refused, reset, timed out
— is raised as the builtin ``ConnectionError`` naming the URL without its password; error
replies are raised as :class:`RedisError` (a script's error is a bug and passes as it is).
The next call connects again (AUTH, SELECT and the scripts are sent first).

Cancellation safety comes with the matching by position: a cancelled caller's reply is still
read in its turn, and handed to its ``orphan`` (when given), so what the call took in Redis
can be given back. Scripts run by EVALSHA; they are loaded on every new connection, and a
NOSCRIPT (``SCRIPT FLUSH``, a failover) loads the script and runs the call again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from studioctl.errors import ConfigError

try:
    import hiredis
except ImportError:  # an optional extra: say which
    raise ConfigError(
        "redis needs the hiredis package, which is not installed",
        key="limits.backend",
        hint="pip install 'studioctl[redis]' (or set limits.backend: memory)",
    ) from None

from studioctl.gateway.redis_url import RedisAddress, parse_redis_url
from studioctl.settings import redact_url

__all__ = ["DEFAULT_TIMEOUT_S", "RedisClient", "RedisError", "Script", "pack", "ping"]

log = logging.getLogger("studioctl.gateway")

#: Connect and reply timeout: a request never waits longer than this on Redis.
DEFAULT_TIMEOUT_S = 0.5
#: Commands waiting for their replies at most (beyond: ConnectionError, Redis is not keeping up).
MAX_PENDING = 100_000

Done = Callable[[Any], None]  # gets the reply, a RedisError, or a ConnectionError


class RedisError(Exception):
    """An error reply (``-ERR …``, ``-NOSCRIPT …``, a script's error)."""


class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    __slots__ = ("load", "lua", "sha")

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()
        self.load = pack(("SCRIPT", "LOAD", lua))


class _Call:
    """A command on its way: what to send again after a NOSCRIPT, and who gets the reply:
    ``future`` (an awaiting caller; ``orphan`` if it was cancelled) or ``done`` (sent
    without waiting)."""

    __slots__ = ("data", "deadline", "done", "future", "orphan", "script")

    def __init__(
        self,
        data: bytes,
        deadline: float,
        future: asyncio.Future[Any] | None,
        done: Done | None = None,
        orphan: Done | None = None,
        script: Script | None = None,
    ) -> None:
        self.data = data
        self.deadline = deadline
        self.future = future
        self.done = done
        self.orphan = orphan
        self.script = script

    def settle(self, reply: Any) -> None:
        future = self.future
        if future is None:
            if self.done is not None:
                self.done(reply)
        elif not future.done():
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        elif (
            future.cancelled() and self.orphan is not None and not isinstance(reply, BaseException)
        ):
            try:
                self.orphan(reply)
            except Exception:
                log.exception("giving back what a cancelled Redis call took failed")


class _Connection(asyncio.Protocol):
    """One connection: commands written in order, replies matched to them in order."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=RedisError)
        self.calls: deque[_Call] = deque()
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.closed = False
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass of it

    def send(self, call: _Call) -> None:
        if self.closed:
            call.settle(self.client.unreachable("connection closed"))
            return
        if not self.out:
            self.client.loop.call_soon(self.flush)
        self.out.append(call.data)
        self.calls.append(call)
        if self.watchdog is None:
            self.watchdog = self.client.loop.call_at(call.deadline, self.check)

    def flush(self) -> None:
        out, self.out = self.out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        calls = self.calls
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(f"protocol error: {exc}")
                return
            if reply is False:
                return
            if not calls:
                self.fail("a reply nobody asked for")
                return
            call = calls.popleft()
            if (
                call.script is not None
                and isinstance(reply, RedisError)
                and str(reply).startswith("NOSCRIPT")
            ):
                self.reload(call)
                continue
            call.settle(reply)

    def reload(self, call: _Call) -> None:
        """NOSCRIPT: load the script, then the same call again (in order on this connection)."""
        assert call.script is not None
        deadline = self.client.loop.time() + self.client.timeout_s
        self.send(_Call(call.script.load, deadline, None))
        call.deadline = deadline
        call.script = None  # once: a second NOSCRIPT is an error
        self.send(call)

    def check(self) -> None:
        """The oldest command's deadline: passed without a reply → the connection is dead."""
        self.watchdog = None
        if self.closed or not self.calls:
            return
        head = self.calls[0].deadline
        if self.client.loop.time() >= head:
            self.fail(f"no reply within {self.client.timeout_s:g} s")
        else:
            self.watchdog = self.client.loop.call_at(head, self.check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost: {exc}" if exc else "connection closed by the server")

    def fail(self, why: str) -> None:
        """Close; every call still waiting gets ``ConnectionError``."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            if self.watchdog is not None:
                self.watchdog.cancel()
                self.watchdog = None
            self.client.lost(self)
        calls, self.calls = self.calls, deque()
        self.out = []
        for call in calls:
            call.settle(self.client.unreachable(why))


class RedisClient:
    """Calls to one Redis over one pipelined connection (see the module docstring)."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.shown = redact_url(url)
        self.timeout_s = timeout_s
        try:
            self._address: RedisAddress = parse_redis_url(url)
        except ValueError as exc:
            raise ConfigError(str(exc), key="limits.redis_url") from None
        self._scripts: list[Script] = []
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def script(self, lua: str) -> Script:
        """A script run by EVALSHA, loaded on every new connection."""
        script = Script(lua)
        self._scripts.append(script)
        return script

    async def run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[str | int],
        orphan: Done | None = None,
    ) -> Any:
        """One script call, its reply (one round trip; two after a NOSCRIPT). ``orphan``
        gets the reply if the caller was cancelled meanwhile."""
        conn = self._conn or await self._connect()
        future = self.loop.create_future()
        data = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        conn.send(_Call(data, self.loop.time() + self.timeout_s, future, None, orphan, script))
        return await future

    def send(
        self, script: Script, keys: Sequence[str], args: Sequence[str | int], done: Done
    ) -> None:
        """One script call without waiting: ``done`` gets its reply, or the ``RedisError`` /
        ``ConnectionError`` (called at once when Redis is not connected)."""
        conn = self._conn
        if conn is None:
            done(self.unreachable("not connected"))
            return
        data = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        conn.send(_Call(data, self.loop.time() + self.timeout_s, None, done, None, script))

    async def execute(self, *args: str | int) -> Any:
        """One plain command (``PING``, …), its reply; as safe to cancel as :meth:`run`."""
        conn = self._conn or await self._connect()
        future = self.loop.create_future()
        conn.send(_Call(pack(args), self.loop.time() + self.timeout_s, future))
        return await future

    async def settle(self, rounds: int = 10) -> None:
        """Wait until the calls sent so far are answered: a PING sent now is answered after
        them (in order), again while a NOSCRIPT put one behind it (at most ``rounds``)."""
        for _ in range(rounds):
            conn = self._conn
            if conn is None or not conn.calls:
                return
            await self.execute("PING")

    async def close(self) -> None:
        """Wait (briefly) for the replies still due, then close the connection."""
        with contextlib.suppress(ConnectionError, RedisError, TimeoutError):
            await asyncio.wait_for(self.settle(), 1.0)
        if self._conn is not None:
            self._conn.fail("closed")

    # -- the connection's life ---------------------------------------------------------------

    def unreachable(self, why: str) -> ConnectionError:
        return ConnectionError(f"redis at {self.shown}: {why}")

    def lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    async def _connect(self) -> _Connection:
        """The connection, made once however many calls want it at the same time."""
        if self._connecting is None:
            self._connecting = self.loop.create_future()
            task = self.loop.create_task(self._open())
            task.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        waiting, self._connecting = self._connecting, None
        assert waiting is not None
        if task.cancelled():
            waiting.set_exception(self.unreachable("connecting was cancelled"))
        elif (exc := task.exception()) is not None:
            waiting.set_exception(exc)
        else:
            self._conn = conn = task.result()
            waiting.set_result(conn)
        waiting.exception()  # retrieved: nobody may be waiting any more

    async def _open(self) -> _Connection:
        address = self._address
        loop = self.loop
        try:
            if address.path:
                connecting = loop.create_unix_connection(lambda: _Connection(self), address.path)
            else:
                connecting = loop.create_connection(
                    lambda: _Connection(self), address.host, address.port, ssl=address.tls
                )
            _, conn = await asyncio.wait_for(connecting, self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise self.unreachable(str(exc) or type(exc).__name__) from None
        # Logged in, database chosen and scripts loaded before any call is sent on it.
        deadline = loop.time() + self.timeout_s
        first = [loop.create_future() for _ in range(len(address.hello()) + len(self._scripts))]
        commands = [pack(c) for c in address.hello()] + [s.load for s in self._scripts]
        for data, future in zip(commands, first, strict=True):
            conn.send(_Call(data, deadline, future))
        for outcome in await asyncio.gather(*first, return_exceptions=True):
            if isinstance(outcome, RedisError):  # a wrong password, a database out of range
                conn.fail("closed")
                raise self.unreachable(f"refused the login: {outcome}")
            if isinstance(outcome, BaseException):
                conn.fail("closed")
                raise outcome
        return conn


def pack(args: tuple[str | int, ...]) -> bytes:
    """A command in RESP (an array of bulk strings), in one buffer (hiredis's C packer: a
    third of the pure-Python one's cost, which was a tenth of a round trip's CPU)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub: a 1-tuple
    return packed


def ping(url: str, timeout_s: float = 2.0) -> None:
    """``config validate``: PING ``url`` once, or ``ConfigError`` naming it (no password)."""

    async def once() -> None:
        client = RedisClient(url, timeout_s=timeout_s)
        try:
            await client.execute("PING")
        finally:
            await client.close()

    try:
        asyncio.run(once())
    except (ConnectionError, RedisError) as exc:
        raise ConfigError(
            f"Redis at {redact_url(url)} does not answer PING: {exc}",
            key="limits.redis_url",
            hint="start Redis there, or fix limits.redis_url (limits.backend: memory needs none)",
        ) from None
