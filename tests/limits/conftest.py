"""Fixtures of the limits tests: a private real ``redis-server`` (``tests/redis_server.py``),
one per module for the unit tests (each test uses its own key namespace) and a fresh one for
the tests that stop or pause it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from redis_server import RedisServer, redis_server_or_skip


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with redis_server_or_skip() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own (it may be stopped, paused, restarted)."""
    with redis_server_or_skip() as server:
        yield server
