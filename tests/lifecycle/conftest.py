"""One daemon per test module (a daemon start costs ~1 s); each test's instances are evicted
after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon_helpers import Daemon, running_daemon


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    with running_daemon() as d:
        yield d


@pytest.fixture
def d(shared: Daemon) -> Iterator[Daemon]:
    """The module's daemon; whatever a test launched is evicted after it."""
    yield shared
    shared.evict_all()
