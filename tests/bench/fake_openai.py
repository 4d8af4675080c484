"""A small OpenAI-style server on a real socket for the load generator's error paths: it has
no /tokenize (as the gateway), counts one token per word, and answers each generation
request by the next behaviour of a cycle: ``ok``, ``503``, ``close`` (drops the connection
mid-answer) or ``hang`` (answers after ``hang_s``)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviours: Sequence[str], hang_s: float = 2.0) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.behaviours = list(behaviours)
        self.hang_s = hang_s
        self.lock = threading.Lock()
        self.calls = 0
        self.paths: list[str] = []

    def next_behaviour(self) -> str:
        with self.lock:
            b = self.behaviours[self.calls % len(self.behaviours)]
            self.calls += 1
            return b

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a hanging answer (the timeout test) is expected."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)
        if self.path != "/v1/chat/completions":
            self._send(404, {"detail": "Not Found"})
            return
        body = json.loads(raw)
        words = sum(len(m["content"].split()) for m in body["messages"])
        behaviour = "ok" if body.get("max_tokens") == 1 else self.server.next_behaviour()
        if behaviour == "503":
            self._send(503, {"error": {"message": "overloaded", "code": 503}})
            return
        if behaviour == "close":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"partial"')
            self.close_connection = True
            return
        if behaviour == "hang":
            time.sleep(self.server.hang_s)
        n = int(body.get("max_tokens") or 16)
        usage = {"prompt_tokens": words, "completion_tokens": n, "total_tokens": words + n}
        choice = {"index": 0, "message": {"role": "assistant", "content": "x " * n}}
        self._send(200, {"id": "x", "choices": [choice], "usage": usage})


@contextlib.contextmanager
def fake_server(behaviours: Sequence[str], hang_s: float = 2.0) -> Iterator[FakeServer]:
    server = FakeServer(behaviours, hang_s)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
