"""The engine stand-in (tests/standin): started with the real engines' argv, it must behave
like them where the supervisor and the gateway look — stages in the log, process tree,
health semantics, OpenAI shapes, token counts, in-flight gauges — and obey its switches."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import free_port, wait_for
from standin import standin_engine as se
from standin.helpers import (
    StandinProcess,
    engine_argv,
    http_status,
    kill_group,
    start_standin,
    wait_http,
)

Launch = Callable[..., StandinProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start stand-ins (real argv, new session); SIGKILL every group started, whatever happens."""
    started: list[StandinProcess] = []

    def _launch(flavour: str = "vllm", **kwargs: Any) -> StandinProcess:
        log = tmp_path / f"standin-{len(started)}-{flavour}.log"
        standin = start_standin(flavour, log, **kwargs)
        started.append(standin)
        return standin

    yield _launch
    for standin in started:
        kill_group(standin.proc)


def wait_exit(standin: StandinProcess, timeout: float = 5.0) -> int:
    try:
        return standin.proc.wait(timeout=timeout)
    except Exception as exc:
        raise AssertionError(f"still running after {timeout} s\n{standin.log()}") from exc


def metrics(standin: StandinProcess) -> dict[str, float]:
    """GET /metrics parsed by the reference Prometheus parser: sample name → value
    (vllm:request_success_total keyed by finished_reason)."""
    text = httpx.get(f"{standin.url}/metrics").text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels["model_name"] == "standin"
            reason = sample.labels.get("finished_reason")
            out[f"{sample.name}:{reason}" if reason else sample.name] = sample.value
    return out


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE stream, checking the ``data: ...\\n\\n`` framing."""
    body = response.read().decode()
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events), body
    return [e[len("data: ") :] for e in events]


def in_order(log: str, phrases: list[str]) -> bool:
    at = 0
    for phrase in phrases:
        at = log.find(phrase, at)
        if at < 0:
            return False
    return True


VLLM_STAGES = [
    "vLLM server version",
    "Starting to load model",
    "Loading weights took",
    "init engine (profile, create kv cache, warmup model) took",
    "Starting vLLM server on",
    "Application startup complete.",
]
SGLANG_STAGES = [
    "server_args=ServerArgs(",
    "Load weight begin",
    "Load weight end",
    "KV Cache is allocated",
    "Application startup complete.",
    "Uvicorn running on",
    "The server is fired up and ready to roll!",
]


# ------------------------------------------------------------------------- unit: parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", se.Modes()),
        ("hang", se.Modes(hang=True)),
        ("crash_at_start", se.Modes(crash_at_start=True)),
        ("crash_after:2.5", se.Modes(crash_after_s=2.5)),
        (
            "ignore_sigterm, unhealthy_after:1",
            se.Modes(ignore_sigterm=True, unhealthy_after_s=1.0),
        ),
    ],
)
def test_parse_modes(text: str, expected: se.Modes) -> None:
    assert se.parse_modes(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("explode", "unknown item 'explode'"),
        ("crash_after", "unknown item 'crash_after'"),
        ("hang:3", "unknown item 'hang:3'"),
        ("crash_after:soon", "'soon' is not a number"),
        ("unhealthy_after:-1", "is negative"),
    ],
)
def test_parse_modes_rejects(text: str, needle: str) -> None:
    with pytest.raises(se.UsageError, match=needle):
        se.parse_modes(text)


def test_parse_settings_vllm_ignores_unknown_flags() -> None:
    argv = [
        "--model", "/m/tiny", "--served-model-name", "a", "b", "--host", "127.0.0.1",
        "--port", "8123", "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
        "--max-num-seqs", "4", "--tensor-parallel-size=1",
    ]  # fmt: skip
    s = se.parse_settings("vllm", argv, {"STANDIN_STARTUP_S": "1.5"})
    assert (s.model, s.served_names, s.host, s.port) == ("/m/tiny", ("a", "b"), "127.0.0.1", 8123)
    assert (s.max_model_len, s.max_running, s.startup_s) == (512, 4, 1.5)
    assert s.child == "1" and s.modes == se.Modes()


def test_parse_settings_sglang_defaults_name_to_model_path() -> None:
    argv = ["--model-path", "/m/tiny", "--port", "30001", "--device", "cpu", "--enable-metrics"]
    s = se.parse_settings("sglang", argv, {"STANDIN_CHILD": "0", "STANDIN_MODE": "hang"})
    assert (s.model, s.served_names, s.host, s.port) == (
        "/m/tiny",
        ("/m/tiny",),
        "127.0.0.1",
        30001,
    )
    assert s.child == "0" and s.modes.hang


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"STANDIN_CHILD": "2"}, "STANDIN_CHILD"),
        ({"STANDIN_STARTUP_S": "x"}, "STANDIN_STARTUP_S"),
        ({"STANDIN_TOKEN_DELAY_S": "-0.1"}, "STANDIN_TOKEN_DELAY_S"),
        ({"STANDIN_ACCESS_LOG": "yes"}, "STANDIN_ACCESS_LOG"),
    ],
)
def test_parse_settings_rejects_bad_switches(environ: dict[str, str], needle: str) -> None:
    with pytest.raises(se.UsageError, match=needle):
        se.parse_settings("vllm", ["--port", "1"], environ)


def test_token_counting() -> None:
    assert len(se.word_tokens("  one two\tthree\nfour ")) == 4
    assert se.word_tokens("same same") == [se.word_tokens("same")[0]] * 2
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
        {"role": "assistant", "content": None},
    ]
    assert len(se.chat_tokens(messages)) == 3 + 2 + 2  # one per role, plus the words
    assert se.prompt_tokens([5, 6, 7]) == [5, 6, 7]
    assert len(se.prompt_tokens(["a b", "c"])) == 3
    assert "".join(se.generated_text(3)) == "tok0 tok1 tok2"
    with pytest.raises(se.BadRequest, match="messages"):
        se.chat_tokens([])
    with pytest.raises(se.BadRequest, match=r"messages\[0\]"):
        se.chat_tokens([{"content": "no role"}])
    with pytest.raises(se.BadRequest, match="prompt"):
        se.prompt_tokens({"not": "a prompt"})


def test_engine_argv_is_the_real_command_shape() -> None:
    argv = engine_argv("sglang", port=9, python="/venv/bin/python", extra=["--device", "cpu"])
    assert argv[:3] == ["/venv/bin/python", "-m", "sglang.launch_server"]
    assert argv[3:5] == ["--model-path", "/models/standin-tiny"]
    assert argv[-4:] == ["--port", "9", "--device", "cpu"]
    assert engine_argv("vllm", port=9)[2:4] == ["vllm.entrypoints.openai.api_server", "--model"]
    with pytest.raises(ValueError, match="flavour"):
        engine_argv("tgi", port=9)


# ---------------------------------------------------------------- processes: vLLM flavour


@pytest.mark.integration
def test_vllm_launch_stages_tree_and_fast_start(launch: Launch) -> None:
    started = time.monotonic()
    standin = launch("vllm", STANDIN_STARTUP_S=0)
    standin.wait_ready(timeout=5)
    assert time.monotonic() - started < 2.0  # typically ~0.1 s
    log = standin.log()
    assert in_order(log, VLLM_STAGES), log
    assert f"(APIServer pid={standin.pid}) INFO:     Application startup complete." in log

    pids = standin.group_pids()
    assert len(pids) == 2 and standin.pid in pids
    (child_pid,) = [p for p in pids if p != standin.pid]
    child = psutil.Process(child_pid)
    assert child.ppid() == standin.pid
    assert os.getpgid(child_pid) == standin.pid  # stays in the group it was started in
    assert "VLLM::EngineCore" in child.cmdline()
    wait_for(  # the kernel's name for it, as setproctitle sets it (truncated to 15 bytes)
        lambda: child.name().startswith("VLLM::EngineCor"), timeout=3, what="the child's name"
    )
    assert f"(EngineCore pid={child_pid})" in log
    assert "vllm.entrypoints.openai.api_server" in psutil.Process(standin.pid).cmdline()


@pytest.mark.integration
def test_vllm_refuses_connections_until_loaded(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_STARTUP_S=0.8)
    wait_for(lambda: "Starting to load model" in standin.log(), what="loading")
    assert http_status(f"{standin.url}/health") is None  # bound, not listening yet
    assert wait_http(f"{standin.url}/health", timeout=5, proc=standin.proc) == 200
    assert "Loading weights took" in standin.log()


@pytest.mark.integration
def test_vllm_openai_endpoints(launch: Launch) -> None:
    standin = launch("vllm", extra=["--max-model-len", "20"])
    standin.wait_ready()
    with httpx.Client(base_url=standin.url) as client:
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["standin"]
        assert models["data"][0]["max_model_len"] == 20
        assert client.get("/version").json() == {"version": "0.32.0"}
        assert client.get("/get_model_info").status_code == 404  # SGLang only

        r = client.post("/v1/completions", json={"model": "standin", "prompt": "a b c"})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion"
        assert body["choices"][0]["text"] == " ".join(f"tok{i}" for i in range(16))
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}

        chat = {"model": "standin", "messages": [{"role": "user", "content": "hello world"}]}
        r = client.post("/v1/chat/completions", json={**chat, "max_completion_tokens": 2})
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"] == {
            "role": "assistant",
            "content": "tok0 tok1",
            "tool_calls": [],
        }
        assert body["usage"]["prompt_tokens"] == 3

        r = client.post("/tokenize", json=chat)
        assert r.json() == {"count": 3, "max_model_len": 20, "tokens": r.json()["tokens"],
                            "token_strs": None}  # fmt: skip
        assert len(r.json()["tokens"]) == 3
        assert client.post("/tokenize", json={"prompt": "x y"}).json()["count"] == 2

        r = client.post("/v1/completions", json={"model": "other", "prompt": "a"})
        assert r.status_code == 404
        assert r.json()["error"]["message"].startswith("The model `other` does not exist.")
        r = client.post(
            "/v1/completions", json={"model": "standin", "prompt": "a", "max_tokens": 20}
        )
        assert r.status_code == 400
        assert "maximum context length is 20 tokens" in r.json()["error"]["message"]
        r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "x"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        assert client.get("/nope").status_code == 404
    assert "INFO:     127.0.0.1:" in standin.log()  # uvicorn-style access lines
    assert '"POST /v1/completions HTTP/1.1" 404 Not Found' in standin.log()


@pytest.mark.integration
@pytest.mark.parametrize("flavour", ["vllm", "sglang"])
def test_streaming_with_usage(launch: Launch, flavour: str) -> None:
    standin = launch(flavour)
    standin.wait_ready()
    messages = [{"role": "user", "content": "count these four words"}]
    count = httpx.post(f"{standin.url}/tokenize", json={"messages": messages}).json()["count"]
    assert count == 5
    request = {
        "model": "standin",
        "messages": messages,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{standin.url}/v1/chat/completions", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1])
    assert text == "tok0 tok1 tok2"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-2]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

    # Without include_usage no chunk carries usage; completions stream text pieces.
    request = {"model": "standin", "prompt": "p q", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{standin.url}/v1/completions", json=request) as r:
        events = sse_events(r)
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["tok0", " tok1"]
    assert not any("usage" in c for c in chunks)


@pytest.mark.integration
def test_official_openai_client_reads_the_stream(launch: Launch) -> None:
    import openai

    standin = launch("vllm")
    standin.wait_ready()
    client = openai.OpenAI(base_url=f"{standin.url}/v1", api_key="unused")
    try:
        stream = client.chat.completions.create(
            model="standin",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        reply = client.completions.create(model="standin", prompt="one two", max_tokens=2)
    finally:
        client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "tok0 tok1 tok2 tok3"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert reply.choices[0].text == "tok0 tok1"
    assert reply.usage is not None and reply.usage.prompt_tokens == 2


@pytest.mark.integration
def test_metrics_track_requests_in_flight(launch: Launch) -> None:
    standin = launch("vllm", extra=["--max-num-seqs", "1"], STANDIN_TOKEN_DELAY_S=0.08)
    standin.wait_ready()
    before = metrics(standin)
    assert before["vllm:num_requests_running"] == 0 == before["vllm:num_requests_waiting"]
    assert before["vllm:kv_cache_usage_perc"] == 0

    results: list[int] = []

    def request(prompt: str) -> None:
        body = {"model": "standin", "prompt": prompt, "max_tokens": 10}
        r = httpx.post(f"{standin.url}/v1/completions", json=body, timeout=30)
        results.append(r.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=request, args=(p,)) for p in ("a", "b c", "d e f")]
    for thread in threads:
        thread.start()
    seen: list[tuple[float, float, float]] = []

    def observed_queue() -> bool:
        m = metrics(standin)
        seen.append((m["vllm:num_requests_running"], m["vllm:num_requests_waiting"],
                     m["vllm:kv_cache_usage_perc"]))  # fmt: skip
        return seen[-1][:2] == (1, 2)

    wait_for(observed_queue, timeout=3, what="1 running + 2 waiting")
    assert seen[-1][2] > 0
    for thread in threads:
        thread.join(timeout=30)
    assert results == [10, 10, 10]
    after = metrics(standin)
    assert after["vllm:num_requests_running"] == 0 == after["vllm:num_requests_waiting"]
    assert after["vllm:kv_cache_usage_perc"] == 0
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 6
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 30
    assert after["vllm:request_success_total:length"] == 3


@pytest.mark.integration
def test_a_stream_cut_by_the_client_leaves_flight(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_TOKEN_DELAY_S=0.05)
    standin.wait_ready()
    body = {"model": "standin", "prompt": "x", "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{standin.url}/v1/completions", json=body) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
        assert metrics(standin)["vllm:num_requests_running"] == 1
    wait_for(lambda: metrics(standin)["vllm:num_requests_running"] == 0, what="abort")
    m = metrics(standin)
    assert m["vllm:request_success_total:abort"] == 1
    assert m["vllm:generation_tokens_total"] < 200


@pytest.mark.integration
def test_sigterm_to_the_group_ends_everything_with_0(launch: Launch) -> None:
    standin = launch("vllm")
    standin.wait_ready()
    assert len(standin.group_pids()) == 2
    os.killpg(standin.pid, signal.SIGTERM)
    assert wait_exit(standin) == 0
    wait_for(lambda: not standin.group_pids(), timeout=3, what="the group to empty")
    assert "Application shutdown complete." in standin.log()


@pytest.mark.integration
def test_stop_delay_keeps_it_alive_after_sigterm(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_STOP_DELAY_S=0.6, STANDIN_CHILD=0)
    standin.wait_ready()
    os.kill(standin.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert standin.proc.poll() is None
    assert wait_exit(standin) == 0


@pytest.mark.integration
def test_child_follows_a_parent_killed_alone(launch: Launch) -> None:
    standin = launch("vllm")
    standin.wait_ready()
    (child,) = [p for p in standin.group_pids() if p != standin.pid]
    os.kill(standin.pid, signal.SIGKILL)
    assert wait_exit(standin) == -signal.SIGKILL
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie",
             timeout=3, what="the orphaned child to exit")  # fmt: skip


@pytest.mark.integration
def test_a_dead_engine_core_takes_the_server_down(launch: Launch) -> None:
    standin = launch("vllm")
    standin.wait_ready()
    (child,) = [p for p in standin.group_pids() if p != standin.pid]
    os.kill(child, signal.SIGKILL)  # like kill -9 of VLLM::EngineCore
    assert wait_exit(standin) == 1
    assert "died unexpectedly" in standin.log()


@pytest.mark.integration
def test_port_already_taken_fails_like_vllm(launch: Launch) -> None:
    first = launch("vllm")
    first.wait_ready()
    second = launch("vllm", port=first.port)
    assert wait_exit(second) == 1
    assert "Address already in use" in second.log()
    assert http_status(f"{first.url}/health") == 200


# ------------------------------------------------------------------------ modes, both kinds


@pytest.mark.integration
@pytest.mark.parametrize(
    ("flavour", "last_line"),
    [("vllm", "Engine core initialization failed"), ("sglang", "scheduler is dead")],
)
def test_crash_at_start(launch: Launch, flavour: str, last_line: str) -> None:
    standin = launch(flavour, STANDIN_MODE="crash_at_start")
    assert wait_exit(standin) == 3
    log = standin.log()
    assert ("Starting to load model" if flavour == "vllm" else "Load weight begin") in log
    assert last_line in log and "Traceback" in log
    assert "Application startup complete" not in log
    wait_for(lambda: not standin.group_pids(), timeout=3, what="the child to follow")


@pytest.mark.integration
def test_crash_after(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_MODE="crash_after:0.4")
    standin.wait_ready()  # ready first, crash later
    assert wait_exit(standin) == 1
    assert in_order(standin.log(), ["Application startup complete.", "fatal error"])


@pytest.mark.integration
def test_standin_crash_endpoint(launch: Launch) -> None:
    standin = launch("sglang")
    standin.wait_ready()
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{standin.url}/standin/crash")
    assert wait_exit(standin) == 1


@pytest.mark.integration
def test_hang_vllm_never_listens(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_MODE="hang", STANDIN_STARTUP_S=0.1)
    wait_for(lambda: "Starting to load model" in standin.log(), what="loading")
    time.sleep(0.5)
    assert standin.proc.poll() is None
    assert http_status(f"{standin.url}/health") is None
    assert "Loading weights took" not in standin.log()


@pytest.mark.integration
def test_sglang_health_is_503_while_warming_then_200(launch: Launch) -> None:
    standin = launch("sglang", STANDIN_STARTUP_S=1.5)
    assert wait_http(f"{standin.url}/health", status=503, timeout=5, proc=standin.proc) == 503
    assert "The server is fired up" not in standin.log()
    # Served while warming: model info and metrics answer already.
    assert httpx.get(f"{standin.url}/get_model_info").json()["model_path"] == "/models/standin-tiny"
    assert wait_http(f"{standin.url}/health", timeout=5, proc=standin.proc) == 200
    assert in_order(standin.log(), SGLANG_STAGES), standin.log()
    titles = sorted(" ".join(psutil.Process(p).cmdline()) for p in standin.group_pids())
    assert any("sglang::scheduler" in t for t in titles)
    assert any("sglang::detokenizer" in t for t in titles)
    assert any("sglang.launch_server" in t for t in titles)
    m = metrics(standin)
    assert m["sglang:num_running_reqs"] == 0 == m["sglang:num_queue_reqs"]
    httpx.post(f"{standin.url}/v1/completions", json={"prompt": "a b", "max_tokens": 3})
    m = metrics(standin)
    assert (m["sglang:prompt_tokens_total"], m["sglang:generation_tokens_total"]) == (2, 3)
    assert m["sglang:num_requests_total"] == 1


@pytest.mark.integration
def test_hang_sglang_stays_503(launch: Launch) -> None:
    standin = launch("sglang", STANDIN_MODE="hang", STANDIN_STARTUP_S=0.1)
    wait_http(f"{standin.url}/health", status=503, timeout=5, proc=standin.proc)
    time.sleep(0.5)
    assert http_status(f"{standin.url}/health") == 503
    assert standin.proc.poll() is None


@pytest.mark.integration
def test_ignore_sigterm_only_sigkill_ends_it(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_MODE="ignore_sigterm")
    standin.wait_ready()
    pids = standin.group_pids()
    assert len(pids) == 2
    os.killpg(standin.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert sorted(standin.group_pids()) == sorted(pids)
    assert http_status(f"{standin.url}/health") == 200
    kill_group(standin.proc)
    assert standin.proc.returncode == -signal.SIGKILL and not standin.group_pids()


@pytest.mark.integration
def test_unhealthy_after(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_MODE="unhealthy_after:0.3")
    standin.wait_ready()
    assert wait_http(f"{standin.url}/health", status=500, timeout=3) == 500
    assert standin.proc.poll() is None


@pytest.mark.integration
def test_no_child(launch: Launch) -> None:
    standin = launch("sglang", STANDIN_CHILD=0)
    standin.wait_ready()
    assert standin.group_pids() == [standin.pid]


@pytest.mark.integration
def test_lingering_child_survives_its_parent_in_the_group(launch: Launch) -> None:
    standin = launch("vllm", STANDIN_CHILD="linger")
    standin.wait_ready()
    os.kill(standin.pid, signal.SIGTERM)  # the leader alone, as a careless stop would
    assert wait_exit(standin) == 0
    time.sleep(0.3)
    leftovers = standin.group_pids()
    assert len(leftovers) == 1  # the leaked worker, still in the group
    assert "VLLM::EngineCore" in psutil.Process(leftovers[0]).cmdline()
    os.killpg(standin.pid, signal.SIGTERM)
    time.sleep(0.2)
    assert standin.group_pids() == leftovers  # it ignores SIGTERM too


@pytest.mark.integration
@pytest.mark.parametrize(
    ("switches", "extra", "needle"),
    [
        ({"STANDIN_MODE": "explode"}, [], "STANDIN_MODE: unknown item 'explode'"),
        ({}, ["--port", "eighty"], "argument --port: invalid int value"),
    ],
)
def test_bad_input_exits_2_naming_it(
    launch: Launch, switches: dict[str, str], extra: list[str], needle: str
) -> None:
    standin = launch("vllm", extra=extra, **switches)
    assert wait_exit(standin) == 2
    assert needle in standin.log()


def test_free_port_is_free() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
