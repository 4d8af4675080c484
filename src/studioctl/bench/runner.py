"""One benchmark, start to end, on its own event loop: prompts, a first request that must
succeed, the warm-up, the measured run, the summary.

uvloop runs the loop when it is installed (it is a dependency): it is what lets one core
drive thousands of requests per second (``benchmarks/bench_ceiling.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from studioctl.bench import loadgen, prompts
from studioctl.bench.httpconn import Collect, Pool, RequestFailed
from studioctl.bench.loadgen import Endpoint, Progress, Workload
from studioctl.bench.metrics import RequestRecord, Summary, summarize
from studioctl.errors import EngineFailed, UsageError

T = TypeVar("T")
_COUNT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Inputs:
    """What the requests carry: synthetic prompts (``prompt_tokens``) or a dataset."""

    output_tokens: int = 128
    prompt_tokens: int | None = None
    dataset: Path | None = None


@dataclass(frozen=True)
class Outcome:
    records: list[RequestRecord]
    duration_s: float
    summary: Summary
    variants: int


def endpoint_from_url(url: str, model: str, api_key: str | None, *, chat: bool) -> Endpoint:
    """An Endpoint for a base URL (``http://host:port`` with an optional path before /v1)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {url[:200]!r}: expected http://HOST:PORT or https://HOST:PORT")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"--url {url[:200]!r}: bad port") from None
    base = parts.path.rstrip("/").removesuffix("/v1")
    host = parts.hostname
    return Endpoint(host, port, parts.scheme == "https", base, model, api_key, chat)


def run_loop(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh uvloop (plain asyncio when uvloop is missing)."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(factory())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(factory())


async def build_prompts(
    pool: Pool, endpoint: Endpoint, inputs: Inputs, variants: int, seed: int
) -> list[prompts.Prompt]:
    if inputs.dataset is not None:
        return prompts.load_dataset(inputs.dataset, inputs.output_tokens)
    if inputs.prompt_tokens is None:
        raise UsageError("give --prompt-tokens P or --dataset FILE.jsonl")

    async def count(text: str) -> int:
        try:
            return await loadgen.count_tokens(pool, endpoint, text, _COUNT_TIMEOUT_S)
        except RequestFailed as exc:
            raise EngineFailed(f"counting a prompt's tokens failed: {exc}") from None

    return await prompts.synthetic(
        count, inputs.prompt_tokens, inputs.output_tokens, variants, seed
    )


async def first_request(pool: Pool, data: bytes, timeout: float | None) -> None:
    """One request before anything is measured: a target that refuses it (a wrong model, a
    missing key) stops the benchmark with the target's own words."""
    sink = Collect()
    try:
        await pool.request(data, sink, timeout=timeout)
    except RequestFailed as exc:
        raise EngineFailed(f"the first request failed: {exc}") from None
    if sink.status != 200:
        raise EngineFailed(
            f"the first request was answered HTTP {sink.status}: {loadgen.error_text(sink)}"
        )


async def _bench(
    endpoint: Endpoint,
    workload: Workload,
    inputs: Inputs,
    slo: Mapping[str, float] | None,
    progress: Progress,
) -> Outcome:
    pool = Pool(endpoint.host, endpoint.port, tls=endpoint.tls, limit=workload.concurrency)
    try:
        wanted = (workload.requests or prompts.MAX_VARIANTS) + workload.warmup
        variants = min(prompts.MAX_VARIANTS, wanted)
        chosen = await build_prompts(pool, endpoint, inputs, variants, workload.seed)
        payloads = [loadgen.payload(endpoint, p, workload) for p in chosen]
        await first_request(pool, payloads[0], workload.timeout_s)
        records, duration = await loadgen.run(pool, payloads, workload, progress)
    finally:
        pool.close()
    return Outcome(records, duration, summarize(records, duration, slo), len(payloads))


def bench(
    endpoint: Endpoint,
    workload: Workload,
    inputs: Inputs,
    slo: Mapping[str, float] | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Run one benchmark against ``endpoint`` (blocking: its own event loop)."""
    if slo and not workload.stream and set(slo) & {"ttft", "tpot"}:
        raise UsageError("--slo on ttft or tpot needs --stream (no token times without it)")
    live = progress or Progress()
    return run_loop(lambda: _bench(endpoint, workload, inputs, slo, live))
