"""The stand-in engine's routes beyond chat and completions (a mixin of its HTTP handler).

Per flavour, what the real engines serve (see ``studioctl.gateway.routes``): vLLM 0.32
``/v1/responses``, ``/v1/rerank``, ``/rerank``, ``/v2/rerank``, ``/v1/score``, ``/score``,
``/pooling``, ``/classify``, ``/v1/audio/transcriptions``, ``/v1/audio/translations``,
``/detokenize`` (``/tokenize`` is the handler's own) and no ``GET /v1/models/{id}``; SGLang
0.5.23 ``/v1/responses``, ``/v1/rerank``, ``/v1/score``, ``/classify``,
``/v1/audio/transcriptions``, ``/detokenize``, its ``/v1/`` spellings of ``classify``,
``tokenize`` and ``detokenize``, and ``GET /v1/models/{id}``. Any other path
answers the framework's 404 ``{"detail": "Not Found"}``, its body read first (keep-alive).

Shapes and usage as the engines answer them (one token per word, as the handler counts):

- ``/v1/responses``: ``input`` (a string, or messages) and ``max_output_tokens`` (default
  16) → a ``response`` object with ``usage.input_tokens``/``output_tokens``; with
  ``"stream": true`` typed events (``event: response.created`` … ``response.output_text.delta``
  per token … ``response.completed`` carrying the whole response and its usage), no
  ``[DONE]``, as vLLM writes them.
- rerank / score / pooling / classify: results and ``usage.prompt_tokens`` (the words of
  every text the request carries).
- audio: ``multipart/form-data`` (Content-Length or chunked) with ``model`` and ``file``;
  ``{"text": "bytes=N sha256=H"}`` describing the file received, transcriptions with vLLM's
  ``usage: {"type": "duration", "seconds": S}``. The file is hashed as it is read. With
  the form field ``stream=true`` a transcription streams ``transcription.chunk`` events (a
  word each) and, with ``stream_include_usage=true``, a usage chunk (prompt 7) before
  ``[DONE]``.
- ``/detokenize``: ``{"tokens": [...]}`` → ``{"prompt": "tok<id> ..."}``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

VLLM_POST = (
    "/v1/responses", "/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score", "/pooling",
    "/classify", "/v1/audio/transcriptions", "/v1/audio/translations", "/detokenize",
)  # fmt: skip
SGLANG_POST = (
    "/v1/responses", "/v1/rerank", "/v1/score", "/classify", "/v1/classify",
    "/v1/audio/transcriptions", "/detokenize", "/v1/detokenize", "/v1/tokenize",
)  # fmt: skip
_READ = 64 * 1024


def _words(value: Any) -> int:
    """Words of every text in a value (strings, lists, message contents)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return _words(value.get("content")) + _words(value.get("text"))
    return 0


def _texts(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class ExtraRoutes:
    """Mixed into the stand-in's ``Handler``: it provides ``engine``, ``headers``, ``rfile``,
    ``wfile``, ``_json``, ``_read_json``, ``_check_model``, ``_chunk``, ``send_response``,
    ``send_header``, ``end_headers`` and ``bad_request`` (its error class)."""

    engine: Any
    headers: Any
    rfile: Any
    bad_request: Any
    _json: Callable[[int, object], None]
    _read_json: Callable[[], dict[str, Any]]
    _check_model: Callable[..., str]
    _chunk: Callable[[bytes], None]
    _tokenize: Callable[[], None]  # the handler's own /tokenize
    send_response: Callable[..., None]
    send_header: Callable[[str, str], None]
    end_headers: Callable[[], None]

    def extra_post_routes(self) -> dict[str, Callable[[], None]]:
        handlers: dict[str, Callable[[], None]] = {
            "/v1/responses": self._responses,
            "/v1/rerank": self._rerank,
            "/rerank": self._rerank,
            "/v2/rerank": self._rerank,
            "/v1/score": self._score,
            "/score": self._score,
            "/pooling": lambda: self._per_input("pooling"),
            "/classify": lambda: self._per_input("classify"),
            "/v1/classify": lambda: self._per_input("classify"),
            "/v1/audio/transcriptions": lambda: self._audio(transcribe=True),
            "/v1/audio/translations": lambda: self._audio(transcribe=False),
            "/detokenize": self._detokenize,
            "/v1/detokenize": self._detokenize,
            "/v1/tokenize": self._tokenize,
        }
        served = VLLM_POST if self.engine.settings.flavour == "vllm" else SGLANG_POST
        return {path: handlers[path] for path in served}

    # -- bodies

    def body_chunks(self) -> Iterator[bytes]:
        """The request body as it is read (Content-Length or chunked)."""
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, _READ))
                    if not data:
                        return
                    left -= len(data)
                    yield data
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, _READ))
                if not data:
                    return
                left -= len(data)
                yield data

    def drain_body(self) -> None:
        for _ in self.body_chunks():
            pass

    # -- JSON routes

    def _usage(self, prompt: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0}

    def _rerank(self) -> None:
        body = self._read_json()
        model = self._check_model(body, required=False)
        query, docs = body.get("query"), _texts(body.get("documents"))
        if not isinstance(query, str) or not all(isinstance(d, str) for d in docs):
            raise self.bad_request("'query' and 'documents' must be text")
        prompt = _words(query) * len(docs) + _words(docs)
        results = [
            {"index": i, "document": {"text": d}, "relevance_score": 1.0 / (i + 1)}
            for i, d in enumerate(docs)
        ]
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        self._json(
            200, {"id": f"rerank-{uuid.uuid4().hex}", "model": model, "usage": usage,
                  "results": results},
        )  # fmt: skip

    def _score(self) -> None:
        body = self._read_json()
        model = self._check_model(body, required=False)
        first = body.get("text_1", body.get("queries"))
        second = _texts(body.get("text_2", body.get("documents", body.get("items"))))
        prompt = _words(first) * len(second) + _words(second)
        data = [{"index": i, "object": "score", "score": 0.5} for i in range(len(second))]
        self._json(200, self._list(model, data, prompt))

    def _per_input(self, kind: str) -> None:
        body = self._read_json()
        model = self._check_model(body, required=False)
        inputs = _texts(body.get("input", body.get("messages")))
        if kind == "pooling":
            data = [
                {"index": i, "object": "pooling", "data": [0.1, 0.2]} for i in range(len(inputs))
            ]
        else:
            data = [
                {"index": i, "label": "positive", "probs": [0.2, 0.8], "num_classes": 2}
                for i in range(len(inputs))
            ]
        self._json(200, self._list(model, data, _words(inputs)))

    def _list(self, model: str, data: list[dict[str, Any]], prompt: int) -> dict[str, Any]:
        return {
            "id": f"{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": self._usage(prompt),
        }

    def _detokenize(self) -> None:
        body = self._read_json()
        self._check_model(body, required=False)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise self.bad_request("'tokens' must be a list of token ids")
        self._json(200, {"prompt": " ".join(f"tok{t}" for t in tokens)})

    def model_card(self, name: str) -> None:
        """SGLang's ``GET /v1/models/{model}``."""
        s = self.engine.settings
        if name not in s.served_names:
            self._json(
                404,
                {"error": {"message": f"The model '{name}' does not exist",
                           "type": "invalid_request_error", "param": "model",
                           "code": "model_not_found"}},
            )  # fmt: skip
            return
        card = {"id": name, "object": "model", "created": self.engine.created}
        card.update(owned_by="sglang", root=s.model, max_model_len=s.max_model_len)
        self._json(200, card)

    # -- responses

    def _responses(self) -> None:
        body = self._read_json()
        model = self._check_model(body, required=False)
        prompt = _words(body.get("input")) + _words(body.get("instructions"))
        if isinstance(body.get("input"), list):
            prompt += len(body["input"])  # a token per message (its role), as chat counts
        n_out = body.get("max_output_tokens") or 16
        if not isinstance(n_out, int) or n_out < 1:
            raise self.bad_request("max_output_tokens must be a positive integer")
        rid = f"resp_{uuid.uuid4().hex}"
        pieces = [f"tok{i}" if i == 0 else f" tok{i}" for i in range(n_out)]
        usage = {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + n_out,
        }  # fmt: skip
        with self.engine.slot(prompt, prompt + n_out):
            if body.get("stream") is True:
                self._responses_stream(rid, model, pieces, usage)
            else:
                for _ in pieces:
                    self._token_pause()
                self._json(200, _response(rid, model, "".join(pieces), usage, "completed"))

    def _token_pause(self) -> None:
        delay = self.engine.settings.token_delay_s
        if delay:
            time.sleep(delay)
        self.engine.count_generated()

    def _responses_stream(
        self, rid: str, model: str, pieces: list[str], usage: dict[str, Any]
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        seq = 0
        item = f"msg_{uuid.uuid4().hex}"

        def event(kind: str, **fields: Any) -> None:
            nonlocal seq
            data = {**fields, "sequence_number": seq, "type": kind}
            seq += 1
            self._chunk(
                f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
            )

        empty = _response(rid, model, "", None, "in_progress")
        event("response.created", response=empty)
        event("response.in_progress", response=empty)
        message = {"id": item, "type": "message", "role": "assistant", "status": "in_progress",
                   "content": []}  # fmt: skip
        event("response.output_item.added", item=message, output_index=0)
        part = {"type": "output_text", "text": "", "annotations": []}
        event("response.content_part.added", content_index=0, item_id=item, output_index=0,
              part=part)  # fmt: skip
        for piece in pieces:
            self._token_pause()
            event("response.output_text.delta", content_index=0, delta=piece, item_id=item,
                  logprobs=[], output_index=0)  # fmt: skip
        text = "".join(pieces)
        event("response.output_text.done", content_index=0, item_id=item, logprobs=[],
              output_index=0, text=text)  # fmt: skip
        event("response.content_part.done", content_index=0, item_id=item, output_index=0,
              part={**part, "text": text})  # fmt: skip
        done = _response(rid, model, text, usage, "completed")
        event("response.output_item.done", item=done["output"][0], output_index=0)
        event("response.completed", response=done)
        self._chunk(b"")

    # -- audio

    def _audio(self, *, transcribe: bool) -> None:
        fields, size, digest = self._read_form()
        model = self._check_model({"model": fields.get("model")}, required=False)
        del model
        if size < 0:
            raise self.bad_request(
                "a 'file' part is required",
            )
        text = f"bytes={size} sha256={digest}"
        if transcribe and fields.get("stream") == "true":
            self._audio_stream(text, fields.get("stream_include_usage") == "true")
            return
        answer: dict[str, Any] = {"text": text}
        if transcribe:
            answer["usage"] = {"type": "duration", "seconds": max(1, size // 32000)}
        self._json(200, answer)

    def _audio_stream(self, text: str, include_usage: bool) -> None:
        """vLLM's streamed transcription: ``transcription.chunk`` events, one per word, the
        usage chunk (``choices: []``) when asked for, then ``[DONE]``."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        model = self.engine.settings.served_names[0]
        head = {"id": f"trsc-{uuid.uuid4().hex}", "object": "transcription.chunk",
                "created": int(time.time()), "model": model}  # fmt: skip
        words = text.split()
        for word in words:
            choice = {"delta": {"content": word + " "}, "finish_reason": None}
            self._chunk(b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n")
        if include_usage:
            usage = {"prompt_tokens": 7, "completion_tokens": len(words),
                     "total_tokens": 7 + len(words)}  # fmt: skip
            chunk = {**head, "choices": [], "usage": usage}
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _read_form(self) -> tuple[dict[str, str], int, str]:
        """The form's small fields, and the file part's size and SHA-256, read in chunks
        (the file is never held whole)."""
        ctype = self.headers.get("Content-Type") or ""
        boundary = ctype.partition("boundary=")[2].strip().strip('"').encode()
        if not boundary:
            self.drain_body()
            raise self.bad_request("expected multipart/form-data with a boundary")
        delim = b"\r\n--" + boundary
        fields: dict[str, str] = {}
        buf = b"\r\n"  # the first delimiter has no CRLF before it
        name: str | None = None
        value = b""
        sha, size = hashlib.sha256(), -1
        in_headers = True
        for chunk in self.body_chunks():
            buf += chunk
            while True:
                if in_headers:
                    start = buf.find(delim)
                    end = buf.find(b"\r\n\r\n", start + 1) if start >= 0 else -1
                    if end < 0:
                        break
                    head = buf[start + len(delim) : end].decode(errors="replace")
                    name = head.partition('name="')[2].partition('"')[0] or None
                    buf = buf[end + 4 :]
                    in_headers = False
                    if name == "file":
                        size = 0
                    value = b""
                else:
                    stop = buf.find(delim)
                    keep = len(buf) if stop >= 0 else max(0, len(buf) - len(delim))
                    part, buf = (
                        buf[: stop if stop >= 0 else keep],
                        buf[stop if stop >= 0 else keep :],
                    )
                    if name == "file":
                        sha.update(part)
                        size += len(part)
                    else:
                        value += part[:4096]
                    if stop < 0:
                        break
                    if name and name != "file":
                        fields[name] = value.decode(errors="replace")
                    in_headers = True
        return fields, size, sha.hexdigest()


def _response(
    rid: str, model: str, text: str, usage: dict[str, Any] | None, status: str
) -> dict[str, Any]:
    output = []
    if text:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        output.append({"id": f"msg_{rid[5:]}", "type": "message", "role": "assistant",
                       "status": "completed", "content": content})  # fmt: skip
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "model": model,
        "status": status, "output": output, "usage": usage, "parallel_tool_calls": True,
        "tool_choice": "auto", "tools": [], "temperature": 1.0, "top_p": 1.0,
        "incomplete_details": None, "instructions": None, "metadata": None, "error": None,
    }  # fmt: skip
