"""Usage rows and /metrics through the daemon: what the gateway records equals what the engine
reported (and counted in its own /metrics); the usage windows and filters; the metrics
counters move with requests, tokens and rejections."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from daemon_helpers import Daemon
from gateway_daemon.helpers import (
    ADMIN_TOKEN,
    assert_error,
    chat,
    chat_prompt_tokens,
    cli_ok,
    create_tenant,
    db_path,
    engine_port,
    engine_tokens,
    gateway_daemon,
    launch,
    openai_client,
    request,
    scrape,
    usage_api,
    usage_cli,
    usage_rows,
    wait_usage,
)
from studioctl.errors import EXIT_USAGE
from studioctl.gateway.metrics import OTHER_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HOUR = 3600.0
DAY = 86400.0


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with gateway_daemon({"alpha": {}, "beta": {}}, admin_token=ADMIN_TOKEN) as d:
        launch(d, "alpha")
        launch(d, "beta")
        yield d


def engines(d: Daemon) -> dict[str, tuple[float, float]]:
    return {r: engine_tokens(engine_port(d, r)) for r in ("alpha", "beta")}


def traffic(d: Daemon, key: str) -> dict[str, Any]:
    """Four requests of one tenant (chat plain, chat streamed with and without usage, a
    completion on beta); returns what the client saw."""
    seen: dict[str, Any] = {}
    with openai_client(d, key) as client:
        out = client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "a b c d"}], max_tokens=4
        )
        assert out.usage is not None
        seen["plain"] = (out.usage.prompt_tokens, out.usage.completion_tokens)

        usage_chunks = []
        text = []
        for chunk in client.chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "stream with usage"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.usage is not None:
                usage_chunks.append((chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
            text += [c.delta.content for c in chunk.choices if c.delta.content]
        assert len(usage_chunks) == 1, usage_chunks
        seen["stream_usage"] = usage_chunks[0]
        assert "".join(text).split() == [f"tok{i}" for i in range(6)]

        plain_chunks = list(
            client.chat.completions.create(
                model="alpha",
                messages=[{"role": "user", "content": "stream without usage"}],
                max_tokens=3,
                stream=True,
            )
        )
        # The gateway asked the engine for usage and stripped it: the client sees none.
        assert all(c.usage is None for c in plain_chunks), plain_chunks
        assert sum(1 for c in plain_chunks if c.choices and c.choices[0].delta.content) == 3

        comp = client.completions.create(model="beta", prompt="x y", max_tokens=5)
        assert comp.usage is not None
        seen["completion"] = (comp.usage.prompt_tokens, comp.usage.completion_tokens)
    return seen


def test_usage_rows_equal_what_the_engines_reported(daemon: Daemon) -> None:
    tenant, key = create_tenant(daemon, "u-one")
    before = engines(daemon)
    seen = traffic(daemon, key)
    after = engines(daemon)

    assert seen["plain"] == (chat_prompt_tokens("a b c d"), 4)
    assert seen["stream_usage"] == (chat_prompt_tokens("stream with usage"), 6)
    assert seen["completion"] == (2, 5)
    hidden = (chat_prompt_tokens("stream without usage"), 3)  # the stripped usage chunk

    out = wait_usage(daemon, 4, tenant="u-one")
    total = out["total"]
    alpha_prompt = seen["plain"][0] + seen["stream_usage"][0] + hidden[0]
    alpha_completion = seen["plain"][1] + seen["stream_usage"][1] + hidden[1]
    assert out["by_model"]["alpha"]["prompt_tokens"] == alpha_prompt
    assert out["by_model"]["alpha"]["completion_tokens"] == alpha_completion
    assert out["by_model"]["beta"]["prompt_tokens"] == seen["completion"][0]
    assert out["by_model"]["beta"]["completion_tokens"] == seen["completion"][1]
    assert (total["requests"], total["errors"], total["streamed"]) == (4, 0, 2)
    assert list(out["by_tenant"]) == [tenant["id"]]
    assert out["tenant_names"][tenant["id"]] == "u-one"

    # The engines' own counters moved by exactly what was recorded, per engine.
    for model in ("alpha", "beta"):
        moved = (after[model][0] - before[model][0], after[model][1] - before[model][1])
        recorded = out["by_model"][model]
        assert moved == (recorded["prompt_tokens"], recorded["completion_tokens"]), model

    # One row per request, with the key prefix, instance, stream flag and TTFT.
    rows = sorted(usage_rows(daemon, tenant=tenant["id"]), key=lambda r: r.ts)
    assert [(r.model, r.status, r.streamed, r.disconnected) for r in rows] == [
        ("alpha", 200, False, False),
        ("alpha", 200, True, False),
        ("alpha", 200, True, False),
        ("beta", 200, False, False),
    ]
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [
        seen["plain"],
        seen["stream_usage"],
        hidden,
        seen["completion"],
    ]
    assert {r.key_prefix for r in rows} == {key[:14]}
    assert [r.instance_id for r in rows] == ["alpha-1", "alpha-1", "alpha-1", "beta-1"]
    assert all(r.ttft_ms is not None and r.ttft_ms > 0 for r in rows if r.streamed)
    assert all(r.duration_ms > 0 and r.error_code is None for r in rows)


def test_usage_windows_and_filters(daemon: Daemon) -> None:
    from studioctl.store.sqlite import SqliteDatabase as Database
    from studioctl.store.usage import UsageRecord, UsageRepo

    one, key_one = create_tenant(daemon, "w-one")
    two, key_two = create_tenant(daemon, "w-two")
    assert chat(daemon, key_one, "alpha", max_tokens=2).status_code == 200
    assert chat(daemon, key_one, "beta", max_tokens=3).status_code == 200
    assert chat(daemon, key_two, "beta", max_tokens=5).status_code == 200
    assert_error(chat(daemon, key_two, "beta", max_tokens=100_000), 400, "output_too_long")
    wait_usage(daemon, 2, tenant="w-one")
    wait_usage(daemon, 2, tenant="w-two")

    # Back-dated rows of w-one (written into the daemon's store beside it, WAL): 2 h, 2 d,
    # 10 d and 40 d old — each falls in a different set of windows.
    now = time.time()
    ages = {2 * HOUR: 10, 2 * DAY: 100, 10 * DAY: 1000, 40 * DAY: 10000}
    db = Database(db_path(daemon))
    try:
        UsageRepo(db).insert_many(
            UsageRecord(
                status=200,
                ts=now - age,
                tenant_id=one["id"],
                key_prefix=key_one[:14],
                model="alpha",
                instance_id="alpha-0",
                prompt_tokens=tokens,
                completion_tokens=1,
                duration_ms=5.0,
            )
            for age, tokens in ages.items()
        )
    finally:
        db.close()

    recent = chat_prompt_tokens("one two three")  # each live request's prompt
    expected = {
        "1h": (2, 2 * recent),
        "24h": (3, 2 * recent + 10),
        "7d": (4, 2 * recent + 110),
        "30d": (5, 2 * recent + 1110),
    }
    for window, (requests, prompt) in expected.items():
        out = usage_cli(daemon, "--window", window, "--tenant", "w-one")
        assert out["window"] == window
        assert (out["total"]["requests"], out["total"]["prompt_tokens"]) == (requests, prompt), (
            window,
            out["total"],
        )
        assert list(out["by_tenant"]) == [one["id"]]
    # By id as well as by name.
    assert usage_cli(daemon, "--window", "7d", "--tenant", one["id"])["total"]["requests"] == 4

    # --model: only that model's rows; combined with --tenant.
    beta = usage_cli(daemon, "--window", "1h", "--model", "beta")
    assert set(beta["by_model"]) == {"beta"}
    by_tenant = beta["by_tenant"]
    assert by_tenant[one["id"]]["requests"] == 1 and by_tenant[one["id"]]["completion_tokens"] == 3
    # w-two's beta rows: one served (5 tokens) and one refused (an error, no tokens).
    assert by_tenant[two["id"]]["requests"] == 2 and by_tenant[two["id"]]["errors"] == 1
    assert by_tenant[two["id"]]["completion_tokens"] == 5
    both = usage_cli(daemon, "--window", "30d", "--model", "alpha", "--tenant", "w-one")
    assert both["total"]["requests"] == 1 + 3 and set(both["by_model"]) == {"alpha"}
    none = usage_cli(daemon, "--window", "1h", "--model", "no-such-model")
    assert none["total"]["requests"] == 0 and none["by_model"] == {}

    # GET /admin/usage over TCP: the same summary as the socket's.
    params = {"window": "7d", "tenant": "w-one"}
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    tcp = request(daemon, "GET", "/admin/usage", params=params, headers=admin)
    assert tcp.status_code == 200, tcp.text
    sock = usage_api(daemon, **params)
    for k in ("total", "by_tenant", "by_model", "window", "tenant_names", "start"):
        assert tcp.json()[k] == sock[k], k
    assert_error(request(daemon, "GET", "/admin/usage", params=params), 401, "unauthorized")

    # The table form, and bad input named.
    text = cli_ok(daemon, "usage", "--window", "24h", "--tenant", "w-one")
    assert "total (24h)" in text and "tenant w-one" in text and "model alpha" in text
    r = daemon.cli("usage", "--window", "5y")
    assert r.returncode == EXIT_USAGE and "window" in r.stderr and "5y" in r.stderr, r.stderr
    r = daemon.cli("usage", "--tenant", "nobody")
    assert r.returncode != 0 and "nobody" in r.stderr, r.stderr


def test_metrics_counters_move_with_requests_tokens_and_rejections(daemon: Daemon) -> None:
    _, key = create_tenant(daemon, "m-one")
    _, limited = create_tenant(daemon, "m-rl", "--rpm", "1")
    before = scrape(daemon)
    with openai_client(daemon, key) as client:
        client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "p q r"}], max_tokens=4
        )
        list(
            client.chat.completions.create(
                model="alpha",
                messages=[{"role": "user", "content": "s t"}],
                max_tokens=2,
                stream=True,
            )
        )
    assert_error(chat(daemon, key, "nope"), 404, "model_not_found")
    assert chat(daemon, limited, "beta").status_code == 200
    assert_error(chat(daemon, limited, "beta"), 429, "limit_rpm")
    assert_error(chat(daemon, "sk-st-" + "x" * 43, "alpha"), 401, "invalid_api_key")
    after = scrape(daemon)

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert after.families["studioctl_gateway_requests"] == "counter"
    assert after.families["studioctl_gateway_request_duration_seconds"] == "histogram"
    g = "studioctl_gateway_"
    assert delta(g + "requests_total", model="alpha", status="200", tenant="m-one") == 2
    # an invented model name is no label of its own
    assert delta(g + "requests_total", model=OTHER_MODEL, status="404", tenant="m-one") == 1
    assert delta(g + "requests_total", model="beta", status="200", tenant="m-rl") == 1
    assert delta(g + "requests_total", model="beta", status="429", tenant="m-rl") == 1
    assert delta(g + "streamed_requests_total", model="alpha", tenant="m-one") == 1
    assert delta(g + "prompt_tokens_total", model="alpha", tenant="m-one") == 4 + 3
    assert delta(g + "completion_tokens_total", model="alpha", tenant="m-one") == 4 + 2
    assert delta(g + "rejections_total", reason="model_not_found", tenant="m-one") == 1
    assert delta(g + "rejections_total", reason="limit_rpm", tenant="m-rl") == 1
    # Refused before any tenant is known: counted without a tenant.
    assert (
        after.sum(g + "rejections_total", reason="invalid_api_key")
        - before.sum(g + "rejections_total", reason="invalid_api_key")
        == 1
    )
    assert delta(g + "request_duration_seconds_count", model="alpha") == 2
    assert delta(g + "time_to_first_token_seconds_count", model="alpha") == 1
    assert delta(g + "upstream_latency_seconds_count") == 3
    assert after.get(g + "inflight_requests") == 0
    up = after.get("studioctl_instance_up", instance="alpha-1", recipe="alpha", state="ready")
    assert up == 1
    assert after.get("studioctl_instance_inflight", instance="alpha-1") == 0
