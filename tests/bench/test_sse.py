"""The stream reader: events split across reads, CRLF, comments, the usage chunk, [DONE]."""

from __future__ import annotations

import json

import pytest

from studioctl.bench.httpconn import RequestFailed
from studioctl.bench.loadgen import StreamSink


def ev(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


ROLE = ev({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
TOK = ev({"choices": [{"delta": {"content": " x"}}]})
USAGE = ev({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"


def test_token_chunks_time_and_usage() -> None:
    s = StreamSink()
    s.headers(200, 0.0)
    s.body(ROLE, 1.0)
    s.body(b": ping\n\n", 1.25)  # a comment is no chunk
    s.body(TOK + TOK[:10], 1.5)  # a whole event and the start of the next
    s.body(TOK[10:], 2.0)
    s.body(USAGE, 3.0)  # the usage chunk does not move the end
    s.body(DONE, 3.5)
    r = s.record(0.5)
    assert r.ok and r.ttft == 0.5 and list(r.gaps) == [0.5, 0.5]
    assert (r.end, r.prompt_tokens, r.output_tokens) == (2.0, 5, 2)


def test_crlf_and_multiline_events() -> None:
    s = StreamSink()
    s.headers(200, 0.0)
    s.body(b"event: x\r\n" + ROLE.replace(b"\n\n", b"\r\n\r\n"), 1.0)
    s.body(USAGE.replace(b"\n\n", b"\r\n\r\n") + DONE, 2.0)
    r = s.record(0.0)
    assert r.ok and r.ttft == 1.0 and r.output_tokens == 2 and len(r.gaps) == 0


def test_failures() -> None:
    s = StreamSink()
    s.headers(503, 0.0)
    s.body(b'{"error": "busy"}', 1.0)
    assert s.record(0.0).error == "http_503"
    s = StreamSink()
    s.headers(200, 0.0)
    s.body(USAGE + DONE, 1.0)
    assert s.record(0.0).error == "no_tokens"
    s = StreamSink()
    s.headers(200, 0.0)
    s.body(TOK + DONE, 1.0)
    assert s.record(0.0).error == "no_usage"
    s = StreamSink()
    s.headers(200, 0.0)
    with pytest.raises(RequestFailed, match="not JSON"):
        s.body(b"data: {oops\n\n", 1.0)
    s = StreamSink()
    s.headers(200, 0.0)
    with pytest.raises(RequestFailed, match="an event above"):
        s.body(b"data: " + b"x" * (2 << 20), 1.0)
