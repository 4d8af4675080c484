"""A fast fixed-response upstream for the gateway benchmark: a minimal asyncio HTTP/1.1 server.

It answers, on any path:

- ``POST`` with ``"stream": true`` in the body → a 100-chunk SSE chat stream (chunked
  transfer encoding, one write per event as an engine does), plus the usage chunk when the
  request asks ``stream_options.include_usage``, then ``data: [DONE]``;
- ``POST /tokenize`` → ``{"count": 8}``;
- anything else → one fixed chat completion (with usage).

Keep-alive, Content-Length bodies only (what the gateway and wrk send). uvloop when
installed. Run: ``python benchmarks/upstream_fixed.py --port 18123 [--cpu 1]``; it prints
``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

CHUNKS = 100
MODEL = "bench"

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "total_tokens": 17, "completion_tokens": 9},
    },
    separators=(",", ":"),
).encode()


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_HEAD = {"id": "chatcmpl-fixed", "object": "chat.completion.chunk", "created": 1700000000}
STREAM_EVENTS = [
    _chunked(
        _event(
            {
                **_HEAD,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
    )
]
STREAM_EVENTS += [
    _chunked(
        _event(
            {
                **_HEAD,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": f" tok{i}"},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
    )
    for i in range(CHUNKS - 2)
]
STREAM_EVENTS.append(
    _chunked(
        _event(
            {
                **_HEAD,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": ""},
                        "logprobs": None,
                        "finish_reason": "stop",
                        "stop_reason": None,
                    }
                ],
            }
        )
    )
)
USAGE_EVENT = _chunked(
    _event(
        {
            **_HEAD,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 8, "total_tokens": 107, "completion_tokens": 99},
        }
    )
)
DONE = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"

RESP_JSON = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    % len(COMPLETION)
    + COMPLETION
)
RESP_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
TOKENIZE = b'{"count":8,"max_model_len":4096}'
RESP_TOKENIZE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    % len(TOKENIZE)
    + TOKENIZE
)


class FixedHTTP(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"content-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i)
                length = int(lower[i + 15 : j if j >= 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            self.respond(head, body)

    def respond(self, head: bytes, body: bytes) -> None:
        t = self.transport
        assert t is not None
        if b'"stream":true' in body or b'"stream": true' in body:
            t.write(RESP_STREAM_HEAD + STREAM_EVENTS[0])
            for event in STREAM_EVENTS[1:]:
                t.write(event)
            if b'"include_usage":true' in body or b'"include_usage": true' in body:
                t.write(USAGE_EVENT)
            t.write(DONE)
        elif head.startswith(b"POST /tokenize"):
            t.write(RESP_TOKENIZE)
        else:
            t.write(RESP_JSON)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedHTTP, host, port, backlog=1024, reuse_address=True)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = p.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - plain asyncio then
        pass
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
