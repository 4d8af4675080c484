"""``X-API-Key: KEY`` (``gateway.api_key_header``) as an alternative to ``Authorization:
Bearer KEY``, as LMServ's clients send it: the Authenticator on its own, then the gateway
harness with httpx and the official openai client (``default_headers``)."""

from __future__ import annotations

import httpx
import openai
import pytest

from studioctl.errors import GatewayError
from studioctl.gateway.auth import Authenticator

from .conftest import MODEL, Gateway, GatewayFactory
from .test_keys_auth import Lookup, bearer

MESSAGES = [{"role": "user", "content": "hello there"}]


def refused(auth: Authenticator, header: bytes | None, api_key: bytes | None) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        auth.authenticate(header, api_key)
    return info.value


def test_the_key_header_alone_or_with_the_same_bearer_key() -> None:
    lookup = Lookup()
    key = lookup.add("acme")
    auth = Authenticator(lookup)
    assert auth.key_header == b"x-api-key"
    assert auth.authenticate(None, key.encode()).name == "acme"
    assert auth.authenticate(b"", f"  {key} ".encode()).name == "acme"
    assert auth.authenticate(bearer(key), key.encode()).name == "acme"
    assert auth.authenticate(f"bearer {key}".encode(), key.encode()).name == "acme"
    # An empty key header is no key header: the bearer token decides.
    assert auth.authenticate(bearer(key), b"").name == "acme"
    assert refused(auth, None, b"").code == "invalid_api_key"
    assert len(lookup.calls) == 1  # one key, one lookup: the same cache whichever header


def test_two_different_keys_are_a_401_naming_the_conflict() -> None:
    lookup = Lookup()
    key, other = lookup.add("acme"), lookup.add("other")
    auth = Authenticator(lookup)
    for header in (bearer(other), b"Basic abc"):
        err = refused(auth, header, key.encode())
        assert err.http_status == 401 and err.code == "invalid_api_key"
        assert "Authorization" in err.message and "X-API-Key" in err.message
    assert lookup.calls == []  # refused before any lookup
    assert refused(auth, None, b"sk-st-unknown").code == "invalid_api_key"


def test_the_header_name_is_configurable_and_empty_turns_it_off() -> None:
    auth = Authenticator(Lookup(), api_key_header="X-Studio-Key")
    assert auth.key_header == b"x-studio-key"
    err = refused(auth, b"Bearer sk-st-a", b"sk-st-b")
    assert "X-Studio-Key" in err.message
    assert Authenticator(Lookup(), api_key_header="").key_header is None


@pytest.mark.integration
def test_httpx_and_openai_with_x_api_key(gateway: Gateway) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    headers = {"X-API-Key": gateway.key}
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    models = httpx.get(gateway.base_url + "/models", headers=headers)
    assert models.status_code == 200 and models.json()["data"]
    # Streamed, with the openai client sending only the key header (its own bearer blanked).
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key="unused", max_retries=0,
        default_headers={"X-API-Key": gateway.key, "Authorization": ""},
    )  # fmt: skip
    with client:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=2,
                stream=True,  # type: ignore[arg-type]
            )
        )
    assert chunks and chunks[0].model == MODEL
    assert [r.tenant_id for r in gateway.usage.rows] == [gateway.usage.rows[0].tenant_id] * 2
    assert (gateway.usage.rows[0].tenant_id or "").startswith("t_acme")
    both = {"X-API-Key": gateway.key, "Authorization": "Bearer sk-st-other"}
    conflict = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=both)
    assert conflict.status_code == 401 and "X-API-Key" in conflict.json()["error"]["message"]


@pytest.mark.integration
def test_a_custom_header_and_cors_allow_it(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(api_key_header="X-Studio-Key", cors_origins=("http://app.example",))
    url = gw.base_url + "/models"
    assert httpx.get(url, headers={"X-Studio-Key": gw.key}).status_code == 200
    assert httpx.get(url, headers={"X-API-Key": gw.key}).status_code == 401
    pre = httpx.options(
        gw.base_url + "/chat/completions",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert "x-studio-key" in pre.headers["access-control-allow-headers"]
    off = make_gateway(api_key_header="")
    assert httpx.get(off.base_url + "/models", headers={"X-API-Key": off.key}).status_code == 401
