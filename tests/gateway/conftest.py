"""Gateway test harness: a vLLM-speaking stand-in engine and a real uvicorn-served gateway.

Both run on one uvloop event loop in a background thread (``LoopThread``), so tests drive
them from the main thread with real clients (the official ``openai`` client, httpx, raw
sockets) over real TCP on OS-picked ports. The stand-in engine counts requests in flight,
the most ever in flight, and requests the client closed before the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
import uvicorn
import uvloop
from aiohttp import web

from studioctl.gateway.app import GatewayApp
from studioctl.gateway.auth import Authenticator
from studioctl.gateway.core import GatewayCore, new_pool
from studioctl.gateway.limiting import LimitsBackend
from studioctl.gateway.limits import Limiter
from studioctl.gateway.metrics import GatewayMetrics
from studioctl.gateway.queue import ModelQueues, Want
from studioctl.gateway.routing import RouteTable, Upstream
from studioctl.gateway.tokenize import PromptCounter
from studioctl.gateway.usage import MemoryUsageQueue
from studioctl.settings import GatewaySettings
from studioctl.tenants import TenantContext, TenantLimits, anonymous_context
from studioctl.tenants.keys import generate_key

T = TypeVar("T")

MODEL = "tiny"
ALIAS = "tiny-alias"
CREATED = 1_700_000_000


# -- a loop in a thread ---------------------------------------------------------------------


class LoopThread:
    """A uvloop event loop running in a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="gateway-test-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        async def _call() -> T:
            return fn()

        return self.run(_call(), timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def closed_port() -> int:
    """A port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- the stand-in engine ----------------------------------------------------------------------


def count_words(text: str) -> int:
    return len(text.split())


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The stand-in's "tokenizer": one token per word, 2 per message and 1 for the template."""
    words = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            words += count_words(content)
        elif isinstance(content, list):
            words += sum(count_words(p.get("text", "")) for p in content if isinstance(p, dict))
    return words + 2 * len(messages) + 1


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class StandinEngine:
    """Speaks the part of vLLM's HTTP API the gateway uses. Knobs are plain attributes."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.default_tokens = 8
        self.head_delay_s = 0.0  # before any answer
        # Set: every answer waits until it is set again (holds requests in flight for as
        # long as a test needs, whatever the machine's load).
        self.hold: threading.Event | None = None
        self.token_delay_s = 0.0  # between stream chunks
        self.fail: tuple[int, dict[str, Any]] | None = None  # answer this status + body
        self.fail_headers: dict[str, str] = {}  # ... with these headers
        self.tokenize_available = True
        self.send_usage = True  # False: an engine that ignores stream_options.include_usage
        self.keepalive_timeout_s = 75.0  # aiohttp's default; idle connections closed after
        # observations
        self.inflight = 0
        self.max_inflight = 0
        self.requests: list[dict[str, Any]] = []
        self.raw_bodies: list[bytes] = []
        self.request_ids: list[str | None] = []  # the X-Request-Id of each request
        self.peers: set[int] = set()  # client ports of the connections requests came on
        self.aborted = 0  # requests the client (the gateway) closed before the end
        self.completed = 0
        self.tokenize_calls = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._runner: web.AppRunner | None = None

    @property
    def upstream_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=self.keepalive_timeout_s,
        )
        await self._runner.setup()
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers --------------------------------------------------------------------------

    async def _enter(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        self.raw_bodies.append(raw)
        self.request_ids.append(request.headers.get("X-Request-Id"))
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername")[1])
        body: dict[str, Any] = orjson.loads(raw)
        self.requests.append(body)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await self._enter(request)
        finished = False
        try:
            if self.head_delay_s:
                await asyncio.sleep(self.head_delay_s)
            while self.hold is not None and not self.hold.is_set():
                await asyncio.sleep(0.005)
            if self.fail is not None:
                status, err = self.fail
                finished = True
                return web.json_response(err, status=status, headers=self.fail_headers)
            if chat:
                prompt = chat_prompt_tokens(body["messages"])
            else:
                prompt = count_words(str(body.get("prompt", "")))
            n = body.get("max_completion_tokens") or body.get("max_tokens") or self.default_tokens
            n = min(int(n), 10_000)
            self.prompt_tokens_total += prompt
            model = body["model"]
            usage = {"prompt_tokens": prompt, "total_tokens": prompt + n, "completion_tokens": n}
            if not body.get("stream"):
                text = " ".join(f"w{i}" for i in range(n))
                if chat:
                    choice: dict[str, Any] = {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
                    obj = "text_completion"
                self.generation_tokens_total += n
                finished = True
                return web.json_response(
                    {
                        "id": "cmpl-standin",
                        "object": obj,
                        "created": CREATED,
                        "model": model,
                        "choices": [choice],
                        "usage": usage,
                    }
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
            await resp.prepare(request)
            await resp.write(b"".join(self.stream_events(body, prompt, n, chat=chat)[:1]))
            for event in self.stream_events(body, prompt, n, chat=chat)[1:]:
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                await resp.write(event)
                self.generation_tokens_total += 1 if b'"w' in event else 0
            await resp.write_eof()
            finished = True
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            self.aborted += 1
            raise
        finally:
            self.inflight -= 1
            if finished:
                self.completed += 1

    def stream_events(
        self, body: dict[str, Any], prompt: int, n: int, *, chat: bool
    ) -> list[bytes]:
        """The exact events vLLM sends for a stream of ``n`` tokens (usage as asked)."""
        model = body["model"]
        opts = body.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage")) and self.send_usage
        if chat:
            head = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": CREATED}

            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                c: dict[str, Any] = {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish,
                }
                if finish:
                    c["stop_reason"] = None
                return sse({**head, "model": model, "choices": [c]})

            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": f"w{i} "}) for i in range(n)]
            events.append(chunk({"content": ""}, "length"))
        else:
            head = {"id": "cmpl-standin", "object": "text_completion", "created": CREATED}

            def tchunk(text: str, finish: str | None = None) -> bytes:
                c = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                return sse({**head, "model": model, "choices": [c]})

            events = [tchunk(f"w{i} ") for i in range(n)]
            events.append(tchunk("", "length"))
        if include_usage:
            usage = {"prompt_tokens": prompt, "total_tokens": prompt + n, "completion_tokens": n}
            events.append(sse({**head, "model": model, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return events

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._enter(request)
        try:
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            prompt = sum(count_words(i) for i in inputs)
            return web.json_response(
                {
                    "object": "list",
                    "model": body["model"],
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                        for i in range(len(inputs))
                    ],
                    "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
                }
            )
        finally:
            self.inflight -= 1
            self.completed += 1

    async def _tokenize(self, request: web.Request) -> web.Response:
        self.tokenize_calls += 1
        if not self.tokenize_available:
            return web.json_response({"detail": "Not Found"}, status=404)
        body = await request.json()
        if "messages" in body:
            n = chat_prompt_tokens(body["messages"])
        else:
            n = count_words(body["prompt"])
        return web.json_response({"count": n, "max_model_len": 4096, "tokens": list(range(n))})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm"}]}
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE vllm:prompt_tokens_total counter\n"
            f'vllm:prompt_tokens_total{{model_name="{MODEL}"}} {self.prompt_tokens_total}\n'
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{model_name="{MODEL}"}} '
            f"{self.generation_tokens_total}\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{MODEL}"}} {self.inflight}\n'
        )
        return web.Response(text=text, content_type="text/plain")


# -- the gateway under uvicorn ----------------------------------------------------------------

GENEROUS = TenantLimits(
    max_concurrent=10_000,
    rpm=1_000_000,
    tpm=1_000_000_000,
    max_context_tokens=8192,
    max_output_tokens=512,
)


async def _admin_echo(scope: Any, receive: Any, send: Any) -> None:
    """A stand-in admin app: echoes the path it was given."""
    body = orjson.dumps({"path": scope["path"], "method": scope["method"]})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _healthy() -> dict[str, Any]:
    return {"status": "ok", "store": "ok", "instances": {"i-1": "ready"}}


@dataclass
class Gateway:
    """One running gateway (plus its collaborators, for inspection)."""

    lt: LoopThread
    app: GatewayApp
    engine: StandinEngine
    routes: RouteTable
    limiter: LimitsBackend
    usage: MemoryUsageQueue
    metrics: GatewayMetrics
    auth: Authenticator
    queues: ModelQueues
    keys: dict[str, TenantContext]  # sha256 → context
    url: str = ""
    key: str = ""  # the default tenant's key
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def add_tenant(
        self, name: str, limits: TenantLimits = GENEROUS, *, enabled: bool = True
    ) -> str:
        plaintext, prefix, digest = generate_key()
        self.keys[digest] = TenantContext(
            tenant_id=f"t_{name}_{next(self._ids)}",
            name=name,
            enabled=enabled,
            limits=limits,
            key_prefix=prefix,
        )
        self.lt.call(self.auth.invalidate)
        return plaintext

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def set_upstreams(self, upstreams: list[Upstream], known: dict[str, str]) -> None:
        self.lt.call(lambda: self.routes.update(upstreams, known))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> float:
        """Seconds until ``predicate()`` (evaluated on the server loop) holds; fails after."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.lt.call(predicate):
                return time.monotonic() - t0
            time.sleep(0.01)
        raise AssertionError(f"condition not met within {timeout} s")

    async def serve_unix(self, path: str) -> None:
        config = uvicorn.Config(
            self.app, uds=path, lifespan="off", log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(server.serve())
        await _wait_started(server, task)
        self.servers.append((server, task))


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    for _ in range(1000):
        if server.started:
            return
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited before starting")
        await asyncio.sleep(0.005)
    raise RuntimeError("uvicorn did not start")


async def _start_gateway(gw: Gateway) -> None:
    await gw.engine.start()
    up = Upstream("i-1", "tiny-recipe", gw.engine.host, gw.engine.port, "ready", (MODEL, ALIAS))
    gw.routes.update([up], {MODEL: "tiny-recipe", ALIAS: "tiny-recipe", "other": "other-recipe"})
    sock = bound_socket()
    host, port = sock.getsockname()
    config = uvicorn.Config(
        gw.app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        http="httptools",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await _wait_started(server, task)
    gw.servers.append((server, task))
    gw.url = f"http://{host}:{port}"


async def _stop_gateway(gw: Gateway) -> None:
    for server, _ in gw.servers:
        server.should_exit = True
    for _, task in gw.servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
    await gw.engine.stop()


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(loop_thread: LoopThread) -> Iterator[GatewayFactory]:
    """``make_gateway(admin_token=None, upstream=…, **GatewaySettings fields) → Gateway``."""
    started: list[Gateway] = []

    def factory(
        *,
        admin_token: str | None = None,
        tenant_limits: TenantLimits = GENEROUS,
        tokenizer_timeout_s: float = 10.0,
        engine_keepalive_s: float = 75.0,
        anonymous: bool = False,
        health: Callable[[], Awaitable[dict[str, Any]]] = _healthy,
        queue_depth: int = 64,
        queue_timeout_s: float = 300.0,
        queue_when_busy: bool = False,
        want: Want | None = None,
        lookup: Callable[[str], TenantContext | None] | None = None,
        limiter: LimitsBackend | None = None,
        **settings: Any,
    ) -> Gateway:
        gs = GatewaySettings(**settings)
        keys: dict[str, TenantContext] = {}
        routes = RouteTable()
        if limiter is None:  # ``limiter``: another backend (the Redis one)
            limiter = Limiter(global_max_concurrent=gs.max_concurrent)
        metrics = GatewayMetrics(
            tenant_labels=gs.metrics_tenant_labels, inflight_source=limiter.inflight
        )
        auth = Authenticator(  # ``lookup``: instead of the harness's keys (a failing store)
            lookup or keys.get,
            anonymous=anonymous_context() if anonymous else None,
            api_key_header=gs.api_key_header,
        )
        usage = MemoryUsageQueue()
        pool = new_pool()
        core = GatewayCore(
            routes=routes,
            auth=auth,
            limiter=limiter,
            usage=usage,
            metrics=metrics,
            pool=pool,
            tokenizer=PromptCounter(new_pool(), timeout_s=tokenizer_timeout_s),
        )
        queues = ModelQueues(
            routes=routes,
            limiter=limiter,
            metrics=metrics,
            depth=queue_depth,
            timeout_s=queue_timeout_s,
            when_busy=queue_when_busy,
        )
        app = GatewayApp(
            core,
            queues=queues,
            want=want,
            settings=gs,
            admin_app=_admin_echo,
            admin_token=admin_token,
            health=health,
            version={"version": "0.1.0", "api": 1},
        )
        engine = StandinEngine()
        engine.keepalive_timeout_s = engine_keepalive_s
        gw = Gateway(loop_thread, app, engine, routes, limiter, usage, metrics, auth, queues, keys)
        loop_thread.run(_start_gateway(gw))
        started.append(gw)
        gw.key = gw.add_tenant("acme", tenant_limits)
        return gw

    yield factory
    for gw in started:
        loop_thread.run(_stop_gateway(gw), timeout=30)


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()


def run_async(coro: Awaitable[T]) -> T:
    """Run a coroutine on a fresh loop in this (the test's) thread."""

    async def _wrap() -> T:
        return await coro

    return asyncio.run(_wrap())


async def open_stream(
    session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]
) -> aiohttp.ClientResponse:
    return await session.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
