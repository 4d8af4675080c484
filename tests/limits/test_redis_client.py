"""The limits backend's own Redis client (``gateway.redis_client``) against a real
``redis-server``: one pipelined connection, replies matched in order, timeouts, reconnects,
NOSCRIPT, logins (ACL users, passwords, databases, TLS options, unix sockets)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from redis_server import RedisServer
from studioctl.errors import ConfigError
from studioctl.gateway.redis_client import RedisClient, RedisError, ping
from studioctl.gateway.redis_url import parse_redis_url


def test_urls_are_taken_apart() -> None:
    a = parse_redis_url("redis://10.0.0.5:6380/2")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls) == (
        "10.0.0.5", 6380, 2, None, None, None,
    )  # fmt: skip
    assert a.hello() == [("SELECT", 2)]
    b = parse_redis_url("redis://:p%40ss@db")
    assert (b.host, b.port, b.db, b.password) == ("db", 6379, 0, "p@ss")
    assert b.hello() == [("AUTH", "p@ss")]
    c = parse_redis_url("redis://app:s3cret@db:6379/0?db=4")
    assert c.hello() == [("AUTH", "app", "s3cret"), ("SELECT", 4)]
    d = parse_redis_url("unix:///run/redis/redis.sock?db=1&password=x")
    assert (d.path, d.db, d.password) == ("/run/redis/redis.sock", 1, "x")
    e = parse_redis_url("rediss://cache.internal:6380/0")
    assert e.tls is not None and e.tls.verify_mode == ssl.CERT_REQUIRED and e.tls.check_hostname
    f = parse_redis_url("rediss://cache.internal/0?ssl_cert_reqs=none")
    assert f.tls is not None and f.tls.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://db:6379/zero", "the database must be a number, got 'zero'"),
        ("http://db:6379/0", "unknown scheme 'http'"),
        ("redis:///0", "needs a host"),
        ("unix://", "needs the socket's path"),
        ("rediss://db/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be none, optional or required"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisClient(url)
    assert str(info.value).startswith("limits.redis_url: ") and says in str(info.value)


def test_concurrent_calls_on_one_connection_each_get_their_own_reply(
    redis_server: RedisServer,
) -> None:
    async def run() -> None:
        client = RedisClient(redis_server.url)
        try:
            words = [f"w{i}" for i in range(500)]
            got = await asyncio.gather(*(client.execute("ECHO", w) for w in words))
            assert got == [w.encode() for w in words]
            admin = redis.Redis.from_url(redis_server.url)
            names = [c for c in admin.client_list() if c.get("cmd") != "client|list"]
            assert len(names) == 1, names  # every call shared the one connection
        finally:
            await client.close()

    asyncio.run(run())


def test_a_flushed_script_is_loaded_again(redis_server: RedisServer) -> None:
    async def run() -> None:
        client = RedisClient(redis_server.url)
        script = client.script("return ARGV[1] .. '!'")
        try:
            assert await client.run(script, [], ["one"]) == b"one!"
            redis.Redis.from_url(redis_server.url).script_flush()
            assert await client.run(script, [], ["two"]) == b"two!"  # NOSCRIPT → load → run
            seen: list[Any] = []
            redis.Redis.from_url(redis_server.url).script_flush()
            client.send(script, [], ["three"], seen.append)  # the same without waiting
            await client.settle()
            assert seen == [b"three!"]
            broken = client.script("return redis.call('NOSUCHCOMMAND')")
            with pytest.raises(RedisError, match="Unknown Redis command"):
                await client.run(broken, [], [])
            assert await client.execute("ECHO", "after") == b"after"  # still in step
        finally:
            await client.close()

    asyncio.run(run())


def test_a_paused_redis_fails_calls_after_the_timeout_and_is_used_again(
    own_redis: RedisServer,
) -> None:
    async def run() -> None:
        client = RedisClient(own_redis.url, timeout_s=0.3)
        seen: list[Any] = []
        try:
            assert await client.execute("PING") == b"PONG"
            own_redis.pause()
            t0 = time.monotonic()
            calls = [asyncio.ensure_future(client.execute("ECHO", str(i))) for i in range(20)]
            await asyncio.sleep(0)
            script = client.script("return 1")
            client.send(script, [], [], seen.append)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            took = time.monotonic() - t0
            assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
            assert "no reply within 0.3 s" in str(outcomes[0])
            assert 0.25 < took < 1.0, took
            assert len(seen) == 1 and isinstance(seen[0], ConnectionError)
            client.send(script, [], [], seen.append)  # not connected: told at once
            assert len(seen) == 2 and isinstance(seen[1], ConnectionError)
            with pytest.raises(ConnectionError):  # still paused: connecting times out
                await client.execute("PING")
            own_redis.resume()
            assert await client.execute("PING") == b"PONG"  # a new connection
        finally:
            own_redis.resume()
            await client.close()

    asyncio.run(run())


def test_a_stopped_redis_is_refused_at_once_and_found_again(own_redis: RedisServer) -> None:
    async def run() -> None:
        client = RedisClient(own_redis.url, timeout_s=0.5)
        try:
            assert await client.execute("PING") == b"PONG"
            own_redis.stop()
            t0 = time.monotonic()
            with pytest.raises(ConnectionError, match=f"redis at {own_redis.url}"):
                await client.execute("PING")
            assert time.monotonic() - t0 < 0.5
            own_redis.start()
            assert await client.execute("PING") == b"PONG"
        finally:
            await client.close()

    asyncio.run(run())


def test_logins_databases_and_unix_sockets(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser("limits", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    port = redis_server.port

    async def run() -> None:
        good = RedisClient(f"redis://limits:s3cret@127.0.0.1:{port}/3")
        sock = RedisClient(f"unix://{redis_server.socket}?db=5")
        try:
            assert await good.execute("SET", "where", "db3") == b"OK"
            assert await sock.execute("SET", "where", "db5") == b"OK"
        finally:
            await good.close()
            await sock.close()
        wrong = RedisClient(f"redis://limits:nope@127.0.0.1:{port}/0")
        with pytest.raises(ConnectionError, match="refused the login: WRONGPASS") as info:
            await wrong.execute("PING")
        assert "nope" not in str(info.value) and "***" in str(info.value)

    asyncio.run(run())
    assert redis.Redis(port=port, db=3).get("where") == b"db3"
    assert redis.Redis(port=port, db=5).get("where") == b"db5"


def test_config_validate_ping(redis_server: RedisServer, own_redis: RedisServer) -> None:
    ping(redis_server.url)
    url = f"redis://u:hidden@127.0.0.1:{own_redis.port}/0"
    own_redis.stop()
    with pytest.raises(ConfigError) as info:
        ping(url, timeout_s=0.5)
    said = str(info.value)
    assert said.startswith(f"limits.redis_url: Redis at redis://u:***@127.0.0.1:{own_redis.port}/0")
    assert "does not answer PING" in said and "hidden" not in said


def test_without_hiredis_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['hiredis'] = None\n"
        "from studioctl.errors import ConfigError\n"
        "try:\n"
        "    import studioctl.gateway.redis_client\n"
        "except ConfigError as exc:\n"
        "    print(exc, '|', exc.hint)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "limits.backend: redis needs the hiredis package, which is not installed | "
        "pip install 'studioctl[redis]' (or set limits.backend: memory)"
    )
