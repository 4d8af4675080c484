"""Prompt token counts for the context cap and the TPM reservation.

Exact counts come from the engine's own tokenizer: vLLM's ``POST /tokenize`` (``{"model",
"messages"}`` or ``{"model", "prompt"}`` → ``{"count"}``), which applies the model's chat
template exactly as the completion will. That is an extra round trip to the engine, so the
gateway asks for it only when it matters:

- :meth:`PromptCounter.upper_bound` is a cheap bound that is never below the engine's count:
  the UTF-8 size of all prompt text plus a fixed allowance for the chat template
  (``TEMPLATE_ALLOWANCE`` + ``PER_MESSAGE_ALLOWANCE`` per message). It holds because every
  token of a byte-level BPE or byte-fallback tokenizer covers at least one byte. Prompts with
  images or audio have no such bound.
- :meth:`PromptCounter.measure` returns the estimate when the bound already fits under the
  cap (no request that the exact count would refuse can pass), else the exact count.
- The estimate (:meth:`PromptCounter.estimate`) is characters / 4 plus 4 per message. It is
  what an engine without ``/tokenize`` is judged by, and what the TPM bucket reserves before
  it is reconciled with the engine's reported usage.

The engine's tokenizer is work done for a client before anything is generated, so it is kept
small: the proxy counts only after the tenant's concurrency and RPM admitted the request; a
request has at most ``MAX_PROMPT_ITEMS`` messages or prompts (:func:`check_prompt_items`); a
chat is one ``/tokenize`` call; a list of prompts (one call each: vLLM tokenizes one prompt
per call) is counted largest first, and counting stops as soon as the answer is known —
the counted part alone exceeds the cap, or it plus the byte bound of the rest fits.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from studioctl.errors import GatewayError
from studioctl.gateway.routing import Upstream
from studioctl.gateway.sse import json_dumps, json_loads
from studioctl.gateway.upstream import UpstreamPool

CHARS_PER_TOKEN = 4
PER_MESSAGE_ESTIMATE = 4
# Chat templates add role markers, default system prompts and tool instructions around the
# messages; these allowances bound that overhead for the upper bound.
TEMPLATE_ALLOWANCE = 512
PER_MESSAGE_ALLOWANCE = 16
# Messages of a chat, or prompts/inputs of a completion/embedding, one request may carry
# (OpenAI's own bound on an embeddings input list).
MAX_PROMPT_ITEMS = 2048
# The body fields a count reads (the rest of a body may be dropped before counting).
PROMPT_FIELDS = (
    "model",
    "messages",
    "tools",
    "chat_template",
    "chat_template_kwargs",
    "prompt",
    "input",
)


class PromptCounter:
    """Counts prompt tokens, with the engine's tokenizer when the count decides anything."""

    def __init__(
        self, pool: UpstreamPool, *, timeout_s: float = 10.0, max_calls: int = 128
    ) -> None:
        """``pool``: keep-alive connections toward the engines, of the client the proxied
        requests use but a pool of its own (the exact counts of disconnected streams would
        otherwise take the idle connections new requests reuse, and each stream left closes
        its connection: twice the connections opened under a wave of aborted streams);
        ``timeout_s``: for one ``/tokenize`` call, connection included; ``max_calls``:
        calls at once (each holds a connection; the exact counts of disconnected streams
        run besides the requests in flight, and a burst of connections overflows an
        engine's accept queue)."""
        self._pool = pool
        self._timeout_s = timeout_s
        self._calls = asyncio.Semaphore(max_calls)
        self._no_tokenizer: set[str] = set()  # instance ids whose engine has no /tokenize

    def close(self) -> None:
        """Close the idle connections (the gateway is stopping)."""
        self._pool.close()

    async def measure(
        self, upstream: Upstream, body: dict[str, Any], limit: int
    ) -> tuple[int, bool]:
        """``(tokens, exact)``: the prompt's token count as far as ``limit`` needs it.

        When :meth:`upper_bound` fits under ``limit`` the cheap estimate is returned with
        ``exact=False`` (the engine's usage later corrects the accounting); otherwise the
        engine counts (``exact=True``; also when it has no tokenizer and the estimate is all
        there is). A list of prompts is counted only as far as the answer needs: ``exact`` is
        False when counting stopped early, and then ``tokens > limit`` means "at least".
        """
        bound = upper_bound(body)
        if bound is not None and bound <= limit:
            return estimate(body), False
        return await self._count(upstream, body, limit)

    async def count(self, upstream: Upstream, body: dict[str, Any]) -> int:
        """The exact prompt tokens per the engine (estimate if it has no tokenizer)."""
        tokens, _ = await self._count(upstream, body, None)
        return tokens

    def single_call(self, body: dict[str, Any]) -> bool:
        """Whether :meth:`count` costs at most one ``/tokenize`` call for ``body``."""
        if "messages" in body:
            return True
        return sum(isinstance(p, str) for p in _as_prompt_list(_prompts(body))) <= 1

    async def _count(
        self, upstream: Upstream, body: dict[str, Any], limit: int | None
    ) -> tuple[int, bool]:
        if upstream.instance_id in self._no_tokenizer:
            return estimate(body), True
        model = body.get("model")
        if "messages" in body:
            req: dict[str, Any] = {
                "model": model,
                "messages": body["messages"],
                "add_generation_prompt": True,
            }
            for key in ("tools", "chat_template", "chat_template_kwargs"):
                if key in body:
                    req[key] = body[key]
            n = await self._tokenize(upstream, req)
            return (estimate(body) if n is None else n), True
        total = 0
        texts: list[str] = []
        for item in _as_prompt_list(_prompts(body)):
            if isinstance(item, str):
                texts.append(item)
            else:  # already token ids
                total += len(item)
        bounds = [len(t.encode()) + 2 for t in texts]  # as upper_bound: +2 for specials
        rest = sum(bounds)  # bound of the prompts not counted yet
        rest_estimate = sum(_estimate_text(t) for t in texts)
        # Largest first: each call removes the most uncertainty.
        for i in sorted(range(len(texts)), key=bounds.__getitem__, reverse=True):
            if limit is not None:
                if total > limit:
                    return total, False  # refused whatever the rest counts
                if total + rest <= limit:  # accepted whatever the rest counts
                    return total + rest_estimate, False
            n = await self._tokenize(upstream, {"model": model, "prompt": texts[i]})
            if n is None:  # no tokenizer, or it failed: no more calls, the estimate stands
                return total + rest_estimate, True
            total += n
            rest -= bounds[i]
            rest_estimate -= _estimate_text(texts[i])
        return total, True

    def estimate(self, body: dict[str, Any]) -> int:
        return estimate(body)

    def upper_bound(self, body: dict[str, Any]) -> int | None:
        return upper_bound(body)

    async def _tokenize(self, upstream: Upstream, req: dict[str, Any]) -> int | None:
        """The engine's count for one /tokenize request, or None when it gave none."""
        pool = self._pool
        timeout = self._timeout_s
        try:
            # The pool's timeout is per read; the call as a whole (the wait for a turn
            # included) gets ``timeout_s`` too.
            async with asyncio.timeout(timeout), self._calls:
                conn = await pool.request(upstream, b"/tokenize", json_dumps(req), timeout)
                raw = await conn.read_all(timeout)
        except (TimeoutError, OSError):  # the pool's errors are all OSErrors
            return None
        status = conn.status
        pool.release(conn)
        if status in (404, 405):
            self._no_tokenizer.add(upstream.instance_id)
            return None
        if status != 200:
            return None
        try:
            data = json_loads(raw)
        except ValueError:
            return None
        count = data.get("count") if isinstance(data, dict) else None
        if isinstance(count, int):
            return count
        tokens = data.get("tokens") if isinstance(data, dict) else None
        return len(tokens) if isinstance(tokens, list) else None


def check_prompt_items(body: dict[str, Any]) -> None:
    """400 when a request carries more than ``MAX_PROMPT_ITEMS`` messages or prompts."""
    messages = body.get("messages")
    if isinstance(messages, list):
        n, param = len(messages), "messages"
    else:
        param = "prompt" if "prompt" in body else "input"
        value = body.get(param)
        n = len(_as_prompt_list(value)) if isinstance(value, list) else 1
    if n > MAX_PROMPT_ITEMS:
        raise GatewayError(
            400,
            "invalid_request",
            f"{param!r} has {n} items; at most {MAX_PROMPT_ITEMS} are accepted per request",
            param=param,
        )


def estimate(body: dict[str, Any]) -> int:
    """Documented estimate: ceil(characters / 4) + 4 per chat message."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_message_chars(m) for m in messages)
        chars += _json_len(body.get("tools"))
        return math.ceil(chars / CHARS_PER_TOKEN) + PER_MESSAGE_ESTIMATE * len(messages)
    total = 0
    for item in _as_prompt_list(_prompts(body)):
        total += _estimate_text(item) if isinstance(item, str) else len(item)
    return total


def upper_bound(body: dict[str, Any]) -> int | None:
    """A count never below the engine's, or None when there is none (images, audio…)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        size = 0
        for m in messages:
            b = _message_bytes(m)
            if b is None:
                return None
            size += b
        if "tools" in body:
            size += _json_len(body["tools"]) * 2  # tool schemas are rendered with decoration
        return size + TEMPLATE_ALLOWANCE + PER_MESSAGE_ALLOWANCE * len(messages)
    total = 0
    for item in _as_prompt_list(_prompts(body)):
        # +2 per prompt: BOS/EOS specials and a sentencepiece dummy prefix
        total += (len(item.encode()) if isinstance(item, str) else len(item)) + 2
    return total


def _prompts(body: dict[str, Any]) -> Any:
    return body.get("prompt", body.get("input"))


def _estimate_text(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _as_prompt_list(value: Any) -> list[str | list[Any]]:
    """A completion/embedding prompt in any of its shapes → a list of strings / token lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            return []
        if all(isinstance(v, int) for v in value):
            return [value]
        return [v if isinstance(v, str | list) else str(v) for v in value]
    return []


def _message_chars(message: Any) -> int:
    if not isinstance(message, dict):
        return len(str(message))
    content = message.get("content")
    n = 0
    if isinstance(content, str):
        n = len(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                n += len(part["text"])
    for key in ("name", "role"):
        value = message.get(key)
        if isinstance(value, str):
            n += len(value)
    if "tool_calls" in message:
        n += _json_len(message["tool_calls"])
    return n


def _message_bytes(message: Any) -> int | None:
    if not isinstance(message, dict):
        return None
    n = 0
    content = message.get("content")
    if isinstance(content, str):
        n += len(content.encode())
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or part.get("type", "text") != "text":
                return None  # images, audio, files: no byte bound
            text = part.get("text")
            if isinstance(text, str):
                n += len(text.encode())
    elif content is not None:
        return None
    for key in ("name", "role"):
        value = message.get(key)
        if isinstance(value, str):
            n += len(value.encode())
    for key in ("tool_calls", "reasoning_content"):
        if key in message:
            n += _json_len(message[key])
    return n


def _json_len(value: Any) -> int:
    if value is None:
        return 0
    return len(json_dumps(value))
