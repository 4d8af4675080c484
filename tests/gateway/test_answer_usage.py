"""The usage of a whole engine answer: a long answer has only its usage object parsed
(``tail_usage``), and gives the same numbers as parsing it whole, whatever its text holds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from studioctl.gateway.sse import TAIL_USAGE_FROM, answer_usage, json_loads, tail_usage

# Text a model may write: what the usage object looks like, braces, quotes, backslashes.
TRICKY = 'the "usage": {"prompt_tokens": 1, "completion_tokens": 2} } { \\ "usage":null'


def chat_answer(text: str, usage: Any, *, usage_first: bool = False, logprobs: int = 0) -> bytes:
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    if logprobs:
        entry = {"token": '"usage":', "logprob": -0.5, "bytes": [34], "top_logprobs": []}
        choice["logprobs"] = {"content": [entry] * logprobs}
    head: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m"}
    if usage_first:
        return json.dumps({**head, "usage": usage, "choices": [choice]}).encode()
    body = {**head, "choices": [choice], "usage": usage, "prompt_logprobs": None}
    return json.dumps(body).encode()


USAGE = {"prompt_tokens": 12, "total_tokens": 40, "completion_tokens": 28}
NESTED = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": None}


@pytest.mark.parametrize("usage", [USAGE, NESTED])
def test_a_long_answer_is_read_from_its_usage_object_alone(usage: dict[str, Any]) -> None:
    data = chat_answer(TRICKY * 200, usage, logprobs=50)
    assert len(data) > TAIL_USAGE_FROM
    assert tail_usage(data, "prompt_tokens") == usage
    assert answer_usage(data, 99, False) == (12, 28)


def test_the_same_numbers_as_the_whole_parse_whatever_the_text() -> None:
    for text in (TRICKY * 300, "x" * 5000 + '\\"usage\\":{"prompt_tokens":1}', "}" * 5000):
        for usage in (USAGE, NESTED, None, {"type": "duration", "seconds": 3}):
            for first in (False, True):
                data = chat_answer(text, usage, usage_first=first)
                whole = json_loads(data)["usage"]
                expected = (
                    (whole["prompt_tokens"], whole["completion_tokens"])
                    if isinstance(whole, dict) and "prompt_tokens" in whole
                    else (7, 0)
                )
                assert answer_usage(data, 7, False) == expected, (text[:20], usage, first)


def test_what_the_tail_cannot_read_falls_back_to_the_whole_parse() -> None:
    big = "y" * (TAIL_USAGE_FROM + 10)
    assert tail_usage(chat_answer(big, None), "prompt_tokens") is None  # "usage": null
    no_usage = json.dumps({"choices": [{"text": big}]}).encode()
    assert tail_usage(no_usage, "prompt_tokens") is None
    assert answer_usage(no_usage, 5, False) == (5, 0)
    responses = json.dumps(
        {"output": [{"content": [{"text": big}]}], "usage": {"input_tokens": 3, "output_tokens": 8}}
    ).encode()
    assert tail_usage(responses, "prompt_tokens") is None  # another route's keys
    assert answer_usage(responses, 0, True) == (3, 8)
    cut = chat_answer(big, USAGE)[:-30]  # a truncated answer: no valid usage object
    assert answer_usage(cut, 4, False) == (4, 0)
