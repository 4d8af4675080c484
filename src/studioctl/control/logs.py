"""Reading routes: an instance's log (``GET /instances/{target}/logs``, plain text, optionally
followed) and the event log (``GET /events``, server-sent events, optionally followed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.responses import StreamingResponse
from starlette.routing import Route

from studioctl.api import params as P
from studioctl.control.http import api_headers
from studioctl.lifecycle import logfiles

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from studioctl.lifecycle.events import EventBus
    from studioctl.lifecycle.supervisor import Supervisor

MAX_LOG_LINES = 1_000_000  # `logs -n`
MAX_EVENTS = 100_000  # `events -n`


def log_routes(sup: Supervisor, bus: EventBus) -> list[Route]:
    async def logs(request: Request) -> Response:
        qp = request.query_params
        n = P.q_int(qp, "n", 0, MAX_LOG_LINES, 100)
        since = P.q_float(qp, "since", 0.0, 1e11)  # a Unix time
        if since is not None and "n" not in qp:
            n = 10**9  # since alone: every line after it
        follow = P.q_bool(qp, "follow")
        inst = sup.get(request.path_params["target"])
        return StreamingResponse(
            log_stream(
                inst.log_path,
                n=n,
                follow=follow,
                since=since,
                alive=lambda: inst.state.value not in ("stopped", "failed"),
                secret=inst.api_key,
            ),
            media_type="text/plain; charset=utf-8",
            headers=api_headers({"X-Log-Path": str(inst.log_path)}),
        )

    async def events(request: Request) -> Response:
        from studioctl.store.events import EventRepo

        qp = request.query_params
        n = P.q_int(qp, "n", 0, MAX_EVENTS, 50)
        after = P.q_opt_int(qp, "after", 0, P.MAX_SQL_INT)
        follow = P.q_bool(qp, "follow")
        instance = P.q_text(qp, "instance")
        repo = EventRepo(sup.db)
        q = bus.subscribe() if follow else None
        past = (
            repo.since(after, limit=n) if after is not None else repo.tail(n, instance_id=instance)
        )

        async def gen() -> AsyncIterator[bytes]:
            try:
                for row in past:
                    d = row.to_dict()
                    if instance and d.get("instance_id") != instance:
                        continue
                    yield _sse(d)
                if q is None:
                    return
                while True:
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if instance and ev.instance_id != instance:
                        continue
                    yield _sse(ev.to_dict())
            finally:
                if q is not None:
                    bus.unsubscribe(q)

        return StreamingResponse(
            gen(),
            media_type="text/event-stream",
            headers=api_headers({"Cache-Control": "no-cache"}),
        )

    return [Route("/instances/{target}/logs", logs), Route("/events", events)]


def _sse(ev: Mapping[str, object]) -> bytes:
    payload = json.dumps(ev, default=str)
    return f"id: {ev['id']}\nevent: {ev['kind']}\ndata: {payload}\n\n".encode()


async def log_stream(
    path: Path,
    *,
    n: int,
    follow: bool,
    since: float | None,
    alive: Callable[[], bool],
    secret: str | None = None,
) -> AsyncIterator[bytes]:
    """The last ``n`` lines (0 = none; with ``since``, those at or after it), then with
    ``follow`` new lines as they are written, until the instance is gone.

    ``secret`` (the engine's API key) is masked in every line: SGLang prints its arguments,
    key included, and the supervisor scrubs the file only a moment later."""

    def line_bytes(line: str) -> bytes:
        if secret and secret in line:
            line = line.replace(secret, "***")
        return (line + "\n").encode()

    lines = logfiles.tail_lines(path, n, max_bytes=64 * 1024 * 1024 if since else 256 * 1024)
    if since is not None:
        lines = list(logfiles.since(lines, since))
    for line in lines:
        yield line_bytes(line)
    if not follow:
        return
    try:
        offset = path.stat().st_size
    except OSError:
        offset = 0
    follower = logfiles.LogFollower(path, offset=offset)
    idle = 0
    while True:
        new = follower.read_new()
        for line in new:
            yield line_bytes(line)
        if new:
            idle = 0
        else:
            idle += 1
            if idle % 20 == 0 and not alive():
                for line in follower.read_new():
                    yield line_bytes(line)
                return
        await asyncio.sleep(0.25)
