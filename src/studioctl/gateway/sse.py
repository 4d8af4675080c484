"""Server-sent-event relay for streamed completions (and the Responses API's typed events).

The gateway always asks the engine for a final usage chunk (``stream_options.include_usage``)
so that streamed requests are accounted exactly. If the client did not ask for it, the relay
removes that chunk again: the client receives the same bytes a plain vLLM would send it.

The relay works on bytes, never on parsed JSON, except for the single usage chunk: it splits
the upstream bytes at event boundaries (a blank line), forwards every complete event as soon
as it is complete (never more than one partial event is held back) and counts completion
chunks with a few ``bytes.count`` passes. Lines may end with ``\n`` (what vLLM and SGLang
send: the fast path), ``\r\n`` or ``\r``, as SSE allows; a stream is taken the slow way
from its first ``\r`` on. The count is what a stream cut short by the client
is accounted with (one chunk ≈ one token for vLLM and SGLang, which send one chunk per decode
step).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# JSON on the hot path: orjson when installed (parse ~5x faster, dumps to bytes), else stdlib.
json_loads: Callable[[bytes | str], Any]
json_dumps: Callable[[Any], bytes]
try:
    import orjson

    json_loads = orjson.loads
    json_dumps = orjson.dumps
except ImportError:  # pragma: no cover - exercised only without orjson
    import json as _stdjson

    json_loads = _stdjson.loads

    def json_dumps(obj: Any) -> bytes:
        return _stdjson.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# A choice that carries generated output: non-empty text/content/reasoning, or a tool call.
# Counted with bytes.count (C speed; a regular expression over every quote of a 20 kB block
# cost more than the rest of the relay): occurrences of the key followed by a string,
# minus those followed by an empty string. Engines write compact JSON; the spaced form is
# counted too.
_OUTPUT_KEYS = tuple(
    (open_ + b'"', open_ + b'""')
    for key in (b"content", b"text", b"reasoning_content", b"reasoning")
    for open_ in (b'"' + key + b'":', b'"' + key + b'": ')
)
_TOOL_CALLS = (b'"tool_calls":[{', b'"tool_calls": [{')
# The usage-only chunk: no choices (vLLM/SGLang send it last, before [DONE]).
_USAGE_MARKS = (b'"choices":[]', b'"choices": []')
_SEP = b"\n\n"
# The end of an event with any line endings: a line's end, then an empty line's. A lone \r
# is a line end only when no \n follows it (\r\n is one line end, not two).
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_CR, _LF = 13, 10
# The stream's last event as each uniform framing ends it: relayed output ending with one of
# these has given the client the whole stream (``out.endswith(DONE_EVENTS)``).
DONE_EVENTS = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n", b"data: [DONE]\r\r")


def request_usage(body: dict[str, Any]) -> bool:
    """Make a streamed request ask the engine for usage; True if the client had asked itself.

    Mutates ``body``: ``stream_options.include_usage`` becomes true (other stream options
    are kept, except ``continuous_usage_stats`` when the client did not ask for usage: it
    would put usage into every chunk, which plain vLLM would not have sent).
    """
    opts = body.get("stream_options")
    if isinstance(opts, dict):
        asked = opts.get("include_usage") is True
        if not asked:
            opts["include_usage"] = True
            if opts.get("continuous_usage_stats"):
                opts["continuous_usage_stats"] = False
        return asked
    body["stream_options"] = {"include_usage": True}
    return False


def _count_output(block: bytes) -> int:
    n = 0
    for with_string, with_empty in _OUTPUT_KEYS:
        k = block.count(with_string)
        if k:
            n += k - block.count(with_empty)
    for mark in _TOOL_CALLS:
        n += block.count(mark)
    return n


class SSERelay:
    """Feeds upstream bytes through; returns what the client should get, counting as it goes."""

    __slots__ = ("_any_eol", "_buf", "_cr_end", "chunks", "strip_usage", "usage")
    ended = False  # chat streams end with [DONE] (see DONE_EVENTS), not a typed event

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.chunks = 0  # completion chunks seen (choices carrying output)
        self.usage: dict[str, Any] | None = None  # the engine's final usage, once seen
        self._buf = b""
        self._any_eol = False  # a \r was seen: events are split the general way
        # The last block ended with a \r that a \n at the start of the next read completes
        # (one \r\n): 1 that \r was forwarded (so is the \n), 2 it was stripped (so is the \n).
        self._cr_end = 0

    def feed(self, data: bytes) -> bytes:
        """Bytes received from upstream → complete events to send to the client now."""
        buf = self._buf
        if buf:
            data = buf + data
        if self._any_eol or _CR in data:  # an int: a bare memchr
            return self._feed_any_eol(data, len(buf))
        end = data.rfind(_SEP)
        if end < 0:
            self._buf = data
            return b""
        end += 2
        if end == len(data):
            self._buf = b""
            block = data
        else:
            self._buf = data[end:]
            block = data[:end]
        self.chunks += _count_output(block)
        for mark in _USAGE_MARKS:
            pos = block.find(mark)
            if pos >= 0:
                return self._take_usage(block, pos)
        return block

    def _feed_any_eol(self, data: bytes, held: int) -> bytes:
        """:meth:`feed` for a stream with CR in its line ends (CRLF-framed, or CR alone);
        ``data`` starts with the ``held`` bytes of a partial event kept from before."""
        self._any_eol = True
        head = b""
        if self._cr_end and data:
            if data[0] == _LF:  # the second half of the \r\n the last block ended with
                if self._cr_end == 1:
                    head = b"\n"
                data = data[1:]
            self._cr_end = 0
        end = -1
        # The held bytes end no event: only their last two can start the end of one now.
        for m in _EVENT_END.finditer(data, max(held - 2, 0)):
            end = m.end()
        if end < 0:
            self._buf = data
            return head
        block, self._buf = data[:end], data[end:]
        if end == len(data) and data[-1] == _CR:
            self._cr_end = 1
        self.chunks += _count_output(block)
        for mark in _USAGE_MARKS:
            pos = block.find(mark)
            if pos >= 0:
                return head + self._take_usage_any_eol(block, pos)
        return head + block

    def _take_usage_any_eol(self, block: bytes, pos: int) -> bytes:
        start = 0
        for m in _EVENT_END.finditer(block, 0, pos):
            start = m.end()
        found = _EVENT_END.search(block, pos)
        stop = found.end() if found is not None else len(block)
        out = self._usage_event(block, start, stop)
        if out is not block and stop == len(block) and self._cr_end:
            self._cr_end = 2  # the stripped event's \r\n is cut in two: drop the \n too
        return out

    def flush(self) -> bytes:
        """At the end of the upstream stream: whatever partial event is left (normally none)."""
        rest, self._buf = self._buf, b""
        return rest

    def _take_usage(self, block: bytes, pos: int) -> bytes:
        start = block.rfind(_SEP, 0, pos)
        start = 0 if start < 0 else start + 2
        stop = block.find(_SEP, pos) + 2
        return self._usage_event(block, start, stop)

    def _usage_event(self, block: bytes, start: int, stop: int) -> bytes:
        """Record the usage of the event ``block[start:stop]``; the block without that event
        if the client did not ask for usage, else ``block`` itself."""
        payload = block[start:stop].strip()
        if payload.startswith(b"data:"):
            try:
                obj = json_loads(payload[5:])
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                self.usage = obj["usage"]
                if self.strip_usage:
                    return block[:start] + block[stop:]
        return block

    @property
    def prompt_tokens(self) -> int | None:
        if self.usage is None:
            return None
        value = self.usage.get("prompt_tokens")
        return value if isinstance(value, int) else None

    @property
    def completion_tokens(self) -> int:
        """The engine's count when its usage chunk arrived, else the chunks seen."""
        if self.usage is not None:
            value = self.usage.get("completion_tokens")
            if isinstance(value, int):
                return value
        return self.chunks


# -- the Responses API: typed events, usage in the terminal event ---------------------------

# The events that end a Responses stream; each carries the whole response with its usage.
_TERMINAL = (b"event: response.completed", b"event: response.incomplete", b"event: response.failed")
# Output deltas (text, reasoning, tool arguments): what a stream cut short is counted by.
_DELTA_MARK = b'.delta"'
# Bytes of a terminal event kept to read its usage (it holds the whole output once more).
MAX_TERMINAL_EVENT = 8 << 20


class ResponsesRelay:
    """A ``/v1/responses`` stream relayed verbatim (typed ``event:`` lines, no ``[DONE]``);
    the usage is read from the terminal event's ``response.usage`` (``input_tokens``,
    ``output_tokens``). Same interface as :class:`SSERelay` for the relay and accounting."""

    __slots__ = ("_capture", "_tail", "chunks", "ended", "events", "usage")

    def __init__(self) -> None:
        self.chunks = 0  # output delta events seen
        self.events = 0  # events relayed: the next one's sequence_number
        self.usage: dict[str, Any] | None = None
        self.ended = False  # the terminal event went through
        self._tail = b""  # the last bytes, where a terminal event's name may start
        self._capture: bytes | None = None  # the terminal event so far, once it started

    def feed(self, data: bytes) -> bytes:
        self.chunks += data.count(_DELTA_MARK)
        self.events += data.count(b"event:")
        if self._capture is not None:
            self._take(self._capture + data)
            return data
        seen = self._tail + data
        for mark in _TERMINAL:
            pos = seen.find(mark)
            if pos >= 0:
                self._take(seen[pos:])
                return data
        self._tail = seen[-64:]
        return data

    def _take(self, event: bytes) -> None:
        """Hold the terminal event until it is complete, then read its usage."""
        end = event.find(b"\n\n")
        if end < 0:
            end = event.find(b"\r\n\r\n")
        if end < 0:
            self._capture = event if len(event) <= MAX_TERMINAL_EVENT else None
            if self._capture is None:
                self.ended = True  # too large to read: the deltas stand
            return
        self._capture = None
        self.ended = True
        for line in event[:end].splitlines():
            if line.startswith(b"data:"):
                try:
                    obj = json_loads(line[5:])
                except ValueError:
                    return
                response = obj.get("response") if isinstance(obj, dict) else None
                usage = response.get("usage") if isinstance(response, dict) else None
                if isinstance(usage, dict):
                    self.usage = usage

    def flush(self) -> bytes:
        return b""

    @property
    def prompt_tokens(self) -> int | None:
        value = self.usage.get("input_tokens") if self.usage is not None else None
        return value if isinstance(value, int) else None

    @property
    def completion_tokens(self) -> int:
        value = self.usage.get("output_tokens") if self.usage is not None else None
        return value if isinstance(value, int) else self.chunks


def responses_error_event(error: dict[str, Any], sequence_number: int) -> bytes:
    """How a ``/v1/responses`` stream ends with an error: the Responses API's typed
    ``error`` event (such a stream has no ``[DONE]``)."""
    event = {
        "type": "error",
        "code": error.get("code"),
        "message": error.get("message"),
        "param": error.get("param"),
        "sequence_number": sequence_number,
    }
    return b"event: error\ndata: " + json_dumps(event) + b"\n\n"


# Answers above this size have their usage object parsed alone (:func:`tail_usage`).
TAIL_USAGE_FROM = 4096
_USAGE_KEY = b'"usage":'


def tail_usage(data: bytes, prompt_key: str) -> dict[str, Any] | None:
    """The answer's last ``"usage": {...}`` object parsed alone, when it holds an integer
    ``prompt_key``; else None (then the whole answer is parsed).

    Engines put ``usage`` after the choices, near the end: a long answer (a long
    completion, logprobs) is not parsed whole for two numbers. Only the engine's own
    JSON has a bare ``"usage":`` (a model's text is an escaped string), and the object's
    end is the first ``}`` that closes a valid object (its values are numbers, null and
    small objects of numbers)."""
    at = data.rfind(_USAGE_KEY)
    if at <= 0 or data[at - 1] == 0x5C:  # a backslash: inside a string after all
        return None
    start = at + len(_USAGE_KEY)
    while data[start : start + 1] in (b" ", b"\n", b"\t", b"\r"):
        start += 1
    if data[start : start + 1] != b"{":
        return None
    end = start
    for _ in range(4):  # the object itself, or up to three small ones nested in it
        end = data.find(b"}", end + 1)
        if end < 0:
            return None
        try:
            usage = json_loads(data[start : end + 1])
        except ValueError:
            continue
        if isinstance(usage, dict) and isinstance(usage.get(prompt_key), int):
            return usage
        return None
    return None


def answer_usage(data: bytes, prompt: int, responses: bool) -> tuple[int, int]:
    """(prompt, completion) tokens from an engine's JSON answer (prompt: ours if absent):
    ``usage.prompt_tokens``/``completion_tokens``, or for the Responses API
    ``usage.input_tokens``/``output_tokens``."""
    p_key, c_key = ("input_tokens", "output_tokens") if responses else _CHAT_KEYS
    usage = tail_usage(data, p_key) if len(data) > TAIL_USAGE_FROM else None
    if usage is None:
        try:
            usage = json_loads(data).get("usage")
        except (ValueError, AttributeError):
            return prompt, 0
        if not isinstance(usage, dict):
            return prompt, 0
    p, c = usage.get(p_key), usage.get(c_key)
    return (p if isinstance(p, int) else prompt), (c if isinstance(c, int) else 0)


_CHAT_KEYS = ("prompt_tokens", "completion_tokens")
