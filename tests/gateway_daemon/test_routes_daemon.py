"""Every engine route through a real daemon and the stand-in engines (vLLM and SGLang
flavours): the Responses API plain and streamed (typed events, usage from
``response.completed``), the rerank / score / pooling / classify family, tokenize and
detokenize, ``GET /v1/models/{id}``, multipart audio uploads (the official ``openai``
client; a 20 MB upload streamed through with the daemon's memory watched; 413 as the body
passes ``max_body_bytes``), and a route the engine does not serve. Each request leaves one
usage row with the engine's token counts and a per-route metrics count."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    base_url,
    create_tenant,
    gateway_daemon,
    launch,
    openai_client,
    request,
    scrape,
    usage_rows,
)
from helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MAX_BODY = 32 * 1024 * 1024
MB = 1024 * 1024


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    env = {"STUDIOCTL_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY)}
    recipes = {
        "alpha": {},
        "sg": {"backend": "sglang"},
        "slow": {"env": {"STANDIN_TOKEN_DELAY_S": "0.05"}},
    }
    with gateway_daemon(recipes, admin_token=ADMIN_TOKEN, env=env) as d:
        for recipe in recipes:
            launch(d, recipe)
        yield d


def tenant(d: Daemon, name: str) -> tuple[str, str]:
    """A fresh tenant (its rows are this test's alone): (id, key)."""
    t, key = create_tenant(d, name, "--rpm", "100000", "--tpm", "10000000")
    return str(t["id"]), key


def rows(d: Daemon, tenant_id: str, n: int) -> list[Any]:
    """The tenant's ``n`` usage rows, oldest first (waiting for the batched writer)."""
    got: list[Any] = []

    def ready() -> bool:
        got[:] = usage_rows(d, tenant=tenant_id)
        assert len(got) <= n, got
        return len(got) == n

    wait_for(ready, timeout=10, what=lambda: f"{n} rows, have {got}")
    return list(reversed(got))


def test_responses_plain_and_streamed(daemon: Daemon) -> None:
    tid, key = tenant(daemon, "resp")
    with openai_client(daemon, key) as client:
        out = client.responses.create(model="alpha", input="one two three", max_output_tokens=4)
        assert out.output_text.split() == ["tok0", "tok1", "tok2", "tok3"]
        assert out.usage is not None
        assert (out.usage.input_tokens, out.usage.output_tokens) == (3, 4)
        kinds: list[str] = []
        deltas: list[str] = []
        completed: Any = None
        for event in client.responses.create(
            model="alpha", input="four five", max_output_tokens=5, stream=True
        ):
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
    # relayed verbatim: the engine's typed events, in order, no chat chunks, no [DONE]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "".join(deltas).split() == [f"tok{i}" for i in range(5)]
    assert completed.usage.input_tokens == 2 and completed.usage.output_tokens == 5
    plain, streamed = rows(daemon, tid, 2)
    assert (plain.status, plain.prompt_tokens, plain.completion_tokens) == (200, 3, 4)
    assert not plain.streamed
    assert (streamed.status, streamed.prompt_tokens, streamed.completion_tokens) == (200, 2, 5)
    assert streamed.streamed and streamed.ttft_ms is not None and not streamed.disconnected


def test_responses_stream_left_by_the_client(daemon: Daemon) -> None:
    """A Responses stream the client leaves: the engine's connection is closed and the row
    counts the deltas seen, marked disconnected."""
    tid, key = tenant(daemon, "resp-gone")
    body = {"model": "slow", "input": "a b", "max_output_tokens": 200, "stream": True}
    seen = 0
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", base_url(daemon) + "/v1/responses", json=body,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:  # fmt: skip
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line == "event: response.output_text.delta":
                seen += 1
                if seen == 3:
                    break
    (row,) = rows(daemon, tid, 1)
    assert row.disconnected and row.streamed and row.status == 200
    assert 3 <= row.completion_tokens < 200, row


def test_transcription_streamed(daemon: Daemon) -> None:
    """A transcription asked to stream (a form field the gateway does not read): relayed as
    the engine streams it, its usage chunk accounted."""
    tid, key = tenant(daemon, "audio-stream")
    data = {"model": "alpha", "stream": "true", "stream_include_usage": "true"}
    resp = httpx.post(base_url(daemon) + "/v1/audio/transcriptions", data=data,
                      files={"file": ("a.wav", b"z" * 5000)},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.endswith("data: [DONE]\n\n")
    (row,) = rows(daemon, tid, 1)
    assert (row.status, row.streamed, row.prompt_tokens, row.completion_tokens) == (
        200, True, 7, 2,
    )  # fmt: skip


def test_responses_output_cap(daemon: Daemon) -> None:
    """max_output_tokens is the tenant's output field on /v1/responses (capped, and set to
    the cap when absent)."""
    _, key = create_tenant(daemon, "resp-cap", "--max-output", "6")
    over = request(daemon, "POST", "/v1/responses", key=key,
                   body={"model": "alpha", "input": "x", "max_output_tokens": 7})  # fmt: skip
    assert_error(over, 400, "output_too_long")
    absent = request(
        daemon, "POST", "/v1/responses", key=key, body={"model": "alpha", "input": "x"}
    )
    assert absent.status_code == 200, absent.text
    assert absent.json()["usage"]["output_tokens"] == 6


def test_responses_tokens_per_minute(daemon: Daemon) -> None:
    """TPM on /v1/responses: the input estimate plus max_output_tokens is reserved, then
    settled with the engine's usage; the next request that does not fit is refused."""
    tid, key = create_tenant(daemon, "resp-tpm", "--tpm", "100", "--rpm", "1000")
    body = {"model": "alpha", "input": "a b c d", "max_output_tokens": 90}
    first = request(daemon, "POST", "/v1/responses", key=key, body=body)
    assert first.status_code == 200, first.text
    second = request(daemon, "POST", "/v1/responses", key=key, body=body)
    assert_error(second, 429, "limit_tpm")
    assert second.headers.get("retry-after", "").isdigit()
    ok, refused = rows(daemon, str(tid["id"]), 2)
    assert (ok.prompt_tokens, ok.completion_tokens) == (4, 90)
    assert (refused.status, refused.error_code) == (429, "limit_tpm")


@pytest.mark.parametrize(
    ("path", "body", "prompt"),
    [
        ("/v1/rerank", {"query": "a b", "documents": ["c", "d e"]}, 7),
        ("/rerank", {"query": "a", "documents": ["b c"]}, 3),
        ("/v2/rerank", {"query": "a", "documents": ["b"]}, 2),
        ("/v1/score", {"text_1": "a b", "text_2": ["c"]}, 3),
        ("/score", {"text_1": "a", "text_2": "b c d"}, 4),
        ("/pooling", {"input": ["a b", "c"]}, 3),
        ("/classify", {"input": "a b c d"}, 4),
    ],
)
def test_pooling_family(daemon: Daemon, path: str, body: dict[str, Any], prompt: int) -> None:
    tid, key = tenant(daemon, "pool" + path.replace("/", "-"))
    before = scrape(daemon)
    resp = request(daemon, "POST", path, key=key, body={"model": "alpha", **body})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == prompt
    (row,) = rows(daemon, tid, 1)
    assert (row.status, row.model, row.prompt_tokens, row.completion_tokens) == (
        200, "alpha", prompt, 0,
    )  # fmt: skip
    route = path.rsplit("/", 1)[1]
    after = scrape(daemon)
    name = "studioctl_gateway_route_requests_total"
    assert (
        after.get(name, route=route, status="200")
        == before.get(name, route=route, status="200") + 1
    )


def test_tokenize_detokenize(daemon: Daemon) -> None:
    tid, key = tenant(daemon, "tok")
    tok = request(daemon, "POST", "/tokenize", key=key,
                  body={"model": "alpha", "prompt": "a b c"})  # fmt: skip
    assert tok.status_code == 200, tok.text
    assert tok.json()["count"] == 3
    detok = request(daemon, "POST", "/detokenize", key=key,
                    body={"model": "sg", "tokens": tok.json()["tokens"]})  # fmt: skip
    assert detok.status_code == 200, detok.text
    assert detok.json()["prompt"].startswith("tok")
    # two models run: without a model the gateway cannot pick one (vLLM would take its own)
    assert_error(
        request(daemon, "POST", "/tokenize", key=key, body={"prompt": "a"}), 400, "invalid_request"
    )
    statuses = [r.status for r in rows(daemon, tid, 3)]
    assert statuses == [200, 200, 400]
    assert_error(request(daemon, "POST", "/tokenize", body={"model": "alpha", "prompt": "a"}),
                 401, "invalid_api_key")  # fmt: skip


def test_sglang_v1_spellings(daemon: Daemon) -> None:
    """SGLang's /v1/tokenize, /v1/detokenize and /v1/classify reach it; a vLLM answers its
    own 404 for them (route_not_served), each accounted."""
    tid, key = tenant(daemon, "v1spell")
    tok = request(daemon, "POST", "/v1/tokenize", key=key, body={"model": "sg", "prompt": "a b"})
    assert tok.status_code == 200 and tok.json()["count"] == 2, tok.text
    detok = request(daemon, "POST", "/v1/detokenize", key=key,
                    body={"model": "sg", "tokens": tok.json()["tokens"]})  # fmt: skip
    assert detok.status_code == 200, detok.text
    cls = request(daemon, "POST", "/v1/classify", key=key, body={"model": "sg", "input": "a"})
    assert cls.status_code == 200, cls.text
    vllm = request(daemon, "POST", "/v1/tokenize", key=key, body={"model": "alpha", "prompt": "a"})
    assert_error(vllm, 404, "route_not_served")
    assert [r.status for r in rows(daemon, tid, 4)] == [200, 200, 200, 404]


def test_model_by_id(daemon: Daemon) -> None:
    _, key = tenant(daemon, "card")
    for model in ("alpha", "sg"):
        card = request(daemon, "GET", f"/v1/models/{model}", key=key)
        assert card.status_code == 200, card.text
        assert card.json()["id"] == model and card.json()["object"] == "model"
        assert card.json()["studioctl"]["state"] == "ready"
    assert_error(request(daemon, "GET", "/v1/models/nope", key=key), 404, "model_not_found")
    assert_error(request(daemon, "GET", "/v1/models/alpha"), 401, "invalid_api_key")


def test_route_not_served(daemon: Daemon) -> None:
    """SGLang serves no /pooling: its own 404, in the OpenAI envelope, accounted."""
    tid, key = tenant(daemon, "notserved")
    resp = request(daemon, "POST", "/pooling", key=key, body={"model": "sg", "input": "a"})
    err = assert_error(resp, 404, "route_not_served")
    assert "/pooling" in err["message"]
    # the connection it came on stays usable (the engine read the body)
    ok = request(daemon, "POST", "/classify", key=key, body={"model": "sg", "input": "a"})
    assert ok.status_code == 200, ok.text
    gone, served = rows(daemon, tid, 2)
    assert (gone.status, gone.error_code) == (404, "route_not_served")
    assert served.status == 200
    # a route the gateway does not know at all: 404 without counting a route label
    assert request(daemon, "POST", "/v1/nowhere", key=key, body={}).status_code == 404
    labels = {
        ls for (n, ls) in scrape(daemon).samples if n == "studioctl_gateway_route_requests_total"
    }
    assert all(dict(ls)["route"] != "/v1/nowhere" for ls in labels)


def test_audio_openai_client(daemon: Daemon) -> None:
    tid, key = tenant(daemon, "audio")
    data = bytes(range(256)) * 400
    with openai_client(daemon, key) as client:
        text = client.audio.transcriptions.create(model="alpha", file=("a.wav", data))
        assert text.text == f"bytes={len(data)} sha256={hashlib.sha256(data).hexdigest()}"
    # translations: the same form (the openai client marks its method deprecated)
    out = httpx.post(base_url(daemon) + "/v1/audio/translations", data={"model": "alpha"},
                     files={"file": ("b.wav", data[:1000])},
                     headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    assert out.status_code == 200, out.text
    assert out.json()["text"].startswith("bytes=1000 ")
    first, second = rows(daemon, tid, 2)
    assert (first.status, first.model, first.prompt_tokens) == (200, "alpha", 0)
    assert second.status == 200


def _form(model_first: bool, file_bytes: int) -> tuple[bytes, str]:
    boundary = "b0undary"
    model = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nalpha\r\n'
    file = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + b"x" * file_bytes
        + b"\r\n"
    )
    parts = [model.encode(), file] if model_first else [file, model.encode()]
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_model_after_the_file(daemon: Daemon) -> None:
    """The model may follow a small file (the prefix is read up to 1 MiB), not a large one."""
    _, key = tenant(daemon, "order")
    auth = {"Authorization": f"Bearer {key}"}
    for size, status in ((1000, 200), (2 * MB, 400)):
        body, ctype = _form(False, size)
        resp = httpx.post(base_url(daemon) + "/v1/audio/transcriptions", content=body,
                          headers={**auth, "Content-Type": ctype}, timeout=30)  # fmt: skip
        assert resp.status_code == status, resp.text
    url = base_url(daemon) + "/v1/audio/transcriptions"
    no_model = {**auth, "Content-Type": "multipart/form-data; boundary=x"}
    missing = httpx.post(url, content=b"--x--\r\n", headers=no_model)
    assert_error(missing, 400, "invalid_request")
    wrong = httpx.post(base_url(daemon) + "/v1/audio/transcriptions", json={"model": "alpha"},
                       headers=auth)  # fmt: skip
    assert_error(wrong, 400, "invalid_request")


def _chunks(total: int, head: bytes, tail: bytes, sha: Any) -> Iterator[bytes]:
    yield head
    block = bytes(range(256)) * 256  # 64 KiB
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        sha.update(piece)
        sent += len(piece)
        yield piece
    yield tail


def test_audio_20mb_streamed_through(daemon: Daemon) -> None:
    """A 20 MB upload (chunked, no Content-Length) reaches the engine intact while the
    daemon's resident memory grows by far less than the file."""
    assert daemon.proc is not None
    _, key = tenant(daemon, "big")
    proc = psutil.Process(daemon.proc.pid)
    boundary = "bigb0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nalpha\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = 20 * MB
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sha = hashlib.sha256()
    try:
        resp = httpx.post(
            base_url(daemon) + "/v1/audio/transcriptions",
            content=_chunks(size, head, tail, sha),
            headers={"Authorization": f"Bearer {key}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=120,
        )  # fmt: skip
    finally:
        done.set()
        sampler.join(5)
    assert resp.status_code == 200, resp.text
    assert resp.json()["text"] == f"bytes={size} sha256={sha.hexdigest()}"
    growth = peak[0] - baseline
    print(f"daemon RSS: baseline {baseline / MB:.1f} MB, peak {peak[0] / MB:.1f} MB, "
          f"growth {growth / MB:.2f} MB for a {size / MB:.0f} MB upload")  # fmt: skip
    assert growth < size // 4, f"RSS grew {growth / MB:.1f} MB for a 20 MB upload"


def test_audio_over_max_body_bytes(daemon: Daemon) -> None:
    """413 as the streamed body passes max_body_bytes (chunked: no length to refuse by),
    and at once when a Content-Length says so."""
    tid, key = tenant(daemon, "huge")
    boundary = "hb"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nalpha\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    ).encode()
    headers = {"Authorization": f"Bearer {key}",
               "Content-Type": f"multipart/form-data; boundary={boundary}"}  # fmt: skip
    url = base_url(daemon) + "/v1/audio/transcriptions"
    try:
        chunks = _chunks(MAX_BODY + MB, head, b"\r\n--hb--\r\n", hashlib.sha256())
        resp = httpx.post(url, content=chunks, headers=headers, timeout=60)
        assert_error(resp, 413, "body_too_large")
    except httpx.HTTPError:
        pass  # the gateway answered and closed while the client was still sending
    # a declared length over the limit: refused before a byte of the body is read
    with socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: {headers['Content-Type']}\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        )
        answer = b""
        while b"}}" not in answer:  # the head, then the JSON error body
            piece = sock.recv(4096)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"body_too_large" in answer
    (row,) = rows(daemon, tid, 1)
    assert (row.status, row.error_code) == (413, "body_too_large")
