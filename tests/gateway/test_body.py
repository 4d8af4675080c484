"""The request body's own checks (body.py): nesting, model name, n, quoting client values."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from studioctl.errors import GatewayError
from studioctl.gateway.body import (
    MAX_JSON_DEPTH,
    MAX_MODEL_CHARS,
    MAX_N,
    check_n,
    model_error,
    parse_body,
    peek_model,
    quote,
)


def deep(levels: int) -> bytes:
    """A JSON object whose nesting is ``levels`` deep in all (the object is the first)."""
    inner = levels - 1
    return b'{"model":"m","x":' + b"[" * inner + b"]" * inner + b"}"


def refused(raw: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_body(raw)
    assert (info.value.http_status, info.value.code) == (400, "invalid_json")
    return info.value


def test_nesting_up_to_the_bound_parses_and_can_be_written_again() -> None:
    body = parse_body(deep(MAX_JSON_DEPTH))
    assert orjson.loads(orjson.dumps(body)) == body


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 1024])
def test_nesting_past_the_bound_is_invalid_json(levels: int) -> None:
    assert str(MAX_JSON_DEPTH) in refused(deep(levels)).message


def test_deeper_than_the_reader_allows_is_invalid_json_too() -> None:
    assert "not valid JSON" in refused(deep(2000)).message


def test_many_brackets_but_shallow_is_fine() -> None:
    wide = {"model": "m", "messages": [{"role": "user", "content": "{[" * 500}] * 300}
    assert parse_body(orjson.dumps(wide)) == wide


@pytest.mark.parametrize("raw", [b"", b"[]", b"1", b'"s"', b"{", b'{"a":1,}'])
def test_not_an_object_is_invalid_json(raw: bytes) -> None:
    refused(raw)


@pytest.mark.parametrize(
    ("model", "ok"),
    [
        ("m", True),
        ("m" * MAX_MODEL_CHARS, True),
        ("m" * (MAX_MODEL_CHARS + 1), False),
        ("", False),
        (None, False),
        (7, False),
        (["m"], False),
    ],
)
def test_model_names_are_bounded(model: Any, ok: bool) -> None:
    body = {"model": model}
    assert peek_model(body) == (model if ok else None)
    if not ok:
        err = model_error(body)
        assert (err.http_status, err.code, err.to_dict()["param"]) == (
            400,
            "invalid_request",
            "model",
        )
        assert len(err.message) < 200


def test_a_long_model_name_is_refused_naming_the_bound() -> None:
    err = model_error({"model": "m" * 10_000})
    assert str(MAX_MODEL_CHARS) in err.message and "10000" in err.message


@pytest.mark.parametrize("n", [1, 2, MAX_N])
def test_n_within_the_bound(n: int) -> None:
    assert check_n({"n": n}) == n


def test_n_absent_is_one() -> None:
    assert check_n({}) == 1 and check_n({"n": None}) == 1


@pytest.mark.parametrize("n", [0, -5, MAX_N + 1, 2**63, True, 2.0, "3", [1], {"a": 1}])
def test_n_outside_the_bound_is_refused(n: Any) -> None:
    with pytest.raises(GatewayError) as info:
        check_n({"n": n})
    assert info.value.code == "invalid_request" and str(MAX_N) in info.value.message


@pytest.mark.parametrize(
    "value", ["x" * 100_000, list(range(100_000)), {"k" * 100_000: 1}, 10**18, 1.5, None]
)
def test_quoted_client_values_are_short(value: Any) -> None:
    assert len(quote(value)) <= 64
