"""Several daemons sharing one PostgreSQL store: the fixtures.

``shared_pair`` runs two gateway daemons (each with its own home, ports and stand-in
engine) on one fresh database of the session's private PostgreSQL (tests/pg_server.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import gateway_daemon, launch
from pg_server import PgServer, pg_server

__all__ = ["pg_server"]


def store_env(url: str, *, fail_open: bool = False) -> dict[str, str]:
    return {
        "STUDIOCTL_STORE_BACKEND": "postgres",
        "STUDIOCTL_STORE_URL": url,
        "STUDIOCTL_STORE_FAIL_OPEN": "true" if fail_open else "false",
    }


@pytest.fixture(scope="module")
def shared_url(pg_server: PgServer) -> str:
    return pg_server.new_database()


@pytest.fixture(scope="module")
def shared_pair(shared_url: str) -> Iterator[tuple[Daemon, Daemon]]:
    """Daemons A and B on one database, each serving its own ``alpha`` instance."""
    with ExitStack() as stack:
        pair = [
            stack.enter_context(gateway_daemon({"alpha": {}}, env=store_env(shared_url)))
            for _ in range(2)
        ]
        for d in pair:
            launch(d, "alpha")
        yield pair[0], pair[1]
