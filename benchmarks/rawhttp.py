"""Raw HTTP/1.1 requests for the benchmarks (no client library between us and the socket)."""

from __future__ import annotations

import json
from typing import Any

HOST = "127.0.0.1"


def chat_request(port: int, key: str | None, body: dict[str, Any] | bytes) -> bytes:
    """A POST /v1/chat/completions request, ready to send (``body`` JSON-encoded unless bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\n{auth}Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def response_done(buf: bytes) -> bool:
    """Whether ``buf`` holds one whole HTTP response (Content-Length or chunked)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = buf[:end].lower()
    i = head.find(b"content-length:")
    if i >= 0:
        j = head.find(b"\r\n", i)
        n = int(head[i + 15 : j if j >= 0 else None])
        return len(buf) >= end + 4 + n
    return buf.endswith(b"0\r\n\r\n")
