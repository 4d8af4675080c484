"""A raw HTTP/1.1 engine on 127.0.0.1 whose answers a test scripts byte for byte.

For engines that misbehave in ways no real server library would let a test express: interim
1xx answers, a second response nobody asked for, a half-close, invalid statuses. Each request
(head and Content-Length body) is recorded with the number of the connection it came on; the
script writes the answer (or anything else) to the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")


@dataclass
class Received:
    conn: int  # 1, 2, … in the order connections were accepted
    head: bytes  # request line and headers, up to and including the blank line
    body: bytes


Script = Callable[[int, Received, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class ScriptedEngine:
    """``script(n, request, writer)`` answers the n-th request (0-based, over all connections)."""

    script: Script
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    eofs: int = 0  # connections the client closed (or half-closed) on us
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> ScriptedEngine:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = _LENGTH.search(head)
                body = await reader.readexactly(int(m.group(1)) if m else 0)
                request = Received(conn, head, body)
                self.requests.append(request)
                await self.script(len(self.requests) - 1, request, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def completion(tag: str) -> bytes:
    """A chat completion whose content names the answer (and so which request it is for)."""
    return orjson.dumps(
        {
            "id": tag,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": tag}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )


def response(body: bytes, status: int = 200, ctype: bytes = b"application/json") -> bytes:
    reason = b"OK" if status == 200 else b"X"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (status, reason, ctype, len(body))
        + body
    )


def answer(tag: str, status: int = 200) -> bytes:
    return response(completion(tag), status)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
EARLY_HINTS = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
    b"Content-Type: text/html\r\n\r\n"
)
