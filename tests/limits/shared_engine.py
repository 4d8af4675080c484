"""One engine for several gateway daemons: the vLLM routes the gateway uses, served from
this test process (a thread per connection), counting the requests it works on at once.

Each daemon runs the ``relay_engine`` recipe: its "engine" relays bytes to this one, so the
in-flight count here is the sum over every replica — the figure a shared tenant limit must
hold. ``hold_s`` keeps each completion in flight that long; ``gate`` (when cleared) holds
every completion until it is set.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RELAY_DIR = Path(__file__).resolve().parent / "relay_engine"


class SharedEngine:
    def __init__(self, model: str, hold_s: float = 0.02) -> None:
        self.model = model
        self.hold_s = hold_s
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.completed = 0
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def handle(self) -> None:
                # A client gone (its daemon killed with -9): nothing to answer.
                with contextlib.suppress(OSError):
                    super().handle()

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    data = [{"id": engine.model, "object": "model", "owned_by": "vllm"}]
                    self._send(200, {"object": "list", "data": data})
                elif self.path in ("/health", "/version", "/metrics"):
                    self._send(200, {})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/tokenize":
                    n = sum(len(str(m.get("content", "")).split()) + 2 for m in body["messages"])
                    self._send(200, {"count": n, "max_model_len": 4096, "tokens": [0] * n})
                elif self.path == "/v1/chat/completions":
                    self._send(200, engine.complete(body))
                else:
                    self._send(404, {"detail": "Not Found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            time.sleep(self.hold_s)
            self.gate.wait(60)
            n = int(body.get("max_tokens") or 4)
            return {
                "id": "chatcmpl-shared",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "w " * n},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n},
            }
        finally:
            with self.lock:  # counted out before the answer is written: no overlap by I/O
                self.inflight -= 1
                self.completed += 1

    def reset(self) -> None:
        with self.lock:
            self.max_inflight = self.inflight
            self.completed = 0

    def __enter__(self) -> SharedEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
