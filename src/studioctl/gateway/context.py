"""One proxied request as it goes through the gateway: what it took and how far it got.

``app.GatewayApp`` creates a ``RequestContext`` per ``POST /v1/...``; admission fills in the
tenant, model, admission (slot, RPM, TPM) and upstream; the relays set ``started``,
``finished`` and read ``prompt``; accounting reads it on every finish path (one usage row,
one metrics record, what was taken given back). The disconnect watcher and
``GatewayApp.drain`` set ``gone``/``drained`` and cancel ``task``.

A plain class with ``__slots__`` (no dataclass, no validation): one is built per request on
the hot path.

Every request has one id, ``request_id``: the client's ``X-Request-Id`` when it is a short
token (:func:`request_id`), else 24 hex digits, time first (:func:`new_request_id`). It is
answered in the ``X-Request-Id`` header of every answer (``extra`` carries it, errors and
streams too), sent to the engine (vLLM takes it for its own request id), stored in the usage
row, named by the waiting rooms (``/v1/queues``) and at the end of every error message
(:meth:`tagged`).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import TYPE_CHECKING, Any

from studioctl.errors import GatewayError
from studioctl.gateway.limiting import Grant
from studioctl.gateway.routing import Upstream
from studioctl.tenants import TenantContext

if TYPE_CHECKING:
    from studioctl.gateway.bodies import BodyCapture
    from studioctl.gateway.mailbox_kept import KeptRequest

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "MAX_REQUEST_ID",
    "Headers",
    "RequestContext",
    "new_request_id",
    "request_id",
    "tagged",
]

# The proxied endpoints.
CHAT, COMPLETIONS, EMBEDDINGS = 0, 1, 2

Headers = list[tuple[bytes, bytes]]

#: The longest client-sent X-Request-Id kept (longer: replaced by one of ours).
MAX_REQUEST_ID = 128
# An HTTP token (RFC 9110 tchar): nothing that could split a header, a log line or a
# terminal escape; what UUIDs, ULIDs and the usual tracing ids are made of.
_TOKEN = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


# Random bits from a generator seeded by the OS (os.urandom). Not secrets (an id grants
# nothing), so not secrets.token_hex: its urandom call per request costs a few times more,
# on the gateway's hot path.
_randbits = random.Random().getrandbits
_MS_MASK = (1 << 48) - 1  # milliseconds: 48 bits last until the year 10889


def _new_id(now: float) -> str:
    # One int to 12 bytes to hex: a third of the cost of formatting two numbers.
    return ((int(now * 1000.0) & _MS_MASK) << 48 | _randbits(48)).to_bytes(12, "big").hex()


def new_request_id(now: float) -> bytes:
    """One of our ids: the time ``now`` in milliseconds, then 48 random bits, as 24 hex digits.

    Time first because the ids are indexed in the usage table (found again by
    ``studioctl requests``): ids that grow with time are inserted at the index's right edge,
    one page per batch of rows, where random ones touch a page per row (the usage writer
    measured 21 µs/row vs 41, the same as with no index at all). The random half keeps
    them unguessable (another tenant's id cannot be predicted) and apart (two in the same
    millisecond collide once in 2**48)."""
    return _new_id(now).encode()


def request_id(sent: bytes | None, now: float | None = None) -> bytes:
    """The request's id: ``sent`` (the client's X-Request-Id) when it is a token of at most
    ``MAX_REQUEST_ID`` characters, else a new one of ours made at ``now`` (default: the
    clock; a hostile value is dropped unread, never stored or logged)."""
    if sent is not None and len(sent) <= MAX_REQUEST_ID and _TOKEN.fullmatch(sent):
        return sent
    return new_request_id(time.time() if now is None else now)


class RequestContext:
    """One proxied request (see the module docstring)."""

    __slots__ = (
        "accounted",
        "admission",
        "bodies",
        "body",
        "client_usage",
        "drained",
        "endpoint",
        "exact",
        "extra",
        "finished",
        "gone",
        "keep",
        "known",
        "model",
        "prompt",
        "queue_s",
        "request_id",
        "rid",
        "sized",
        "started",
        "stream",
        "t0",
        "task",
        "tenant",
        "ts",
        "ttft",
        "upstream",
        "webhook_headers",
    )

    def __init__(
        self,
        task: asyncio.Task[Any],
        endpoint: int,
        t0: float,
        ts: float,
        extra: Headers | None,
        sent_id: bytes | None = None,
    ) -> None:
        """``sent_id``: the client's X-Request-Id header, if any (see :func:`request_id`)."""
        self.task = task
        self.endpoint = endpoint
        self.t0 = t0  # perf_counter() at arrival: durations and time to first token
        self.ts = ts  # time.time() at arrival: the usage row's time
        if sent_id is None:  # the usual case, without request_id()'s call and a decode
            self.request_id = text = _new_id(ts)
            self.rid = rid = text.encode()  # as sent to the engine
        else:
            self.rid = rid = request_id(sent_id, ts)
            self.request_id = rid.decode("ascii")
        # The headers of every answer: the request id, and CORS's if any.
        self.extra: Headers = (
            [(b"x-request-id", rid), *extra] if extra else [(b"x-request-id", rid)]
        )
        self.tenant: TenantContext | None = None
        self.model: str | None = None  # a valid (bounded) model name, once seen
        self.known = False  # the route table knows the model: it may be a metrics label
        self.admission: Grant | None = None
        self.upstream: Upstream | None = None  # set once the request is sent upstream
        self.body: dict[str, Any] | None = None  # the parsed body (a stream's exact count)
        self.prompt = 0  # prompt tokens as measured before sending
        # (prompt, max output, body changed) when the body alone told them at admission:
        # their TPM was then reserved with the slot (admission.AdmissionControl.enter).
        self.sized: tuple[int, int, bool] | None = None
        self.exact = False  # ``prompt`` is the engine's count, not the estimate
        self.stream = False
        self.client_usage = True  # a stream: the client asked for the usage chunk
        self.ttft: float | None = None  # seconds to the first streamed bytes, once sent
        self.started = False  # the response head was sent
        self.finished = False  # the final response message is being sent: leave it be
        self.gone = False  # the client went away; ``task`` was cancelled for it
        self.drained = False  # GatewayApp.drain ended it; ``task`` was cancelled for it
        self.accounted = False  # the usage row and metrics are written
        self.queue_s = 0.0  # seconds waited in a queue (queue.py), the usage row's queue_ms
        self.bodies: BodyCapture | None = None  # log_bodies only: what to store (bodies.py)
        self.webhook_headers: Headers | None = None  # X-Webhook-*, X-Mailbox as sent
        self.keep: KeptRequest | None = None  # mailbox mode (mailbox.py): kept if the client goes

    def tagged(self, exc: GatewayError) -> GatewayError:
        """``exc`` with the request id at the end of its message (a copy: one error may be
        answered to many waiters)."""
        return tagged(exc, self.request_id)


def tagged(exc: GatewayError, rid: str) -> GatewayError:
    """A copy of ``exc`` with the request id ``rid`` at the end of its message."""
    return GatewayError(
        exc.http_status,
        exc.code or "error",
        f"{exc.message} (request id {rid})",
        error_type=exc.error_type,
        retry_after=exc.retry_after,
        param=exc.details.get("param"),
        hint=exc.hint,
    )
