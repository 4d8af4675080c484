"""One request's first token, and how a lifecycle benchmark reaches an instance: at its
engine with the engine's own key (``client.engine_key``, the control socket only) or
through the gateway with a tenant key.

A probe is one small streamed ``/v1/completions`` request (two tokens), on a fresh
connection: a benchmark of launches and switches must see a refused or reset connection
as it happens, not a pooled one's stale state. Times are wall-clock: they are laid beside
the daemon's own timestamps, on the same host.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from studioctl.errors import OperationTimeout, StudioError, UsageError

if TYPE_CHECKING:
    from studioctl.api.types import InstanceInfo, StreamMessage
    from studioctl.client import Client

_LIVE = ("starting", "loading", "ready")
POLL_S = 0.005  # after a refused probe; between looks at processes
_MAX_ERROR = 300
_MAX_LINES = 10_000


@dataclass(frozen=True)
class Access:
    """Where a probe goes: a base URL (no ``/v1``), the model name, the bearer key."""

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Probe:
    """One probe request: wall-clock start, first token chunk and end; ``error`` when it
    failed (``http_503: message``, ``ConnectionRefusedError``, ``no_tokens``)."""

    start: float
    end: float
    first_token: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.first_token is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


def probe(access: Access, timeout_s: float, clock: Callable[[], float] = time.time) -> Probe:
    """Send one streamed completion of two tokens; time its first token chunk."""
    parts = urlsplit(access.url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    body = {"model": access.model, "prompt": "Hello", "max_tokens": 2, "stream": True}
    headers = {"Content-Type": "application/json"}
    if access.api_key:
        headers["Authorization"] = f"Bearer {access.api_key}"
    start = clock()
    try:
        conn.request("POST", parts.path.rstrip("/") + "/v1/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read(_MAX_ERROR).decode("utf-8", "replace")
            return Probe(start, clock(), error=f"http_{resp.status}: {text}")
        first = _first_token(resp, clock)
        return Probe(start, clock(), first, None if first is not None else "no_tokens")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Probe(start, clock(), error=type(exc).__name__)
    finally:
        conn.close()


def _first_token(resp: http.client.HTTPResponse, clock: Callable[[], float]) -> float | None:
    """Read the event stream to its end (a two-token answer: a bounded number of lines);
    the time of its first chunk with choices."""
    first = None
    for _ in range(_MAX_LINES):
        line = resp.readline(1 << 20)
        if not line:
            return first
        data = line[5:].strip() if line.startswith(b"data:") else b""
        if not data or data == b"[DONE]":
            continue
        chunk = json.loads(data)
        if first is None and isinstance(chunk, dict) and chunk.get("choices"):
            first = clock()
    raise ValueError(f"an answer of two tokens went on for over {_MAX_LINES} lines")


def probe_until_ok(
    access: Callable[[], Access | None], deadline: float, what: str, clock: Callable[[], float]
) -> Probe:
    """Probe until one succeeds (``access`` None: not reachable yet); OperationTimeout at
    ``deadline`` naming the last failure."""
    last = "not reachable"
    while clock() < deadline:
        where = access()
        if where is not None:
            p = probe(where, max(1.0, deadline - clock()), clock)
            if p.ok:
                return p
            last = p.error or last
        time.sleep(POLL_S)
    raise OperationTimeout(f"{what}: no first token before the deadline (last: {last[:200]})")


# ------------------------------------------------------------------------------ targets


class Targets:
    """How probes reach an instance: at the engine (its URL and own key, asked of the
    daemon once per instance) or through the gateway (``api_key``: a tenant key)."""

    def __init__(self, client: Client, api_key: str | None) -> None:
        self.client = client
        self.api_key = api_key
        self._gateway: str | None = None
        self._engines: dict[str, Access] = {}

    @property
    def through_gateway(self) -> bool:
        return self.api_key is not None

    def of(self, info: InstanceInfo) -> Access:
        model = info.get("served_name") or info.get("recipe") or ""
        if self.api_key is not None:
            return Access(self.gateway_url(), model, self.api_key)
        iid = info.get("id") or ""
        if iid not in self._engines:
            from studioctl.client import engine_key

            key = engine_key(self.client, iid)
            self._engines[iid] = Access(key["url"], model, key["api_key"])
        return self._engines[iid]

    def gateway_url(self) -> str:
        if self._gateway is None:
            url = self.client.status().get("gateway", {}).get("url")
            if not url:
                raise UsageError("the daemon's gateway is not serving: no URL to send to")
            self._gateway = str(url).rstrip("/").removesuffix("/v1")
        return self._gateway


def live(client: Client, name: str) -> InstanceInfo | None:
    """The live instance named ``name`` (its id), or the newest live one of recipe ``name``."""
    from studioctl.errors import NotFoundError

    with contextlib.suppress(NotFoundError):
        info = client.instance(name)
        if info.get("state") in _LIVE and info.get("id") == name:
            return info
    found = [
        i
        for i in client.instances()["instances"]
        if i.get("recipe") == name and i.get("state") in _LIVE
    ]
    return max(found, key=lambda i: i.get("started_at") or 0.0) if found else None


def evict_instance(client: Client, iid: str) -> dict[str, Any]:
    from studioctl.api.models import EvictRequest

    return dict(client.evict(iid, EvictRequest()))


def follow(stream: Iterator[StreamMessage], on_event: Callable[[StreamMessage], None]) -> Any:
    """A streamed operation's result; its error raised as the StudioError it names."""
    for msg in stream:
        if msg.get("type") == "event":
            on_event(msg)
        elif msg.get("type") == "result":
            return msg.get("result")
        elif msg.get("type") == "error":
            from studioctl.client import envelope_error

            status = msg.get("status")
            raise envelope_error(
                status if isinstance(status, int) else 500, {"error": msg["error"]}
            )
    raise StudioError("the daemon ended the stream without a result")
