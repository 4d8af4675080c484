"""The whole control/admin surface under random input never answers 5xx (issue 8, item 12).

A real daemon (gateway on, so the admin routes are mounted) is driven by Hypothesis: every
route and method of the control app, random path parameters, query strings (the known
parameters with hostile values: huge and negative numbers, NaN, unicode, empty) and bodies
(random JSON objects over the known keys, non-objects, bytes that are not JSON), over the
Unix socket and over TCP ``/admin/`` with the token. Any 5xx fails, with the example that
caused it. The route list is read from the app's own route table, so a new route is driven
without editing this file. Bounded: a fixed number of examples, a per-request deadline.

Only ``POST /daemon/shutdown`` is left out of the random drive (a valid body stops the
daemon under test); its parameter is checked on its own below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_helpers import Daemon
from gateway_daemon.helpers import ADMIN_TOKEN, base_url, gateway_daemon

pytestmark = pytest.mark.integration

SKIPPED = {("POST", "/daemon/shutdown")}


def app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the daemon's control app serves."""
    from starlette.routing import Route

    from studioctl.control import DaemonInfo, build_control_app
    from studioctl.control.gpus import telemetry_routes
    from studioctl.control.tenants import tenant_routes

    extra: list[Route] = [*telemetry_routes(None), *tenant_routes(None, None)]  # type: ignore[arg-type]
    app = build_control_app(None, None, DaemonInfo(), routes=extra)  # type: ignore[arg-type]
    out = []
    for r in app.routes:
        assert isinstance(r, Route)
        for m in sorted(r.methods or ()):
            if m != "HEAD" and (m, r.path) not in SKIPPED:
                out.append((m, r.path))
    return out


ROUTES = app_routes()
QUERY_KEYS = [
    "n", "since", "after", "follow", "all", "foreign", "instance",
    "window", "tenant", "model", "recipe",
]  # fmt: skip
BODY_KEYS = [
    "recipe", "port", "gpus", "force", "wait", "timeout", "lock_wait", "stream",
    "drain_timeout", "grace", "from", "to", "pid", "name", "profile", "overrides",
    "allowed_models", "enabled", "grace_s", "tenant", "stop_engines",
]  # fmt: skip

big_ints = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**20, 10**400]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
text = st.text(max_size=80)
number_text = st.one_of(
    big_ints.map(str),
    floats.map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "99999999999999999999d", "0x10", " 1", ""]),
    st.from_regex(r"-?[0-9]{1,25}[smhd]?", fullmatch=True),
)
query_value = st.one_of(text, number_text, st.sampled_from(["1", "true", "0", "false", "24h"]))
scalar = st.one_of(st.none(), st.booleans(), big_ints, floats, text)
json_value = st.recursive(
    scalar,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.one_of(text, st.sampled_from(BODY_KEYS)), kids, max_size=4),
    ),
    max_leaves=12,
)
body = st.one_of(
    st.dictionaries(st.sampled_from(BODY_KEYS), json_value, max_size=6),
    json_value,
    st.binary(max_size=64),
    st.none(),
)
path_param = st.one_of(text.filter(lambda s: s not in ("", ".", "..")), number_text)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon(admin_token=ADMIN_TOKEN) as d:
        yield d


@pytest.fixture(scope="module")
def clients(daemon: Daemon) -> Iterator[dict[str, httpx.Client]]:
    unix = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://studioctl"
    )
    tcp = httpx.Client(base_url=base_url(daemon) + "/admin", headers={"X-Admin-Token": ADMIN_TOKEN})
    yield {"unix": unix, "tcp": tcp}
    unix.close()
    tcp.close()


def fill(template: str, values: list[str]) -> str:
    out = template
    for v in values:
        start = out.index("{")
        out = out[:start] + quote(v, safe="") + out[out.index("}", start) + 1 :]
    return out


def encode(data: Any) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, bytes):
        return data
    return json.dumps(data).encode()  # NaN and Infinity included, as Python's json reads them


def send(client: httpx.Client, method: str, url: str, content: bytes | None) -> int:
    """The status of one request; a streamed answer (events, logs) is not read to its end."""
    with client.stream(method, url, content=content, timeout=15.0) as resp:
        return resp.status_code


@settings(
    max_examples=300,
    deadline=timedelta(seconds=20),  # one request; generous for a loaded 2-core CI machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(data=st.data())
def test_no_route_answers_5xx(clients: dict[str, httpx.Client], data: st.DataObject) -> None:
    method, template = data.draw(st.sampled_from(ROUTES), label="route")
    params = data.draw(
        st.lists(path_param, min_size=template.count("{"), max_size=template.count("{"))
    )
    query = data.draw(
        st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), text), query_value), max_size=4),
        label="query",
    )
    url = fill(template, params)
    if query:
        url += "?" + urlencode(query)
    content = encode(data.draw(body, label="body")) if method != "GET" else None
    via = data.draw(st.sampled_from(["unix", "tcp"]), label="via")
    status = send(clients[via], method, url, content)
    assert status < 500, f"{method} {url} body={content!r} via {via}: {status}"


# --------------------------------------------------------------------------- the named cases


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/usage?window=99999999999999999999d", "window"),
        ("/usage?window=0d", "window"),
        ("/events?n=99999999999999999999", "n"),
        ("/events?n=-1", "n"),
        ("/events?after=99999999999999999999", "after"),
        ("/events?n=nan", "n"),
        ("/events?instance=" + "x" * 5000, "instance"),
        ("/usage?model=" + "x" * 5000, "model"),
        ("/instances/x/logs?since=inf", "since"),
        ("/instances/x/logs?n=1e3", "n"),
        ("/instances?all=maybe", "all"),
        ("/instances?all=1&foreign=2", "foreign"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_parameter(
    clients: dict[str, httpx.Client], path: str, param: str
) -> None:
    for via in ("unix", "tcp"):
        r = clients[via].get(path)
        assert r.status_code == 400, (via, path, r.status_code, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param, err
        assert param in err["message"]


@pytest.mark.parametrize(
    ("method", "path", "payload", "param"),
    [
        ("POST", "/instances", {"recipe": "x", "timeout": math.inf}, "timeout"),
        ("POST", "/instances", {"recipe": "x", "port": 70000}, "port"),
        ("POST", "/instances", {"recipe": "x", "gpus": [2**70]}, "gpus"),
        ("POST", "/instances", {"recipe": "x", "wait": "no"}, "wait"),
        ("POST", "/instances", {"recipe": "x" * 5000}, "recipe"),
        ("POST", "/instances/x/evict", {"grace": math.nan}, "grace"),
        ("POST", "/adopt", {"pid": 2**70, "recipe": "x"}, "pid"),
        ("POST", "/switch", {"from": "a", "to": "b", "port": "80"}, "port"),
        ("POST", "/tenants/nobody/keys/rotate", {"grace_s": 1e300}, "grace_s"),
        ("POST", "/daemon/shutdown", {"stop_engines": "yes"}, "stop_engines"),  # last: a
        # regression here stops the module's daemon
    ],
)
def test_bad_body_parameters_are_400_naming_the_parameter(
    clients: dict[str, httpx.Client], method: str, path: str, payload: Any, param: str
) -> None:
    r = clients["unix"].request(method, path, content=encode(payload))
    assert r.status_code == 400, (path, r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"], err


def test_a_300_character_recipe_id_is_refused_naming_the_rule(
    clients: dict[str, httpx.Client],
) -> None:
    r = clients["unix"].post("/instances", json={"recipe": "r" * 300})
    assert r.status_code == 404, r.text
    msg = r.json()["error"]["message"]
    assert "invalid recipe id" in msg and "(300 characters)" in msg and "1-64 characters" in msg


def test_bodies_that_are_not_json_objects_are_400(clients: dict[str, httpx.Client]) -> None:
    for content in (b"\x80", b"[" * 100_000, b"[]", b"nul"):
        r = clients["unix"].post("/tenants", content=content)
        assert r.status_code == 400, (content[:10], r.status_code, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = clients["unix"].post("/tenants", content=b" " * (1024 * 1024 + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
