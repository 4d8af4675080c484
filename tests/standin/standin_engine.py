"""A stand-in for a vLLM or SGLang server, for studioctl's fast test tiers.

It is started by exactly the commands studioctl builds for the real engines, once
``tests/standin`` is on ``PYTHONPATH`` (a recipe's ``env: {PYTHONPATH: <repo>/tests/standin}``)::

    PYTHON -m vllm.entrypoints.openai.api_server --model M --served-model-name N --host H --port P
    PYTHON -m sglang.launch_server --model-path M --served-model-name N --host H --port P

Standard library only, so it is up in a few tens of milliseconds. What it does, per flavour:

- argv: ``--host``, ``--port``, ``--model`` (vLLM) / ``--model-path`` (SGLang),
  ``--served-model-name`` (vLLM takes several), ``--max-model-len`` / ``--context-length``,
  ``--max-num-seqs`` / ``--max-running-requests`` (requests run at once; the rest wait),
  ``--max-total-tokens`` (SGLang KV size); every other flag is accepted and ignored.
- Log: the launch stages with the real engines' key phrases, one flushed line each
  (vLLM 0.32.0: ``Starting to load model``, ``Loading weights took``, ``init engine (profile,
  create kv cache, warmup model) took``, ``Starting vLLM server on``, ``Application startup
  complete.``; SGLang 0.5.23: ``Load weight begin``, ``Load weight end``, ``KV Cache is
  allocated``, ``Uvicorn running on``, ``The server is fired up and ready to roll!``) and a
  uvicorn access line per request.
- Processes: a child like ``VLLM::EngineCore`` (SGLang: ``sglang::scheduler`` and
  ``sglang::detokenizer``): ``python -c ... VLLM::EngineCore PARENT_PID MODE``, its kernel
  name set to the title. It ends on SIGTERM or when its parent dies. When a child dies while
  the server runs, the server logs it and exits 1, as the real engines do. Nobody leaves the
  process group the stand-in was started in.
- Socket: vLLM binds its port at start and listens once the engine is up (a probe before that
  is refused); SGLang binds and listens after loading, answers ``/health`` 503 during the
  warm-up and 200 after it.
- HTTP (and the routes of ``standin_routes.py``: responses, rerank, score, pooling,
  classify, audio uploads, detokenize, SGLang's ``GET /v1/models/{id}``): ``GET /health``,
  ``GET /v1/models``, ``POST /v1/chat/completions`` and
  ``POST /v1/completions`` (JSON, or SSE with ``"stream": true``; with
  ``stream_options.include_usage`` the last chunk before ``data: [DONE]`` carries ``usage``),
  ``POST /tokenize`` (``{"model", "messages"|"prompt"}`` → ``{"count", "max_model_len",
  "tokens", "token_strs"}``), ``GET /metrics`` (Prometheus text: vLLM
  ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``,
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
  ``vllm:request_success_total``; SGLang ``sglang:num_running_reqs``,
  ``sglang:num_queue_reqs``, ``sglang:token_usage``, ``sglang:prompt_tokens_total``,
  ``sglang:generation_tokens_total``, ``sglang:num_requests_total``; the running / waiting
  gauges count the requests really in flight), ``GET /version`` (vLLM),
  ``GET /get_model_info`` (SGLang), and ``POST /standin/crash`` (exit 1 at once).
- API key, as the real engines take and enforce it: vLLM ``--api-key`` or ``VLLM_API_KEY``
  (``--api-key`` wins), required as ``Authorization: Bearer KEY`` on ``/v1/*`` only (not
  ``/health``, ``/metrics``, ``/tokenize``, ``/version``); SGLang ``--api-key`` or
  ``--config FILE.yaml`` holding ``api-key`` (the command line wins), required on every route
  but ``/health*``, ``/ready*`` and ``/metrics*``. Without it: 401 ``{"error":
  "Unauthorized"}``. SGLang logs the key in its ``server_args`` line, as 0.5.23 does.
- Tokens: one per whitespace-separated word of the prompt; a chat prompt is one token per
  message (its role) plus the words of its content. A completion generates exactly
  ``max_tokens`` (or ``max_completion_tokens``; default 16) tokens, text ``"tok0 tok1 ..."``,
  finish reason ``length``. A model name other than a served name gets 404, a prompt plus
  ``max_tokens`` beyond the context length 400, as in vLLM.
- SIGTERM / SIGINT: logs the uvicorn shutdown lines and exits 0 (killing nothing: the children
  get the group's signal or notice their parent is gone).

Behaviour switches (environment variables):

``STANDIN_STARTUP_S``
    Seconds from start to ready (default 0.2), spread over the launch stages.
``STANDIN_MODE``
    Comma-separated, any of:
    ``crash_at_start`` — log the first stages and a traceback, exit 3 before listening;
    ``crash_after:S`` — exit 1, S seconds after becoming ready;
    ``hang`` — never become ready and keep running (vLLM: stuck loading, port not listening;
    SGLang: listening, ``/health`` 503 for ever);
    ``ignore_sigterm`` — SIGTERM is ignored by the server and its children (only SIGKILL
    ends them);
    ``unhealthy_after:S`` — ``/health`` answers 500 from S seconds after becoming ready.
``STANDIN_TOKEN_DELAY_S``
    Seconds per generated token (default 0), streamed or not: keeps requests in flight for
    drain tests.
``STANDIN_PREFILL_S``
    Seconds a request spends before its first chunk (default 0), once it has its place: the
    prefill, so a benchmark's time to first token differs from its inter-token latency.
``STANDIN_STOP_DELAY_S``
    Seconds to linger after SIGTERM before exiting 0 (default 0; real SGLang takes ~7 s).
``STANDIN_CHILD``
    ``1`` (default) spawn the children; ``0`` spawn none; ``linger`` spawn children that ignore
    SIGTERM and do not watch their parent (a leaked worker: only SIGKILL ends it).
``STANDIN_ACCESS_LOG``
    ``1`` (default) log one uvicorn-style line per request; ``0`` not.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

FLAVOURS = ("vllm", "sglang")
VERSIONS = {"vllm": "0.32.0", "sglang": "0.5.23"}
VOCAB_SIZE = 512
DEFAULT_MAX_TOKENS = 16
EXIT_CRASH_AT_START = 3
EXIT_CRASH = 1

# The body of each child process. argv: title, parent pid, mode ("1" | "ignore_sigterm" | "linger").
CHILD_CODE = """
import os, signal, sys, time
title, parent, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, title.encode()[:15], 0, 0, 0)  # PR_SET_NAME: `ps -o comm` shows the title
    if mode != "linger":
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG: die with the parent
except Exception:
    pass
if mode in ("ignore_sigterm", "linger"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    if mode != "linger" and os.getppid() != parent:
        sys.exit(0)
    time.sleep(0.1)
"""


class UsageError(Exception):
    """A bad STANDIN_* variable or engine flag: the stand-in exits 2 like argparse."""


# --------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Modes:
    """The STANDIN_MODE switches."""

    crash_at_start: bool = False
    crash_after_s: float | None = None
    hang: bool = False
    ignore_sigterm: bool = False
    unhealthy_after_s: float | None = None


def parse_modes(text: str) -> Modes:
    """Parse ``STANDIN_MODE`` (comma-separated); raise UsageError naming a bad item."""
    values: dict[str, Any] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, arg = item.partition(":")
        if name in ("crash_at_start", "hang", "ignore_sigterm") and not arg:
            values[name] = True
        elif name in ("crash_after", "unhealthy_after") and arg:
            values[f"{name}_s"] = _seconds(f"STANDIN_MODE item {item!r}", arg)
        else:
            raise UsageError(
                f"STANDIN_MODE: unknown item {item!r} (expected crash_at_start, crash_after:S, "
                "hang, ignore_sigterm, unhealthy_after:S)"
            )
    return Modes(**values)


def _seconds(what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a number of seconds") from None
    if value < 0:
        raise UsageError(f"{what}: {text!r} is negative")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the stand-in was told, from argv and the environment."""

    flavour: str
    host: str
    port: int
    model: str
    served_names: tuple[str, ...]
    max_model_len: int
    max_running: int
    kv_capacity_tokens: int
    startup_s: float
    token_delay_s: float
    stop_delay_s: float
    prefill_s: float
    child: str
    access_log: bool
    modes: Modes
    api_key: str | None = None


def parse_settings(flavour: str, argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Read the engine argv (unknown flags ignored) and the STANDIN_* variables."""
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown flavour {flavour!r} (expected one of {FLAVOURS})")
    parser = argparse.ArgumentParser(prog=f"standin-{flavour}", allow_abbrev=False)
    parser.add_argument("--port", type=int, default=8000 if flavour == "vllm" else 30000)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--max-total-tokens", type=int, default=65536)
    parser.add_argument("--api-key", default=None)
    if flavour == "vllm":
        parser.add_argument("--host", default="0.0.0.0")
        parser.add_argument("--model", default="Qwen/Qwen3-0.6B")
        parser.add_argument("--max-model-len", type=int, default=2048)
        parser.add_argument("--max-num-seqs", type=int, default=256)
    else:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--model-path", required=True)
        parser.add_argument("--context-length", type=int, default=2048)
        parser.add_argument("--max-running-requests", type=int, default=256)
        parser.add_argument("--config", default=None)
    ns, _unknown = parser.parse_known_args(list(argv))
    if flavour == "vllm":
        model, max_len, max_running = ns.model, ns.max_model_len, ns.max_num_seqs
    else:
        model, max_len, max_running = ns.model_path, ns.context_length, ns.max_running_requests
    child = environ.get("STANDIN_CHILD", "1")
    if child not in ("0", "1", "linger"):
        raise UsageError(f"STANDIN_CHILD: {child!r} is not one of 0, 1, linger")
    access_log = environ.get("STANDIN_ACCESS_LOG", "1")
    if access_log not in ("0", "1"):
        raise UsageError(f"STANDIN_ACCESS_LOG: {access_log!r} is not 0 or 1")
    if flavour == "vllm":
        api_key = ns.api_key or environ.get("VLLM_API_KEY") or None
    else:
        api_key = ns.api_key or (_config_key(ns.config) if ns.config else None)
    return Settings(
        flavour=flavour,
        host=ns.host,
        port=ns.port,
        model=model,
        served_names=tuple(ns.served_model_name or [model]),
        max_model_len=max_len,
        max_running=max(1, max_running),
        kv_capacity_tokens=max(1, ns.max_total_tokens),
        startup_s=_seconds("STANDIN_STARTUP_S", environ.get("STANDIN_STARTUP_S", "0.2")),
        token_delay_s=_seconds("STANDIN_TOKEN_DELAY_S", environ.get("STANDIN_TOKEN_DELAY_S", "0")),
        stop_delay_s=_seconds("STANDIN_STOP_DELAY_S", environ.get("STANDIN_STOP_DELAY_S", "0")),
        prefill_s=_seconds("STANDIN_PREFILL_S", environ.get("STANDIN_PREFILL_S", "0")),
        child=child,
        access_log=access_log == "1",
        modes=parse_modes(environ.get("STANDIN_MODE", "")),
        api_key=api_key,
    )


def _config_key(path: str) -> str | None:
    """``api-key`` from an SGLang ``--config`` file (YAML; the stand-in reads the JSON form
    of it, which is what studioctl writes: the standard library has no YAML)."""
    if not path.endswith((".yaml", ".yml")):
        raise UsageError(f"Config file must be YAML format, got: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("Config file must contain a dictionary at root level")
    key = data.get("api-key", data.get("api_key"))
    return str(key) if key is not None else None


# ------------------------------------------------------------------------------------ tokens


def word_tokens(text: str) -> list[int]:
    """One deterministic token id per whitespace-separated word."""
    return [zlib.crc32(word.encode()) % VOCAB_SIZE for word in text.split()]


def chat_tokens(messages: object) -> list[int]:
    """One token per message (its role) plus the words of its text content."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of messages")
    tokens: list[int] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a string 'role'")
        tokens.append(zlib.crc32(message["role"].encode()) % VOCAB_SIZE)
        content = message.get("content")
        if isinstance(content, str):
            tokens.extend(word_tokens(content))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    tokens.extend(word_tokens(part["text"]))
        elif content is not None:
            raise BadRequest(f"messages[{index}].content must be a string or a list of parts")
    return tokens


def prompt_tokens(prompt: object) -> list[int]:
    """A completion prompt: a string, a list of strings, or token ids."""
    if isinstance(prompt, str):
        return word_tokens(prompt)
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        return [int(p) for p in prompt]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return [t for p in prompt for t in word_tokens(p)]
    raise BadRequest("'prompt' must be a string, a list of strings or a list of token ids")


def generated_text(count: int) -> list[str]:
    """The text pieces of ``count`` generated tokens: "tok0", " tok1", ..."""
    return [f"tok{i}" if i == 0 else f" tok{i}" for i in range(count)]


def _dumps(payload: object) -> bytes:
    """Compact JSON, as the engines' pydantic models serialise."""
    return json.dumps(payload, separators=(",", ":")).encode()


class BadRequest(Exception):
    """An HTTP error answer: status, message, OpenAI error type and param."""

    def __init__(
        self, message: str, status: int = 400, kind: str = "BadRequestError", param: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.param = param or None


# ------------------------------------------------------------------------------------- logs


class Log:
    """Engine-like log lines, flushed one by one."""

    def __init__(self, flavour: str) -> None:
        self.flavour = flavour
        self.lock = threading.RLock()  # re-entered when a signal handler logs mid-line

    def _write(self, line: str, err: bool) -> None:
        stream = sys.stderr if err else sys.stdout
        with self.lock:
            stream.write(line + "\n")
            stream.flush()

    def info(
        self,
        message: str,
        *,
        where: str = "api_server.py:1897",
        proc: str = "APIServer",
        pid: int | None = None,
        level: str = "INFO",
        err: bool = False,
    ) -> None:
        """An engine logger line (vLLM: ``(Proc pid=N) INFO 11-25 12:00:00 [file:line] msg``)."""
        pid = os.getpid() if pid is None else pid
        if self.flavour == "vllm":
            stamp = time.strftime("%m-%d %H:%M:%S")
            line = f"({proc} pid={pid}) {level} {stamp} [{where}] {message}"
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            rank = " TP0" if proc != "APIServer" else ""
            line = f"[{stamp}{rank}] {message}"
        self._write(line, err)

    def uvicorn(self, message: str, *, err: bool = False) -> None:
        """A uvicorn line (``INFO:     Application startup complete.``)."""
        if self.flavour == "vllm":
            line = f"(APIServer pid={os.getpid()}) INFO:     {message}"
        else:
            line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] INFO:     {message}"
        self._write(line, err)

    def raw(self, text: str, *, err: bool = True) -> None:
        """Lines as they are (a traceback)."""
        for line in text.splitlines():
            self._write(line, err)


# ----------------------------------------------------------------------------------- engine


class Engine:
    """The state the HTTP handlers share: readiness and the requests in flight."""

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.cond = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.reserved_tokens = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.warm = False
        self.ready_at: float | None = None
        self.stopping = False
        self.created = int(time.time())

    def mark_ready(self) -> None:
        with self.cond:
            self.warm = True
            self.ready_at = time.monotonic()

    def health_status(self) -> int:
        """200 ready, 503 warming up (SGLang), 500 unhealthy (``unhealthy_after:S``)."""
        with self.cond:
            if not self.warm or self.ready_at is None:
                return 503
            after = self.settings.modes.unhealthy_after_s
            if after is not None and time.monotonic() - self.ready_at >= after:
                return 500
            return 200

    @contextlib.contextmanager
    def slot(self, n_prompt: int, n_reserve: int) -> Iterator[None]:
        """Wait (counted as waiting) for one of ``max_running`` places, then run."""
        with self.cond:
            self.waiting += 1
            try:
                while self.running >= self.settings.max_running:
                    self.cond.wait()
            finally:
                self.waiting -= 1
            self.running += 1
            self.reserved_tokens += n_reserve
            self.prompt_tokens_total += n_prompt
        try:
            yield
        finally:
            with self.cond:
                self.running -= 1
                self.reserved_tokens -= n_reserve
                self.cond.notify()

    def count_generated(self, n: int = 1) -> None:
        with self.cond:
            self.generation_tokens_total += n

    def count_finished(self, reason: str) -> None:
        with self.cond:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def metrics_text(self) -> str:
        """The Prometheus exposition of the engine's gauges and counters."""
        with self.cond:
            values = {
                "running": float(self.running),
                "waiting": float(self.waiting),
                "usage": min(1.0, self.reserved_tokens / self.settings.kv_capacity_tokens),
                "prompt": float(self.prompt_tokens_total),
                "generated": float(self.generation_tokens_total),
                "requests": float(sum(self.finished.values())),
            }
            finished = dict(self.finished)
        flavour, name = self.settings.flavour, self.settings.served_names[0]
        if flavour == "vllm":
            labels = {"engine": "0", "model_name": name}
        else:
            labels = {"model_name": name, "pp_rank": "0", "tp_rank": "0"}
        out: list[str] = []
        for metric, kind, doc, key in METRICS[flavour]:
            out += [f"# HELP {metric} {doc}", f"# TYPE {metric} {kind}"]
            if key == "finished":  # vLLM: one sample per finish reason
                for reason, count in finished.items():
                    text = _labels({**labels, "finished_reason": reason})
                    out.append(f"{metric}{{{text}}} {float(count)!r}")
            else:
                out.append(f"{metric}{{{_labels(labels)}}} {values[key]!r}")
        return "\n".join(out) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


# Per flavour: (metric, type, help, value key) — names and help texts as the engines print them.
METRICS: dict[str, list[tuple[str, str, str, str]]] = {
    "vllm": [
        (
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            "running",
        ),
        (
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            "waiting",
        ),
        (
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            "usage",
        ),
        ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", "prompt"),
        (
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            "generated",
        ),
        (
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            "finished",
        ),
    ],
    "sglang": [
        ("sglang:num_running_reqs", "gauge", "The number of running requests.", "running"),
        (
            "sglang:num_queue_reqs",
            "gauge",
            "The number of requests in the waiting queue.",
            "waiting",
        ),
        ("sglang:token_usage", "gauge", "The token usage.", "usage"),
        ("sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.", "prompt"),
        (
            "sglang:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            "generated",
        ),
        ("sglang:num_requests_total", "counter", "Number of requests processed.", "requests"),
    ],
}


# ------------------------------------------------------------------------------------- HTTP


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        super().__init__(address, Handler, bind_and_activate=False)
        self.engine = engine


try:  # run as the engine: tests/standin is on sys.path
    from standin_routes import ExtraRoutes
except ImportError:  # imported by the tests as standin.standin_engine
    from standin.standin_routes import ExtraRoutes


class Handler(ExtraRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked SSE like uvicorn
    # TCP_NODELAY, as uvicorn's asyncio transports: without it a small event written after
    # another waits for the client's delayed ACK (~40 ms), which a benchmark would measure.
    disable_nagle_algorithm = True
    server_version = "uvicorn"
    sys_version = ""
    server: StandinServer
    bad_request = BadRequest

    # -- plumbing

    @property
    def engine(self) -> Engine:
        return self.server.engine

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if not self.engine.settings.access_log:
            return
        try:
            phrase = f" {self.responses[int(code)][0]}"
        except (KeyError, ValueError):
            phrase = ""
        host, port = self.client_address[:2]
        self.engine.log.uvicorn(f'{host}:{port} - "{self.requestline}" {code}{phrase}')

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's own stderr lines (errors are logged where they happen)."""

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    def _read_json_quietly(self) -> None:
        """Consume a request body left unread (keep-alive needs the stream in step)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: object) -> None:
        self._send(status, _dumps(payload))

    def _error(self, exc: BadRequest) -> None:
        info = {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.status}
        if self.engine.settings.flavour == "vllm":
            self._json(exc.status, {"error": info})
        else:
            self._json(exc.status, {"object": "error", **info})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _guarded(self, path: str) -> bool:
        """Whether ``path`` needs the API key (as each real engine decides)."""
        if self.engine.settings.api_key is None or self.command == "OPTIONS":
            return False
        if self.engine.settings.flavour == "vllm":
            return path.startswith(("/v1", "/v2", "/inference", "/cohere"))
        return not path.startswith(("/health", "/ready", "/metrics"))

    def _authorized(self) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        key = self.engine.settings.api_key or ""
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), key.encode())

    def _route(self, routes: Mapping[str, Callable[[], None]]) -> None:
        path = self.path.split("?", 1)[0]
        handler = routes.get(path)
        if self._guarded(path) and not self._authorized():
            self._read_json_quietly()
            self._json(401, {"error": "Unauthorized"})
            return
        try:
            if handler is None:
                self.drain_body()  # as uvicorn, which reads it: the connection stays in step
                raise BadRequest("Not Found", status=404, kind="NotFoundError")
            handler()
        except BadRequest as exc:
            if exc.status == 404 and handler is None:
                self._json(404, {"detail": "Not Found"})
            else:
                self._error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- verbs

    def do_GET(self) -> None:
        routes: dict[str, Callable[[], None]] = {
            "/health": self._health,
            "/v1/models": self._models,
            "/metrics": self._metrics,
        }
        if self.engine.settings.flavour == "vllm":
            routes["/version"] = self._version
        else:
            routes["/get_model_info"] = self._model_info
            routes["/health_generate"] = self._health
            path = self.path.split("?", 1)[0]
            if path.startswith("/v1/models/"):
                routes[path] = lambda: self.model_card(path[len("/v1/models/") :])
        self._route(routes)

    def do_POST(self) -> None:
        routes: dict[str, Callable[[], None]] = {
            "/v1/chat/completions": lambda: self._generate(chat=True),
            "/v1/completions": lambda: self._generate(chat=False),
            "/tokenize": self._tokenize,
            "/standin/crash": self._crash,
            **self.extra_post_routes(),
        }
        self._route(routes)

    # -- endpoints

    def _health(self) -> None:
        self._send(self.engine.health_status(), b"", "text/plain")

    def _version(self) -> None:
        self._json(200, {"version": VERSIONS["vllm"]})

    def _models(self) -> None:
        s = self.engine.settings
        owner = "vllm" if s.flavour == "vllm" else "sglang"
        cards = [
            {
                "id": name,
                "object": "model",
                "created": self.engine.created,
                "owned_by": owner,
                "root": s.model,
                "parent": None,
                "max_model_len": s.max_model_len,
            }
            for name in s.served_names
        ]
        self._json(200, {"object": "list", "data": cards})

    def _model_info(self) -> None:
        s = self.engine.settings
        self._json(
            200,
            {
                "model_path": s.model,
                "tokenizer_path": s.model,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
            },
        )

    def _metrics(self) -> None:
        text = self.engine.metrics_text().encode()
        self._send(200, text, "text/plain; version=0.0.4; charset=utf-8")

    def _crash(self) -> None:
        self.engine.log.info("POST /standin/crash: exiting with code 1", level="ERROR", err=True)
        os._exit(EXIT_CRASH)

    def _check_model(self, body: Mapping[str, Any], required: bool) -> str:
        names = self.engine.settings.served_names
        model = body.get("model")
        if model is None and not required:
            return names[0]
        if model not in names:
            raise BadRequest(
                f"The model `{model}` does not exist. Valid aliases: {', '.join(names)}.",
                status=404,
                kind="NotFoundError",
                param="model",
            )
        return str(model)

    def _tokenize(self) -> None:
        body = self._read_json()
        self._check_model(body, required=False)
        if "messages" in body:
            tokens = chat_tokens(body["messages"])
        elif "prompt" in body:
            tokens = prompt_tokens(body["prompt"])
        else:
            raise BadRequest("give 'messages' or 'prompt'")
        self._json(
            200,
            {
                "count": len(tokens),
                "max_model_len": self.engine.settings.max_model_len,
                "tokens": tokens,
                "token_strs": None,
            },
        )

    def _generate(self, chat: bool) -> None:
        body = self._read_json()
        model = self._check_model(body, required=self.engine.settings.flavour == "vllm")
        tokens = chat_tokens(body.get("messages")) if chat else prompt_tokens(body.get("prompt"))
        max_tokens = body.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest(
                f"max_tokens must be at least 1, got {max_tokens!r}.", param="max_tokens"
            )
        limit = self.engine.settings.max_model_len
        if len(tokens) + max_tokens > limit:
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {max_tokens} output tokens and your prompt contains "
                f"{len(tokens)} input tokens, for a total of {len(tokens) + max_tokens} "
                "tokens. Please reduce the length of the input prompt or the number of "
                "requested output tokens.",
                param="max_tokens",
            )
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        request = _Request(
            chat=chat,
            stream=stream,
            model=model,
            n_prompt=len(tokens),
            n_out=max_tokens,
            created=int(time.time()),
            rid=uuid.uuid4().hex,
        )
        finished = "abort"
        try:
            with self.engine.slot(len(tokens), len(tokens) + max_tokens):
                if self.engine.settings.prefill_s:
                    time.sleep(self.engine.settings.prefill_s)
                if stream:
                    self._stream(request, include_usage)
                else:
                    self._complete(request)
                finished = "length"
        finally:
            self.engine.count_finished(finished)

    def _complete(self, req: _Request) -> None:
        for _ in range(req.n_out):
            if self.engine.settings.token_delay_s:
                time.sleep(self.engine.settings.token_delay_s)
            self.engine.count_generated()
        text = "".join(generated_text(req.n_out))
        choice: dict[str, Any] = {"index": 0}
        if req.chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason="length", stop_reason=None)
        self._json(200, {**req.head(), "choices": [choice], "usage": req.usage()})

    def _stream(self, req: _Request, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(payload: object) -> None:
            self._chunk(b"data: " + _dumps(payload) + b"\n\n")

        if req.chat:  # vLLM opens a chat stream with the role
            delta = {"role": "assistant", "content": ""}
            first = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            event({**req.head(), "choices": [first]})
        pieces = generated_text(req.n_out)
        for i, piece in enumerate(pieces):
            if self.engine.settings.token_delay_s:
                time.sleep(self.engine.settings.token_delay_s)
            self.engine.count_generated()
            last = i == len(pieces) - 1
            choice: dict[str, Any] = {"index": 0}
            if req.chat:
                choice["delta"] = {"content": piece}
            else:
                choice["text"] = piece
            choice["logprobs"] = None
            choice["finish_reason"] = "length" if last else None
            if last:
                choice["stop_reason"] = None
            event({**req.head(), "choices": [choice]})
        if include_usage:
            event({**req.head(), "choices": [], "usage": req.usage()})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")


@dataclass(frozen=True)
class _Request:
    """One generation request, as its answer's envelope needs it."""

    chat: bool
    stream: bool
    model: str
    n_prompt: int
    n_out: int
    created: int
    rid: str

    def head(self) -> dict[str, Any]:
        if self.chat:
            kind = "chat.completion.chunk" if self.stream else "chat.completion"
            rid = f"chatcmpl-{self.rid}"
        else:
            kind, rid = "text_completion", f"cmpl-{self.rid}"
        return {"id": rid, "object": kind, "created": self.created, "model": self.model}

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.n_prompt,
            "total_tokens": self.n_prompt + self.n_out,
            "completion_tokens": self.n_out,
        }


# ---------------------------------------------------------------------------------- process


class Standin:
    """The launch sequence, the children, the signals."""

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.engine = Engine(settings, log)
        self.server = StandinServer((settings.host, settings.port), self.engine)
        self.children: list[subprocess.Popen[bytes]] = []

    # -- helpers

    @property
    def core_pid(self) -> int:
        """The pid the engine-core lines carry: the first child's, else our own."""
        return self.children[0].pid if self.children else os.getpid()

    def core(self, message: str, where: str, level: str = "INFO", err: bool = False) -> None:
        """A line from the engine core (vLLM: ``EngineCore``; SGLang: the scheduler, TP0)."""
        self.log.info(
            message, where=where, proc="EngineCore", pid=self.core_pid, level=level, err=err
        )

    def stage_sleep(self, fraction: float) -> float:
        """Sleep a fraction of STANDIN_STARTUP_S; return the seconds it took."""
        start = time.monotonic()
        time.sleep(self.settings.startup_s * fraction)
        return time.monotonic() - start

    @staticmethod
    def hang_forever() -> NoReturn:
        while True:
            time.sleep(3600)

    def die(self, code: int) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # -- signals and children

    def install_signals(self) -> None:
        signal.signal(signal.SIGINT, self.on_signal)  # Ctrl+C: the uvicorn shutdown
        if self.settings.modes.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the children too
        else:
            signal.signal(signal.SIGTERM, self.on_signal)

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.engine.stopping:
            return
        self.engine.stopping = True
        self.log.uvicorn("Shutting down")
        self.log.uvicorn("Waiting for application shutdown.")
        if self.settings.stop_delay_s:
            time.sleep(self.settings.stop_delay_s)
        self.log.uvicorn("Application shutdown complete.")
        self.die(0)

    def spawn_children(self) -> None:
        s = self.settings
        if s.child == "0":
            return
        if s.child == "linger":
            mode = "linger"
        else:
            mode = "ignore_sigterm" if s.modes.ignore_sigterm else "1"
        titles = (
            ["VLLM::EngineCore"]
            if s.flavour == "vllm"
            else ["sglang::scheduler", "sglang::detokenizer"]
        )
        for title in titles:
            argv = [sys.executable, "-c", CHILD_CODE, title, str(os.getpid()), mode]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True)
            self.children.append(proc)
            watcher = threading.Thread(
                target=self.watch_child, args=(proc, title), name=f"watch-{title}", daemon=True
            )
            watcher.start()

    def watch_child(self, proc: subprocess.Popen[bytes], title: str) -> None:
        """A child that dies while we serve takes the server down, as in the real engines."""
        code = proc.wait()
        # A signal to the whole group reaches us as well: give our handler the first word.
        for _ in range(10):
            if self.engine.stopping:
                return
            time.sleep(0.05)
        if self.settings.flavour == "vllm":
            self.core(
                f"Engine core proc {title} died unexpectedly (exit code {code}), "
                "shutting down client.",
                where="core_client.py:564",
                level="ERROR",
                err=True,
            )
        else:
            self.log.info(
                f"Child process unexpectedly failed with exitcode={code}. pid={proc.pid}",
                level="ERROR",
                err=True,
            )
        self.die(EXIT_CRASH)

    # -- socket

    def bind(self) -> None:
        try:
            self.server.server_bind()
        except OSError as exc:
            self.socket_failed(exc)

    def listen(self) -> None:
        try:
            self.server.server_activate()
        except OSError as exc:
            self.socket_failed(exc)
        serve = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        serve.start()

    def socket_failed(self, exc: OSError) -> NoReturn:
        s = self.settings
        self.log.info(f"could not bind on port {s.port}: {exc}", level="ERROR", err=True)
        self.log.raw(f"Traceback (most recent call last):\nOSError: {exc}")
        self.die(EXIT_CRASH)

    # -- the launch sequences

    def crash_at_start(self) -> NoReturn:
        self.stage_sleep(0.2)
        reason = "RuntimeError: stand-in crash at start (STANDIN_MODE=crash_at_start)"
        if self.settings.flavour == "vllm":
            self.core("EngineCore failed to start.", where="core.py:1017", level="ERROR", err=True)
            self.log.raw(f'Traceback (most recent call last):\n  File "standin"\n{reason}')
            self.log.raw(
                "RuntimeError: Engine core initialization failed. See root cause above. "
                "Failed core proc(s): {'EngineCore': 1}"
            )
        else:
            self.core(
                f"Scheduler hit an exception: Traceback (most recent call last):\n{reason}",
                where="scheduler.py:1",
                level="ERROR",
                err=True,
            )
            self.log.info(
                "Rank 0 scheduler is dead. Please check if there are relevant logs.",
                level="ERROR",
                err=True,
            )
        self.die(EXIT_CRASH_AT_START)

    def start_vllm(self) -> None:
        s = self.settings
        self.log.info(
            f"vLLM server version {VERSIONS['vllm']}, serving model {s.model}",
            where="api_utils.py:335",
        )
        args = {"model": s.model, "served_model_name": list(s.served_names), "port": s.port}
        self.log.info(f"non-default args: {args}", where="api_utils.py:286")
        self.bind()  # vLLM takes its port at once and listens once the engine is up
        self.log.info("Resolved architecture: LlamaForCausalLM", where="model.py:733")
        self.spawn_children()
        self.core(
            f"Initializing a V1 LLM engine (v{VERSIONS['vllm']}) with config: model={s.model!r}, "
            f"served_model_name={s.served_names[0]}, max_seq_len={s.max_model_len}, "
            "device_config=cpu",
            where="core.py:134",
        )
        self.core(f"Starting to load model {s.model}...", where="cpu_model_runner.py:68")
        if s.modes.crash_at_start:
            self.crash_at_start()
        if s.modes.hang:
            self.hang_forever()
        took = self.stage_sleep(0.4)
        self.core(f"Loading weights took {took:.2f} seconds", where="default_loader.py:502")
        self.core(
            f"Model loading took 0.0021 GiB memory and {took:.6f} seconds",
            where="cpu_model_runner.py:79",
        )
        took = self.stage_sleep(0.4)
        self.core(
            f"init engine (profile, create kv cache, warmup model) took {took:.2f} s",
            where="core.py:403",
        )
        self.stage_sleep(0.2)
        self.log.info("Supported tasks: ['generate']", where="entry.py:134")
        self.log.info(f"Starting vLLM server on http://{s.host}:{s.port}", where="entry.py:140")
        self.log.info("Available routes are:", where="launcher.py:186")
        for path, methods in (
            ("/health", "GET"),
            ("/metrics", "GET"),
            ("/tokenize", "POST"),
            ("/v1/models", "GET"),
            ("/v1/chat/completions", "POST"),
            ("/v1/completions", "POST"),
        ):
            self.log.info(f"Route: {path}, Methods: {methods}", where="launcher.py:194")
        self.engine.mark_ready()
        self.listen()
        self.log.uvicorn(f"Started server process [{os.getpid()}]")
        self.log.uvicorn("Waiting for application startup.")
        self.log.uvicorn("Application startup complete.")

    def start_sglang(self) -> None:
        s = self.settings
        self.log.info(
            f"server_args=ServerArgs(model_path={s.model!r}, tokenizer_path={s.model!r}, "
            f"served_model_name={s.served_names[0]!r}, host={s.host!r}, port={s.port}, "
            f"context_length={s.max_model_len}, max_running_requests={s.max_running}, "
            f"max_total_tokens={s.kv_capacity_tokens}, api_key={s.api_key!r}, device='cpu')"
        )
        self.spawn_children()
        self.core("Init torch distributed begin.", where="model_runner.py:1")
        self.stage_sleep(0.1)
        self.core("Init torch distributed ends. mem usage=0.00 GB", where="model_runner.py:1")
        self.core("Load weight begin. avail mem=20.00 GB", where="model_runner.py:1")
        if s.modes.crash_at_start:
            self.crash_at_start()
        took = self.stage_sleep(0.3)
        self.core(
            f"Load weight end. elapsed={took:.2f} s, type=LlamaForCausalLM, "
            "dtype=torch.float32, avail mem=19.99 GB, mem usage=0.01 GB.",
            where="model_runner.py:1",
        )
        self.stage_sleep(0.2)
        self.core(
            f"KV Cache is allocated. #tokens: {s.kv_capacity_tokens}, K size: 0.06 GB, "
            "V size: 0.06 GB",
            where="model_runner.py:1",
        )
        self.core(
            f"max_total_num_tokens={s.kv_capacity_tokens}, chunked_prefill_size=4096, "
            f"max_prefill_tokens=16384, max_running_requests={s.max_running}, "
            f"context_len={s.max_model_len}, available_gpu_mem=19.87 GB",
            where="scheduler.py:1",
        )
        self.bind()  # SGLang takes its port when uvicorn starts, then warms up (/health 503)
        self.listen()
        self.log.uvicorn(f"Started server process [{os.getpid()}]")
        self.log.uvicorn("Waiting for application startup.")
        self.log.uvicorn("Application startup complete.")
        self.log.uvicorn(f"Uvicorn running on http://{s.host}:{s.port} (Press CTRL+C to quit)")
        if s.modes.hang:
            self.hang_forever()
        self.stage_sleep(0.4)
        self.engine.mark_ready()
        self.log.info("The server is fired up and ready to roll!")

    def crash_later(self) -> None:
        after = self.settings.modes.crash_after_s
        self.core(
            f"EngineCore encountered a fatal error (STANDIN_MODE=crash_after:{after}).",
            where="core.py:1030",
            level="ERROR",
            err=True,
        )
        self.die(EXIT_CRASH)

    def run(self) -> NoReturn:
        self.install_signals()
        if self.settings.flavour == "vllm":
            self.start_vllm()
        else:
            self.start_sglang()
        after = self.settings.modes.crash_after_s
        if after is not None:
            timer = threading.Timer(after, self.crash_later)
            timer.daemon = True
            timer.start()
        self.hang_forever()


def main(flavour: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Run the stand-in in ``flavour`` ("vllm" or "sglang") with the engine's argv."""
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = parse_settings(flavour, args, os.environ)
    except UsageError as exc:
        print(f"standin-{flavour}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    Standin(settings, Log(flavour)).run()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vllm", sys.argv[2:])
