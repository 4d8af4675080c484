"""Request ids through the real gateway: one id per request, the client's when it is a valid
token, in the answer's header (errors and streams too), sent to the engine, in the usage row
and at the end of every error message; a hostile value is replaced, never echoed."""

from __future__ import annotations

import re

import httpx
import pytest

from studioctl.gateway.context import MAX_REQUEST_ID, new_request_id, request_id

from .conftest import MODEL, Gateway, GatewayFactory

MESSAGES = [{"role": "user", "content": "hello there engine"}]
OURS = re.compile(r"[0-9a-f]{24}")


def post(gw: Gateway, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json=body,
        headers={**gw.headers(), **headers},
        timeout=10,
    )


def test_a_request_gets_its_own_id_everywhere(gateway: Gateway) -> None:
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert OURS.fullmatch(rid)
    assert gateway.engine.request_ids[-1] == rid  # vLLM takes it for its own request id
    assert gateway.usage.rows[-1].request_id == rid
    again = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert again.headers["x-request-id"] != rid


def test_a_valid_client_id_is_kept_on_a_stream(gateway: Gateway) -> None:
    sent = "trace-2f1c.9a_01"  # a token: letters, digits, - . _
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
        headers={**gateway.headers(), "X-Request-Id": sent},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        assert r.headers["x-request-id"] == sent
        body = b"".join(r.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n")
    assert gateway.engine.request_ids[-1] == sent
    gateway.lt.call(lambda: None)  # the row is written on the loop as the stream ends
    assert gateway.usage.rows[-1].request_id == sent


@pytest.mark.parametrize(
    "hostile",
    [
        "a" * (MAX_REQUEST_ID + 1),  # too long
        "has space",
        "semi;colon",
        'quote"d',
        "caf\xe9",  # not ASCII (control characters never pass the HTTP parser)
        "",
    ],
)
def test_a_hostile_client_id_is_replaced(gateway: Gateway, hostile: str) -> None:
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES},
        headers=[
            ("Authorization", f"Bearer {gateway.key}"),
            ("X-Request-Id", hostile.encode("latin-1")),  # type: ignore[list-item]
        ],
        timeout=10,
    )
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert OURS.fullmatch(rid) and rid != hostile
    assert gateway.engine.request_ids[-1] == rid
    assert gateway.usage.rows[-1].request_id == rid
    if hostile:
        assert hostile not in repr(gateway.usage.rows[-1])  # never stored


def test_errors_name_the_request_id(gateway: Gateway) -> None:
    r = post(gateway, {"model": "no-such-model", "messages": MESSAGES}, **{"X-Request-Id": "e-1"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "e-1"
    assert r.json()["error"]["message"].endswith("(request id e-1)")
    # Refused before the tenant is known (no key): still an id, in the header and message.
    anon = httpx.post(gateway.base_url + "/chat/completions", json={}, timeout=10)
    assert anon.status_code == 401
    rid = anon.headers["x-request-id"]
    assert OURS.fullmatch(rid)
    assert anon.json()["error"]["message"].endswith(f"(request id {rid})")


def test_request_id_rule() -> None:
    assert request_id(b"abc-DEF_1.2~") == b"abc-DEF_1.2~"
    assert request_id(b"x" * MAX_REQUEST_ID) == b"x" * MAX_REQUEST_ID
    for bad in (b"x" * (MAX_REQUEST_ID + 1), b"a b", b"a\r\nb", b"\xff", b"", None):
        assert OURS.fullmatch(request_id(bad).decode())


# -- the routes that are not proxied: every answer names its request too -------------------


def test_get_routes_and_their_errors_carry_an_id(gateway: Gateway) -> None:
    models = httpx.get(gateway.base_url + "/models", headers=gateway.headers(), timeout=10)
    assert models.status_code == 200 and OURS.fullmatch(models.headers["x-request-id"])
    kept = httpx.get(gateway.url + "/livez", headers={"X-Request-Id": "probe-7"}, timeout=10)
    assert kept.headers["x-request-id"] == "probe-7"
    hostile = httpx.get(gateway.url + "/version", headers={"X-Request-Id": "a b"}, timeout=10)
    assert OURS.fullmatch(hostile.headers["x-request-id"])
    missing = httpx.get(gateway.url + "/nowhere", headers={"X-Request-Id": "n-1"}, timeout=10)
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "n-1"
    assert missing.json()["error"]["message"].endswith("(request id n-1)")
    unknown = httpx.get(gateway.base_url + "/models/no-such", headers=gateway.headers(), timeout=10)
    rid = unknown.headers["x-request-id"]
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].endswith(
        f"(request id {rid})"
    )
    # No admin token is configured here: /metrics (not public) answers 503, with an id.
    metrics = httpx.get(gateway.url + "/metrics", timeout=10)
    assert metrics.status_code == 503 and OURS.fullmatch(metrics.headers["x-request-id"])


def test_admin_answers_carry_an_id(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(admin_token="s3cret")
    ok = httpx.get(
        gw.url + "/admin/tenants",
        headers={"X-Admin-Token": "s3cret", "X-Request-Id": "adm-1"},
        timeout=10,
    )
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "adm-1"
    metrics = httpx.get(gw.url + "/metrics", headers={"X-Admin-Token": "s3cret"}, timeout=10)
    assert metrics.status_code == 200 and OURS.fullmatch(metrics.headers["x-request-id"])
    refused = httpx.get(gw.url + "/admin/tenants", timeout=10)
    assert refused.status_code == 401
    rid = refused.headers["x-request-id"]
    assert OURS.fullmatch(rid) and refused.json()["error"]["message"].endswith(
        f"(request id {rid})"
    )


def test_an_upload_keeps_the_client_id(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_body_bytes=1 << 20)
    resp = httpx.post(
        gw.url + "/v1/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("a.wav", b"RIFF" * 1000)},
        headers={**gw.headers(), "X-Request-Id": "upload-9"},
        timeout=30,
    )
    assert resp.headers["x-request-id"] == "upload-9", resp.text
    gw.wait_for(lambda: bool(gw.usage.rows))  # accounted once the upload's rest is drained
    assert gw.usage.rows[-1].request_id == "upload-9"


def test_our_ids_start_with_the_time_and_differ_within_a_millisecond() -> None:
    # Time first: the usage table's request_id index takes them at its right edge.
    first = new_request_id(1_700_000_000.0004)
    assert OURS.fullmatch(first.decode()) and int(first[:12], 16) == 1_700_000_000_000
    same_ms = {new_request_id(1_700_000_000.0004) for _ in range(1000)}
    assert len(same_ms) == 1000  # the random half keeps them apart
    later = [new_request_id(1_700_000_000.0004 + i / 1000) for i in range(1, 50)]
    assert all(a < b for a, b in zip([first, *later], later, strict=False))
