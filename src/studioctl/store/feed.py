"""The change feed: tenant and key changes made by any daemon, seen by every other.

Daemons sharing one PostgreSQL database announce each tenant or key change with
``NOTIFY`` (``Database.notify``, on commit). Each daemon's ``ChangeFeed`` holds one
connection that ``LISTEN``s, and the gateway calls ``poll()`` before it authenticates a
request: a non-blocking read of what has arrived on that socket (no round trip, no I/O
wait), which calls the listeners (the key cache's ``invalidate``) when anything changed.
So there is no TTL window in which a revoked key still passes: a change committed before a
request is looked at is dropped from the cache first.

Delivery is PostgreSQL's: the notification reaches the listening socket microseconds after
the commit. While the listening connection is down ``poll()`` raises ``StoreUnavailable``
(the gateway answers 503, or serves from its cache with ``store.fail_open``); a thread of
the feed's own reconnects with backoff, and the first ``poll()`` after it came back calls
the listeners, since changes made meanwhile were not heard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from studioctl.errors import StoreUnavailable

log = logging.getLogger(__name__)


class ChangeFeed:
    """``poll()`` on the event loop; ``connect()`` (a LISTENing connection) in a thread."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        where: str = "the database",
        backoff_first_s: float = 0.1,
        backoff_cap_s: float = 2.0,
    ) -> None:
        """``connect()``: a new connection already listening (raises when it cannot)."""
        self._connect = connect
        self._where = where
        self._first, self._cap = backoff_first_s, backoff_cap_s
        self._listeners: list[Callable[[], None]] = []
        self._conn: Any = None  # used by the polling thread only
        self._fresh: Any = None  # handed over by the reconnecting thread
        self._wake = threading.Event()
        self._closed = False
        self.changes = 0  # notifications heard (tests, /metrics)
        self.reconnects = 0
        try:
            self._conn = connect()
        except Exception as exc:  # the thread below keeps trying
            log.warning("change feed: cannot listen on %s yet: %s", where, exc)
        self._thread = threading.Thread(target=self._keep_connected, name="store-feed", daemon=True)
        self._thread.start()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the polling thread) whenever a change was heard."""
        self._listeners.append(listener)

    @property
    def up(self) -> bool:
        return self._conn is not None or self._fresh is not None

    def poll(self) -> bool:
        """Take what has arrived without waiting; True (listeners called) on a change.
        ``StoreUnavailable`` while the listening connection is down."""
        changed = False
        if self._fresh is not None:  # reconnected: what happened meanwhile is unknown
            self._conn, self._fresh = self._fresh, None
            changed = True
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(f"change feed: PostgreSQL at {self._where} is unreachable")
        try:
            pg = conn.pgconn
            pg.consume_input()
            while pg.notifies() is not None:
                self.changes += 1
                changed = True
            lost = pg.status != 0  # CONNECTION_OK; a server shutting down says FATAL
        except Exception as exc:
            lost = True
            log.warning("change feed: lost the listening connection: %s", exc)
        if lost:
            self._drop(conn)
            raise StoreUnavailable(f"change feed: lost the connection to {self._where}")
        if changed:
            for listener in self._listeners:
                listener()
        return changed

    def _drop(self, conn: Any) -> None:
        self._conn = None
        try:
            conn.close()
        finally:
            self._wake.set()

    def _keep_connected(self) -> None:
        delay = 0.0
        while not self._closed:
            if self._conn is not None or self._fresh is not None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                conn = self._connect()
            except Exception as exc:
                delay = min(self._cap, delay * 2 or self._first)
                log.debug("change feed: reconnect failed (%s); again in %.1f s", exc, delay)
                self._wake.wait(delay)
                self._wake.clear()
                continue
            delay = 0.0
            if self._closed:
                conn.close()
                return
            self.reconnects += 1
            self._fresh = conn
            log.info("change feed: listening again on %s", self._where)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(5)
        for conn in (self._conn, self._fresh):
            if conn is not None:
                conn.close()
        self._conn = self._fresh = None
