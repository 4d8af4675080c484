"""The load generator: one event loop, one connection pool, per-request records.

Arrivals: a closed loop of ``concurrency`` clients, each sending its next request when its
last one is answered; or an open loop at ``rate`` requests/s, with gaps drawn from a gamma
distribution of shape ``burstiness`` and mean 1/rate (1: a Poisson process; vLLM's
definition, and, for a fixed number of requests, its rescaling so the last arrival falls at
N/rate), optionally capped at ``concurrency`` in flight. The run ends after ``requests``
measured requests, or after ``duration_s`` (no new request starts then; those in flight are
waited for and counted). ``warmup`` requests go first and are not measured.

What each request records is in ``metrics.RequestRecord``; streamed answers are read as
server-sent events (``stream_options.include_usage``), with the time of each token chunk.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from studioctl.bench.httpconn import Collect, Pool, RequestFailed, request_bytes
from studioctl.bench.metrics import RequestRecord
from studioctl.bench.prompts import Prompt

# An event stream that never ends an event within this many bytes is not one.
_MAX_EVENT = 1 << 20


@dataclass(frozen=True)
class Endpoint:
    """Where and how requests go: ``base_path`` is the URL's path before ``/v1``."""

    host: str
    port: int
    tls: bool
    base_path: str
    model: str
    api_key: str | None = None
    chat: bool = True

    @property
    def path(self) -> str:
        return self.base_path + ("/v1/chat/completions" if self.chat else "/v1/completions")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request(self, path: str, body: dict[str, Any]) -> bytes:
        host = f"{self.host}:{self.port}"
        return request_bytes("POST", host, path, orjson.dumps(body), self.headers())


@dataclass(frozen=True)
class Workload:
    stream: bool = True
    requests: int | None = 100
    duration_s: float | None = None
    concurrency: int | None = 1
    rate: float | None = None
    burstiness: float = 1.0
    warmup: int = 0
    seed: int = 0
    timeout_s: float | None = 600.0
    ignore_eos: bool = True


class Progress:
    """Live counters for a progress display (read from another thread: plain numbers)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.warming = 0
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.output_tokens = 0
        self.total: int | None = None
        self.duration_s: float | None = None


def payload(endpoint: Endpoint, prompt: Prompt, workload: Workload) -> bytes:
    """One generation request's bytes."""
    body: dict[str, Any] = {"model": endpoint.model, **prompt.body(endpoint.chat)}
    body["max_tokens"] = prompt.output_tokens
    if workload.ignore_eos:
        body["ignore_eos"] = True  # vLLM and SGLang: exactly max_tokens come back
    if workload.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return endpoint.request(endpoint.path, body)


# ------------------------------------------------------------------------------- answers


class StreamSink:
    """Reads a server-sent event stream: token chunks' times, usage, [DONE]."""

    __slots__ = ("buf", "first", "gaps", "last", "output", "prompt", "status")

    def __init__(self) -> None:
        self.buf = b""
        self.first: float | None = None
        self.last = 0.0
        self.gaps: array[float] = array("d")
        self.prompt: int | None = None
        self.output: int | None = None
        self.status = 0

    def headers(self, status: int, t: float) -> None:
        self.status = status

    def body(self, data: bytes, t: float) -> None:
        if self.status != 200:
            return  # an error answer's body: its status is what counts
        # The common case: one whole one-line event per read or chunk (vLLM, SGLang).
        one_event = data.endswith(b"\n\n") and data.find(b"\n") == len(data) - 2
        if one_event and not self.buf and data.startswith(b"data: "):
            self.data(data[6:-2], t)
            return
        buf = self.buf + data if self.buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            self.event(buf[start:end], t)
            start = end + 2
        self.buf = buf[start:]
        if len(self.buf) > _MAX_EVENT:
            raise RequestFailed("bad_response", f"an event above {_MAX_EVENT} bytes")

    def event(self, raw: bytes, t: float) -> None:
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):  # not comments (": ping"), event names, ids
                self.data(line[5:].strip(), t)

    def data(self, data: bytes, t: float) -> None:
        if data == b"[DONE]" or not data:
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise RequestFailed("bad_response", "an event that is not JSON") from None
        if not isinstance(chunk, dict):
            return
        if chunk.get("choices"):
            if self.first is None:
                self.first = t
            else:
                self.gaps.append(t - self.last)
            self.last = t
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt = usage.get("prompt_tokens")
            self.output = usage.get("completion_tokens")

    def record(self, start: float) -> RequestRecord:
        if self.status != 200:
            return RequestRecord(start, time.perf_counter(), error=f"http_{self.status}")
        if self.first is None:
            return RequestRecord(start, time.perf_counter(), error="no_tokens")
        if not isinstance(self.prompt, int) or not isinstance(self.output, int):
            return RequestRecord(start, self.last, error="no_usage")
        return RequestRecord(start, self.last, self.first, self.gaps, self.prompt, self.output)


def json_record(start: float, sink: Collect) -> RequestRecord:
    end = sink.t_end or sink.t_headers
    if sink.status != 200:
        return RequestRecord(start, end, error=f"http_{sink.status}")
    try:
        usage = sink.json().get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return RequestRecord(start, end, error="bad_response")
    if not isinstance(usage, dict):
        return RequestRecord(start, end, error="no_usage")
    prompt, output = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(output, int):
        return RequestRecord(start, end, error="no_usage")
    return RequestRecord(start, end, prompt_tokens=prompt, output_tokens=output)


async def one(pool: Pool, data: bytes, stream: bool, timeout: float | None) -> RequestRecord:
    """Send one request and measure it."""
    sink: StreamSink | Collect = StreamSink() if stream else Collect()
    start = time.perf_counter()
    try:
        await pool.request(data, sink, timeout=timeout)
    except RequestFailed as exc:
        return RequestRecord(start, time.perf_counter(), error=exc.kind)
    if isinstance(sink, StreamSink):
        return sink.record(start)
    return json_record(start, sink)


# ------------------------------------------------------------------------------ arrivals


def arrival_offsets(count: int, rate: float, burstiness: float, rng: random.Random) -> list[float]:
    """Seconds from the start at which each of ``count`` requests arrives (vLLM's method:
    gamma gaps of shape ``burstiness`` and scale 1/(rate·burstiness), then rescaled so the
    last arrival is at count/rate)."""
    theta = 1.0 / (rate * burstiness)
    out: list[float] = []
    t = 0.0
    for _ in range(count):
        t += rng.gammavariate(burstiness, theta)
        out.append(t)
    if out and out[-1] > 0:
        factor = (count / rate) / out[-1]
        out = [x * factor for x in out]
    return out


class Run:
    """One measured run over prebuilt request payloads (cycled when fewer than requests)."""

    def __init__(
        self,
        pool: Pool,
        payloads: Sequence[bytes],
        workload: Workload,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not payloads:
            raise ValueError("no request to send")
        self.pool = pool
        self.payloads = payloads
        self.w = workload
        self.progress = progress or Progress()
        self.clock = clock
        self.records: list[RequestRecord] = []
        self.next_index = 0
        self.deadline = float("inf")

    def _take(self) -> int | None:
        """The next measured request's index, or None when the run has sent them all."""
        if self.w.requests is not None and self.next_index >= self.w.requests:
            return None
        if self.clock() >= self.deadline:
            return None
        i = self.next_index
        self.next_index += 1
        return i

    async def _send(self, i: int) -> None:
        data = self.payloads[i % len(self.payloads)]
        self.progress.sent += 1
        record = await one(self.pool, data, self.w.stream, self.w.timeout_s)
        self.records.append(record)
        if record.error is None:
            self.progress.ok += 1
            self.progress.output_tokens += record.output_tokens
        else:
            self.progress.failed += 1

    async def warmup(self) -> None:
        n = self.w.warmup
        if n <= 0:
            return
        self.progress.warming = n
        width = min(n, self.w.concurrency or n)
        it = iter(range(n))

        async def client() -> None:
            for j in it:
                data = self.payloads[(len(self.payloads) - 1 - j) % len(self.payloads)]
                await one(self.pool, data, self.w.stream, self.w.timeout_s)
                self.progress.warming -= 1

        await asyncio.gather(*(client() for _ in range(width)))

    async def measure(self) -> float:
        """Send the measured requests; return the run's duration (seconds)."""
        self.progress.total = self.w.requests
        self.progress.duration_s = self.w.duration_s
        t0 = self.clock()
        self.progress.t0 = t0
        if self.w.duration_s is not None:
            self.deadline = t0 + self.w.duration_s
        if self.w.rate is None:
            await self._closed_loop()
        else:
            await self._open_loop(t0)
        return self.clock() - t0

    async def _closed_loop(self) -> None:
        async def client() -> None:
            while (i := self._take()) is not None:
                await self._send(i)

        await asyncio.gather(*(client() for _ in range(self.w.concurrency or 1)))

    async def _open_loop(self, t0: float) -> None:
        assert self.w.rate is not None
        rng = random.Random(self.w.seed)
        cap = asyncio.Semaphore(self.w.concurrency) if self.w.concurrency else None
        fixed = (
            arrival_offsets(self.w.requests, self.w.rate, self.w.burstiness, rng)
            if self.w.requests is not None
            else None
        )
        theta = 1.0 / (self.w.rate * self.w.burstiness)
        tasks: set[asyncio.Task[None]] = set()
        offset = 0.0

        async def capped(i: int) -> None:
            if cap is None:
                await self._send(i)
                return
            async with cap:
                await self._send(i)

        while True:
            offset = (
                fixed[self.next_index]
                if fixed
                else offset + rng.gammavariate(self.w.burstiness, theta)
            )
            delay = t0 + offset - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            i = self._take()
            if i is None:
                break
            task = asyncio.create_task(capped(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if fixed is not None and self.next_index >= len(fixed):
                break
        if tasks:
            await asyncio.gather(*tasks)


async def run(
    pool: Pool, payloads: Sequence[bytes], workload: Workload, progress: Progress | None = None
) -> tuple[list[RequestRecord], float]:
    """Warm up, then measure: the measured records and the run's duration."""
    r = Run(pool, payloads, workload, progress)
    await r.warmup()
    duration = await r.measure()
    return r.records, duration


# ------------------------------------------------------------------------------ counting


async def count_tokens(pool: Pool, endpoint: Endpoint, text: str, timeout: float) -> int:
    """The target's token count of ``text`` sent as this endpoint sends it: ``/tokenize``,
    or when the target has none, ``usage.prompt_tokens`` of a one-token request."""
    body: dict[str, Any] = {"model": endpoint.model, **Prompt(text, 1).body(endpoint.chat)}
    sink = Collect()
    await pool.request(
        endpoint.request(endpoint.base_path + "/tokenize", body), sink, timeout=timeout
    )
    if sink.status == 200:
        answer = sink.json()
        if isinstance(answer, dict):
            if isinstance(answer.get("count"), int):
                return int(answer["count"])
            if isinstance(answer.get("tokens"), list):
                return len(answer["tokens"])
    probe = Collect()
    body.update(max_tokens=1, stream=False)
    await pool.request(endpoint.request(endpoint.path, body), probe, timeout=timeout)
    if probe.status != 200:
        raise RequestFailed(f"http_{probe.status}", error_text(probe))
    usage = probe.json().get("usage") if isinstance(probe.json(), dict) else None
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        raise RequestFailed("no_usage", "the answer has no usage.prompt_tokens")
    return int(usage["prompt_tokens"])


def error_text(sink: Collect) -> str:
    """The error message of an OpenAI-style error answer, bounded."""
    try:
        data = sink.json()
    except orjson.JSONDecodeError:
        return b"".join(sink.parts)[:300].decode("utf-8", "replace")
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message"))[:300]
    return str(data)[:300]
