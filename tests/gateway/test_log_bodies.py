"""``log_bodies``: the tenant flag and the recipe field that turn it on, and what the gateway
captures (a stream's text assembled from its events, bounded)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from studioctl.errors import UsageError
from studioctl.gateway.bodies import MAX_STREAM_BYTES, BodyCapture, stream_text
from studioctl.recipes.load import parse_recipe_text
from studioctl.tenants import resolve_limits


def chunk(**delta: str) -> bytes:
    event = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def test_the_tenant_flag_is_an_override() -> None:
    assert resolve_limits("standard", {}).log_bodies is False
    assert resolve_limits("standard", {"log_bodies": True}).log_bodies is True
    assert resolve_limits("standard", {"log_bodies": "on"}).log_bodies is True
    assert resolve_limits("standard", {"log_bodies": "false"}).log_bodies is False
    assert "log_bodies" not in resolve_limits("standard", {}).to_dict()
    assert resolve_limits("pro", {"log_bodies": True}).to_dict()["log_bodies"] is True
    with pytest.raises(UsageError, match="'log_bodies' must be true or false, got 'maybe'"):
        resolve_limits("standard", {"log_bodies": "maybe"})


def test_the_recipe_field_leaves_the_hash_alone_when_unset(tmp_path: Path) -> None:
    base = "backend: vllm\nmodel: org/m\n"
    plain = parse_recipe_text(base, path=tmp_path / "r.yaml", check_paths=False)
    off = parse_recipe_text(
        base + "log_bodies: false\n", path=tmp_path / "r.yaml", check_paths=False
    )
    on = parse_recipe_text(base + "log_bodies: true\n", path=tmp_path / "r.yaml", check_paths=False)
    assert plain.log_bodies is False and on.log_bodies is True
    assert plain.content_hash() == off.content_hash() != on.content_hash()


def test_a_stream_is_stored_as_its_text() -> None:
    raw = chunk(role="assistant") + chunk(reasoning_content="hmm ") + chunk(content="tok0 ")
    raw += chunk(content="tok1") + b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n'
    raw += b"data: [DONE]\n\n"
    assert stream_text(raw) == "hmm tok0 tok1"
    completion = b'data: {"choices":[{"index":0,"text":"abc"}]}\n\ndata: [DONE]\n\n'
    assert stream_text(completion) == "abc"
    failed = chunk(content="x") + b'data: {"error":{"message":"boom"}}\n\n'
    assert stream_text(failed).startswith("x\n[error] ") and "boom" in stream_text(failed)
    cap = BodyCapture(b'{"model":"m"}')
    cap.add(raw[:40])
    cap.add(raw[40:])
    assert cap.texts(stream=True) == ('{"model":"m"}', "hmm tok0 tok1")


def test_the_capture_is_bounded() -> None:
    cap = BodyCapture(b"{}")
    cap.add(chunk(content="a"))
    cap.add(b"x" * MAX_STREAM_BYTES)  # past the bound: dropped, and said so
    request, response = cap.texts(stream=True)
    assert request == "{}"
    assert cap.size < MAX_STREAM_BYTES and response is not None
    assert response.startswith("a") and response.endswith("capture limit]")
    assert BodyCapture(b"{}").texts(stream=False) == ("{}", None)
