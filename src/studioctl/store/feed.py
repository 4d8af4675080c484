"""The change feed: tenant and key changes made by any daemon, seen by every other.

Daemons sharing one PostgreSQL database each run a ``ChangeFeed``: a session that
``LISTEN``s (named ``studioctl-feed`` in ``pg_stat_activity``), read by a thread of the
feed's own. A daemon that changed tenants or keys calls ``announce()`` after the commit:
it ``NOTIFY``s a token and waits until every listening session has acknowledged it (each
feed's thread, on reading a change, first marks it pending and then answers on the acks
channel). The gateway calls ``poll()`` before it authenticates a request: an attribute
read, which calls the listeners (the key cache's ``invalidate``) when a change is pending.

So once the change is reported done, every replica drops its cached keys before it looks
at its next request: no TTL window in which a revoked key still passes. A replica that
does not answer within ``ack_timeout_s`` (gone, stuck) only delays the announcement; it
invalidates everything when its feed reconnects.

While the listening connection is down ``poll()`` raises ``StoreUnavailable`` (the gateway
answers 503, or serves from its cache with ``store.fail_open``); the thread reconnects with
backoff, and the first ``poll()`` after that calls the listeners, since changes made
meanwhile were not heard.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from studioctl.errors import StoreUnavailable
from studioctl.store.db import Database

log = logging.getLogger(__name__)

CHANNEL = "studioctl_changes"
ACKS = "studioctl_acks"
APPLICATION = "studioctl-feed"


class ChangeFeed:
    """``poll()`` and ``announce()`` on the event loop; the listening session in a thread."""

    def __init__(
        self,
        db: Database,
        connect: Callable[[], Any],
        *,
        ack_timeout_s: float = 1.0,
        backoff_first_s: float = 0.1,
        backoff_cap_s: float = 2.0,
    ) -> None:
        """``connect()``: a new connection named APPLICATION that LISTENs on CHANNEL and
        ACKS (raises when it cannot); ``db``: where notifications and acks are sent."""
        self._db = db
        self._connect = connect
        self._ack_timeout_s = ack_timeout_s
        self._first, self._cap = backoff_first_s, backoff_cap_s
        self._listeners: list[Callable[[], None]] = []
        self._tokens = itertools.count(1)
        self._acks: Counter[str] = Counter()  # of the tokens announce() waits for only
        self._acked = threading.Condition()
        self._pending = False  # a change heard and not yet passed to the listeners
        self._up = False
        self._closed = False
        self._stop_r, self._stop_w = os.pipe()  # wakes the thread's select() at close
        self.changes = 0  # changes heard (tests, diagnostics)
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="store-feed", daemon=True)
        self._thread.start()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the polling thread) whenever a change was heard."""
        self._listeners.append(listener)

    @property
    def up(self) -> bool:
        return self._up

    def poll(self) -> bool:
        """True (listeners called) when a change is pending; no I/O. ``StoreUnavailable``
        while the listening session is down (a change may go unheard)."""
        if self._pending:
            self._pending = False
            for listener in self._listeners:
                listener()
            return True
        if not self._up:
            raise StoreUnavailable("change feed: PostgreSQL is unreachable")
        return False

    def announce(self) -> None:
        """Tell every daemon on the database that tenants or keys changed (call it after
        the commit); return once each listening session said it heard, or after
        ``ack_timeout_s``."""
        row = self._db.query_one(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE application_name = ? AND datname = current_database()",
            (APPLICATION,),
        )
        expected = int(row["n"]) if row is not None else 0
        token = f"{os.getpid()}.{id(self)}.{next(self._tokens)}"
        with self._acked:
            self._acks[token] = 0
        self._db.execute("SELECT pg_notify(?, ?)", (CHANNEL, token))
        deadline = time.monotonic() + self._ack_timeout_s
        with self._acked:
            while self._acks[token] < expected:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "change feed: %d of %d daemons acknowledged a change within %.1f s",
                        self._acks[token],
                        expected,
                        self._ack_timeout_s,
                    )
                    break
                self._acked.wait(left)
            self._acks.pop(token, None)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        try:
            while not self._closed:
                try:
                    conn = self._connect()
                except Exception as exc:
                    delay = min(self._cap, delay * 2 or self._first)
                    log.debug("change feed: cannot listen (%s); again in %.1f s", exc, delay)
                    self._sleep(delay)
                    continue
                delay = 0.0
                self._pending = True  # changes made while not listening went unheard
                self._up = True
                try:
                    self._listen(conn)
                except Exception as exc:
                    if not self._closed:
                        log.warning("change feed: lost the listening session: %s", exc)
                finally:
                    self._up = False
                    conn.close()
                self.reconnects += 1
        finally:
            self._db.close_thread()

    def _listen(self, conn: Any) -> None:
        pg = conn.pgconn
        while not self._closed:
            ready, _, _ = select.select([pg.socket, self._stop_r], [], [], 5.0)
            if self._stop_r in ready:
                return
            pg.consume_input()
            heard: list[str] = []
            acks: list[str] = []
            while (n := pg.notifies()) is not None:
                payload = bytes(n.extra).decode(errors="replace")
                (acks if bytes(n.relname).decode() == ACKS else heard).append(payload)
            if pg.status != 0:  # not CONNECTION_OK: the server ended the session
                raise ConnectionError("the server closed the listening session")
            if heard:
                self.changes += len(heard)
                self._pending = True  # before the acks: the announcer waits for those
                for token in heard:
                    self._db.execute("SELECT pg_notify(?, ?)", (ACKS, token))
            if acks:
                with self._acked:
                    self._acks.update(a for a in acks if a in self._acks)
                    self._acked.notify_all()

    def _sleep(self, seconds: float) -> None:
        select.select([self._stop_r], [], [], seconds)

    def close(self) -> None:
        self._closed = True
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        os.close(self._stop_r)
        os.close(self._stop_w)
