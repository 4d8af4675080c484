"""Helpers of the mailbox tests: a streamed chat the client leaves after its first chunk, and
polls of the gateway's mailbox routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from daemon_helpers import Daemon
from gateway_daemon.helpers import base_url
from helpers import wait_for


def leave_after_first_chunk(
    d: Daemon,
    key: str,
    model: str,
    *,
    max_tokens: int,
    headers: Mapping[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> str:
    """Stream a request, read its first bytes, hang up; the request id answered."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True}
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "tell me a long story"}]
    elif path == "/v1/responses":
        body["input"] = "tell me a long story"
        body["max_output_tokens"] = body.pop("max_tokens")
    else:
        body["prompt"] = "tell me a long story"
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    with (
        httpx.Client(base_url=base_url(d), timeout=30) as c,
        c.stream("POST", path, json=body, headers=h) as r,
    ):
        assert r.status_code == 200, r.read()
        rid = r.headers["x-request-id"]
        first = next(r.iter_bytes())
        assert first.startswith((b"data:", b"event:")), first
    return rid


def mailbox_get(d: Daemon, key: str, rid: str, **params: str) -> httpx.Response:
    with httpx.Client(base_url=base_url(d), timeout=30) as c:
        return c.get(
            f"/v1/mailbox/{rid}", headers={"Authorization": f"Bearer {key}"}, params=params
        )


def wait_record(d: Daemon, key: str, rid: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``GET /v1/mailbox/{rid}`` until the record is there (404 until then)."""

    def look() -> dict[str, Any] | None:
        r = mailbox_get(d, key, rid)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    return wait_for(look, timeout=timeout, what=f"the mailbox record of {rid}")
