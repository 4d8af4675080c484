"""The routes table, the multipart reader and the Responses stream relay on their own, then
through the gateway harness (one engine running: ``/tokenize`` without a model goes to it;
an engine without a route answers its 404 in the OpenAI envelope; per-route metrics)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import orjson
import pytest

from studioctl.errors import GatewayError
from studioctl.gateway.context import CHAT, COMPLETIONS, EMBEDDINGS
from studioctl.gateway.multipart import MAX_PREFIX_BYTES, ClientGone, FormUpload, boundary_of
from studioctl.gateway.routes import MULTIPART, POST_ROUTES, ROUTE_NAMES, ROUTES, STREAM
from studioctl.gateway.sse import ResponsesRelay, answer_usage

from .conftest import MODEL, Gateway, GatewayFactory

# -- the table --------------------------------------------------------------------------------


def test_table_indices_and_names() -> None:
    assert [ROUTES[i].path for i in (CHAT, COMPLETIONS, EMBEDDINGS)] == [
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
    ]  # fmt: skip
    assert all(r.index == i and r.upstream_path == r.path.encode() for i, r in enumerate(ROUTES))
    assert set(POST_ROUTES) == {r.path for r in ROUTES}
    # bounded labels: a fixed small set of names, none of them a path
    assert len(ROUTE_NAMES) <= 16 and not any("/" in n for n in ROUTE_NAMES)
    assert {r.path for r in ROUTES if r.kind == MULTIPART} == {
        "/v1/audio/transcriptions", "/v1/audio/translations",
    }  # fmt: skip
    assert {r.name for r in ROUTES if r.kind == STREAM} == {"chat", "completions", "responses"}


# -- multipart --------------------------------------------------------------------------------


def _form(fields: list[tuple[str, bytes]], boundary: bytes = b"XyZ") -> bytes:
    out = b""
    for name, value in fields:
        out += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode()
        out += b'"\r\n\r\n' + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def _receiver(body: bytes, step: int) -> Any:
    pieces = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    return receive


async def _read(upload: FormUpload) -> bytes:
    return b"".join([c async for c in upload.chunks()])


@pytest.mark.parametrize("step", [1, 7, 64, 100_000])
def test_form_model_found_at_any_split(step: int) -> None:
    """The model field is found whatever the chunking, before or after other fields, and
    every byte reaches the engine unchanged."""
    body = _form([("language", b"en"), ("model", b"tiny"), ("file", b"\x00\r\n--" * 50)])

    async def go() -> tuple[str, bytes]:
        upload = FormUpload(_receiver(body, step), b"XyZ", 1 << 20)
        model = await upload.find_model()
        return model, await _read(upload)

    model, sent = asyncio.run(go())
    assert model == "tiny" and sent == body


def test_form_rename_and_limits() -> None:
    body = _form([("model", b"alias"), ("file", b"abc")])

    async def renamed() -> tuple[int, bytes]:
        upload = FormUpload(_receiver(body, 5), b"XyZ", 1 << 20)
        assert await upload.find_model() == "alias"
        delta = upload.rename("engine-name")
        return delta, await _read(upload)

    delta, sent = asyncio.run(renamed())
    assert sent == body.replace(b"alias", b"engine-name") and delta == len(sent) - len(body)

    async def model_late() -> None:
        late = _form([("file", b"x" * (2 * MAX_PREFIX_BYTES)), ("model", b"tiny")])
        await FormUpload(_receiver(late, 65536), b"XyZ", 4 << 20).find_model()

    with pytest.raises(GatewayError) as late:
        asyncio.run(model_late())
    assert late.value.http_status == 400 and "before" in str(late.value)

    async def too_big() -> None:
        upload = FormUpload(_receiver(_form([("model", b"m"), ("file", b"y" * 5000)]), 100),
                            b"XyZ", 1000)  # fmt: skip
        await upload.find_model()
        await _read(upload)

    with pytest.raises(GatewayError) as big:
        asyncio.run(too_big())
    assert big.value.http_status == 413

    async def gone() -> None:
        receive = _receiver(_form([("model", b"m")])[:10], 10)
        receive_msgs = receive

        async def cut() -> dict[str, Any]:
            msg: dict[str, Any] = await receive_msgs()
            msg["more_body"] = True  # the client goes before the end
            return msg

        await FormUpload(cut, b"XyZ", 1000).find_model()

    with pytest.raises(ClientGone):
        asyncio.run(gone())


def test_boundary_of() -> None:
    assert boundary_of(b'multipart/form-data; boundary="a b"') == b"a b"
    assert boundary_of(b"Multipart/Form-Data;charset=x; boundary=zz") == b"zz"
    for bad in (
        None,
        b"application/json",
        b"multipart/form-data",
        b"multipart/form-data; boundary=",
    ):
        with pytest.raises(GatewayError):
            boundary_of(bad)


# -- the Responses relay ----------------------------------------------------------------------


def _event(kind: str, **data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({**data, "type": kind}) + b"\n\n"


@pytest.mark.parametrize("step", [1, 13, 10_000])
def test_responses_relay_verbatim_and_usage(step: int) -> None:
    usage = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}
    stream = (
        _event("response.created", response={"id": "r"})
        + b"".join(_event("response.output_text.delta", delta=f"t{i}") for i in range(3))
        + _event("response.completed", response={"id": "r", "usage": usage})
    )
    relay = ResponsesRelay()
    out = b""
    for i in range(0, len(stream), step):
        out += relay.feed(stream[i : i + step])
    assert out == stream  # nothing held back, nothing changed
    assert relay.ended and relay.usage == usage
    assert (relay.prompt_tokens, relay.completion_tokens) == (5, 3)


def test_responses_relay_cut_short() -> None:
    relay = ResponsesRelay()
    relay.feed(b"".join(_event("response.output_text.delta", delta="x") for _ in range(4)))
    assert not relay.ended and relay.prompt_tokens is None and relay.completion_tokens == 4


def test_answer_usage() -> None:
    assert answer_usage(b'{"usage":{"input_tokens":2,"output_tokens":9}}', 0, True) == (2, 9)
    assert answer_usage(b'{"usage":{"prompt_tokens":4,"total_tokens":4}}', 1, False) == (4, 0)
    assert answer_usage(b'{"usage":{"type":"duration","seconds":3}}', 0, False) == (0, 0)
    assert answer_usage(b"not json", 7, False) == (7, 0)


# -- through the gateway harness --------------------------------------------------------------


def test_tokenize_defaults_to_the_only_model(gateway: Gateway) -> None:
    resp = httpx.post(gateway.url + "/tokenize", json={"prompt": "a b c"},
                      headers=gateway.headers())  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert gateway.engine.tokenize_calls == 1
    row = gateway.usage.rows[-1]
    assert (row.status, row.model, row.prompt_tokens) == (200, MODEL, 0)


def test_engine_404_in_the_envelope(gateway: Gateway) -> None:
    """The harness engine serves no /v1/rerank: aiohttp's plain-text 404 becomes the
    OpenAI envelope; the model-card route answers from the table."""
    resp = httpx.post(gateway.url + "/v1/rerank", json={"model": MODEL, "query": "q",
                      "documents": ["d"]}, headers=gateway.headers())  # fmt: skip
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["code"] == "route_not_served" and "/v1/rerank" in err["message"]
    assert gateway.usage.rows[-1].error_code == "route_not_served"
    text = gateway.lt.call(gateway.metrics.render)
    assert 'studioctl_gateway_route_requests_total{route="rerank",status="404"} 1' in text
    card = httpx.get(gateway.url + f"/v1/models/{MODEL}", headers=gateway.headers())
    assert card.status_code == 200 and card.json()["id"] == MODEL
    wrong = httpx.get(gateway.url + "/v1/rerank", headers=gateway.headers())
    assert wrong.status_code == 405


def test_upload_streams_through_the_harness(make_gateway: GatewayFactory) -> None:
    """An upload to an engine without the route: the engine's 404 comes back while the
    file is still being sent; the gateway stops sending and answers in the envelope."""
    gateway = make_gateway(max_body_bytes=8 << 20)
    data = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB
    url = gateway.url + "/v1/audio/transcriptions"
    resp = httpx.post(url, data={"model": MODEL}, files={"file": ("a.wav", data)},
                      headers=gateway.headers(), timeout=30)  # fmt: skip
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "route_not_served"
    # The answer can reach us before the upload's end is accounted (its rest is drained).
    gateway.wait_for(lambda: bool(gateway.usage.rows))
    row = gateway.usage.rows[-1]
    assert (row.status, row.model) == (404, MODEL)
    assert gateway.lt.call(gateway.limiter.inflight) == 0
