"""The SSE relay: usage injection, stripping, chunk counting, arbitrary upstream splits."""

from __future__ import annotations

from typing import Any

import pytest

from studioctl.gateway.sse import DONE_EVENTS, SSERelay, json_dumps, json_loads, request_usage

from .conftest import StandinEngine


def events(n: int = 5, *, usage: bool, chat: bool = True) -> list[bytes]:
    body: dict[str, Any] = {"model": "tiny"}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return StandinEngine().stream_events(body, prompt=7, n=n, chat=chat)


def relay_all(relay: SSERelay, pieces: list[bytes]) -> bytes:
    out = b"".join(relay.feed(p) for p in pieces)
    return out + relay.flush()


def test_request_usage_adds_stream_options_when_absent() -> None:
    body: dict[str, Any] = {"model": "m", "stream": True}
    assert request_usage(body) is False
    assert body["stream_options"] == {"include_usage": True}


def test_request_usage_keeps_other_stream_options() -> None:
    body: dict[str, Any] = {"stream_options": {"continuous_usage_stats": False}}
    assert request_usage(body) is False
    assert body["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}


def test_request_usage_turns_off_continuous_usage_the_client_would_not_have_seen() -> None:
    body: dict[str, Any] = {"stream_options": {"continuous_usage_stats": True}}
    assert request_usage(body) is False
    assert body["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    asked: dict[str, Any] = {
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}
    }
    assert request_usage(asked) is True
    assert asked["stream_options"]["continuous_usage_stats"] is True


def test_request_usage_reports_a_client_that_asked() -> None:
    body: dict[str, Any] = {"stream_options": {"include_usage": True}}
    assert request_usage(body) is True
    assert body["stream_options"] == {"include_usage": True}


def test_usage_chunk_is_stripped_when_the_client_did_not_ask() -> None:
    relay = SSERelay(strip_usage=True)
    out = relay_all(relay, events(usage=True))
    assert out == b"".join(events(usage=False))  # exactly what plain vLLM sends
    assert relay.usage == {"prompt_tokens": 7, "total_tokens": 12, "completion_tokens": 5}
    assert (relay.prompt_tokens, relay.completion_tokens, relay.chunks) == (7, 5, 5)


def test_usage_chunk_is_kept_when_the_client_asked() -> None:
    relay = SSERelay(strip_usage=False)
    upstream = events(usage=True)
    assert relay_all(relay, upstream) == b"".join(upstream)
    assert relay.completion_tokens == 5


@pytest.mark.parametrize("chat", [True, False])
def test_every_split_of_the_upstream_bytes_gives_the_same_output(chat: bool) -> None:
    data = b"".join(events(3, usage=True, chat=chat))
    expected = b"".join(events(3, usage=False, chat=chat))
    for cut in range(1, len(data)):
        relay = SSERelay(strip_usage=True)
        assert relay_all(relay, [data[:cut], data[cut:]]) == expected, cut
        assert relay.chunks == 3
        assert relay.completion_tokens == 3


def test_byte_by_byte_feed_forwards_each_event_as_soon_as_it_is_complete() -> None:
    upstream = events(2, usage=False)
    data = b"".join(upstream)
    relay = SSERelay(strip_usage=True)
    forwarded = [out for i in range(len(data)) if (out := relay.feed(data[i : i + 1]))]
    assert forwarded == upstream  # one send per event, never an event held back


def test_role_and_finish_chunks_are_not_counted() -> None:
    relay = SSERelay(strip_usage=True)
    role, *tokens, finish, done = events(4, usage=False)
    relay.feed(role)
    assert relay.chunks == 0
    relay.feed(b"".join(tokens))
    assert relay.chunks == 4
    relay.feed(finish + done)
    assert relay.chunks == 4
    assert relay.usage is None
    assert relay.completion_tokens == 4  # no usage chunk: the chunks seen


def test_tool_call_and_reasoning_chunks_count() -> None:
    relay = SSERelay(strip_usage=True)
    tool = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c"}]}}]}
    reason = {"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}
    empty = {"choices": [{"index": 0, "delta": {"content": ""}}]}
    for obj in (tool, reason, empty):
        relay.feed(b"data: " + json_dumps(obj) + b"\n\n")
    assert relay.chunks == 2


def test_escaped_quotes_inside_content_do_not_fool_the_counter() -> None:
    relay = SSERelay(strip_usage=True)
    obj = {"choices": [{"index": 0, "delta": {"content": 'say "content":"x"'}}]}
    relay.feed(b"data: " + json_dumps(obj) + b"\n\n")
    assert relay.chunks == 1


def test_partial_event_at_the_end_is_flushed_as_is() -> None:
    relay = SSERelay(strip_usage=True)
    assert relay.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}') == b""
    assert relay.flush() == b'data: {"choices":[{"delta":{"content":"a"}}]}'
    assert relay.flush() == b""


def test_a_choices_less_event_without_usage_is_passed_through() -> None:
    relay = SSERelay(strip_usage=True)
    event = b'data: {"id":"x","choices":[]}\n\n'
    assert relay.feed(event) == event
    assert relay.usage is None


def test_json_helpers_round_trip() -> None:
    obj = {"a": [1, 2.5, None, True], "é": "ü"}
    assert json_loads(json_dumps(obj)) == obj
    with pytest.raises(ValueError):
        json_loads(b"{nope")


# -- line endings: \n (vLLM, SGLang), \r\n and \r, as SSE allows --------------------------------

# Per framing: the two line ends closing each event in turn (the data line's, the blank line's).
FRAMINGS: dict[str, list[tuple[bytes, bytes]]] = {
    "lf": [(b"\n", b"\n")],
    "crlf": [(b"\r\n", b"\r\n")],
    "cr": [(b"\r", b"\r")],
    "mixed": [
        (b"\r\n", b"\n"),
        (b"\n", b"\r\n"),
        (b"\r", b"\r\n"),
        (b"\n", b"\r"),
        (b"\r\n", b"\r"),
    ],
}


def framed(framing: str, n: int = 3, *, usage: bool) -> list[bytes]:
    """The stand-in's events (each ``data: {…}\\n\\n``) with the framing's line ends."""
    ends = FRAMINGS[framing]
    out = []
    for i, event in enumerate(events(n, usage=usage)):
        assert event.endswith(b"\n\n") and b"\n" not in event[:-2] and b"\r" not in event
        first, second = ends[i % len(ends)]
        out.append(event[:-2] + first + second)
    return out


def splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and cut in two at every position."""
    return [[data], [data[i : i + 1] for i in range(len(data))]] + [
        [data[:i], data[i:]] for i in range(1, len(data))
    ]


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("strip", [True, False], ids=["strip", "keep"])
def test_every_framing_and_split_gives_the_events_and_the_usage(framing: str, strip: bool) -> None:
    upstream = framed(framing, usage=True)
    data = b"".join(upstream)
    usage_event = next(e for e in upstream if b'"usage"' in e)
    expected = b"".join(e for e in upstream if not (strip and e is usage_event))
    for pieces in splits(data):
        relay = SSERelay(strip_usage=strip)
        assert relay_all(relay, pieces) == expected, pieces
        assert relay.usage == {"prompt_tokens": 7, "total_tokens": 10, "completion_tokens": 3}
        assert (relay.prompt_tokens, relay.completion_tokens, relay.chunks) == (7, 3, 3)


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_every_framing_forwards_each_event_as_soon_as_it_is_complete(framing: str) -> None:
    upstream = framed(framing, usage=True)
    relay = SSERelay(strip_usage=True)
    sent = b""
    expected = b""
    for event in upstream:
        for i in range(len(event)):
            sent += relay.feed(event[i : i + 1])
        if b'"usage"' not in event:
            expected += event
        assert sent == expected  # nothing of a complete event is held back
    assert relay.flush() == b""


@pytest.mark.parametrize(
    "pieces",
    [
        [b'data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r', b"\n"],
        [b'data: {"choices":[{"delta":{"content":"a"}}]}\r', b"\n\r\n"],
        [b'data: {"choices":[{"delta":{"content":"a"}}]}\r\n', b"\r", b"\n"],
    ],
)
def test_a_crlf_cut_between_its_cr_and_lf_is_one_line_end(pieces: list[bytes]) -> None:
    relay = SSERelay(strip_usage=True)
    outs = [relay.feed(p) for p in pieces]
    assert b"".join(outs) + relay.flush() == b"".join(pieces)
    assert relay.chunks == 1
    assert outs[-1] == b"\n" or outs[-1].endswith(b"\n")  # the event went out whole


@pytest.mark.parametrize("framing", ["crlf", "cr", "mixed"])
def test_comments_and_multi_line_events_pass_through_any_framing(framing: str) -> None:
    first, second = FRAMINGS[framing][0]
    data = (
        b": keep-alive" + first + second
        + b"event: message" + first + b'data: {"choices":[{"delta":{"content":"a"}}]}'
        + first + second
    )  # fmt: skip
    for pieces in splits(data):
        relay = SSERelay(strip_usage=True)
        assert relay_all(relay, pieces) == data
        assert relay.chunks == 1


@pytest.mark.parametrize("framing", ["lf", "crlf", "cr"])
def test_the_done_event_of_every_uniform_framing_is_recognised(framing: str) -> None:
    relay = SSERelay(strip_usage=True)
    outs = [relay.feed(e) for e in framed(framing, usage=True)]
    assert outs[-1].endswith(DONE_EVENTS)
    assert not any(out.endswith(DONE_EVENTS) for out in outs[:-1])
