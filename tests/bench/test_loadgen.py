"""The load generator against the stand-in engine (real sockets, a real child process) and a
small fake server for the error paths.

Tolerances (a shared 2-core machine): TTFT within [prefill, prefill + 100 ms]; the mean
inter-token latency within 10 ms of the stand-in's token delay (20 ms); tokens exact.
"""

from __future__ import annotations

import random
import re
import urllib.request
from pathlib import Path

import pytest

from standin.helpers import running_standin
from studioctl.bench import loadgen, runner
from studioctl.bench.loadgen import Workload
from studioctl.errors import EngineFailed, UsageError

from .fake_openai import fake_server

pytestmark = pytest.mark.integration

PREFILL_S = 0.2
TOKEN_S = 0.02


def generated_total(url: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    m = re.search(r"^vllm:generation_tokens_total\{[^}]*\} (\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("standin") / "engine.log"
    with running_standin(
        "vllm",
        log,
        STANDIN_PREFILL_S=PREFILL_S,
        STANDIN_TOKEN_DELAY_S=TOKEN_S,
        STANDIN_ACCESS_LOG=0,
    ) as s:
        yield s


def test_streamed_ttft_itl_and_exact_tokens(standin) -> None:  # type: ignore[no-untyped-def]
    ep = runner.endpoint_from_url(standin.url, "standin", None, chat=True)
    before = generated_total(standin.url)
    w = Workload(stream=True, requests=8, concurrency=4, warmup=2, seed=3)
    out = runner.bench(ep, w, runner.Inputs(output_tokens=10, prompt_tokens=50))
    s = out.summary
    assert (s.requests_ok, s.requests_failed, s.errors) == (8, 0, {})
    assert all(r.prompt_tokens == 50 and r.output_tokens == 10 for r in out.records)
    assert (s.prompt_tokens, s.output_tokens) == (400, 80)
    # The engine generated exactly what was counted, plus the first request and the warm-up.
    assert generated_total(standin.url) - before == (8 + 2 + 1) * 10
    ttft = s.distributions["ttft"]
    assert ttft.count == 8
    assert PREFILL_S <= ttft.percentiles[50] <= PREFILL_S + 0.1
    itl = s.distributions["itl"]
    assert itl.count == 8 * 10  # the role chunk, then ten token chunks: ten gaps each
    assert itl.mean is not None and abs(itl.mean - TOKEN_S) < 0.01
    tpot = s.distributions["tpot"]
    assert tpot.mean is not None and abs(tpot.mean - TOKEN_S * 10 / 9) < 0.01
    e2e = s.distributions["e2e"]
    assert e2e.mean is not None and abs(e2e.mean - (PREFILL_S + 10 * TOKEN_S)) < 0.1
    assert s.request_rps == 8 / out.duration_s
    # Each request had a prompt of its own (no shared prefix beyond the first word).
    assert out.variants == 8 + 2


def test_not_streamed(standin) -> None:  # type: ignore[no-untyped-def]
    ep = runner.endpoint_from_url(standin.url + "/v1", "standin", None, chat=False)
    w = Workload(stream=False, requests=4, concurrency=2)
    out = runner.bench(ep, w, runner.Inputs(output_tokens=5, prompt_tokens=12))
    s = out.summary
    assert s.requests_ok == 4 and s.output_tokens == 20 and s.prompt_tokens == 48
    assert s.distributions["ttft"].count == 0 and s.distributions["itl"].count == 0
    e2e = s.distributions["e2e"].mean
    assert e2e is not None and PREFILL_S + 5 * TOKEN_S <= e2e <= PREFILL_S + 5 * TOKEN_S + 0.1


def test_open_loop_rate(standin) -> None:  # type: ignore[no-untyped-def]
    ep = runner.endpoint_from_url(standin.url, "standin", None, chat=True)
    w = Workload(stream=True, requests=10, concurrency=None, rate=20.0, seed=1)
    out = runner.bench(ep, w, runner.Inputs(output_tokens=2, prompt_tokens=8))
    assert out.summary.requests_ok == 10
    # The last arrival is at N/rate = 0.5 s; it then takes prefill + 2 tokens.
    assert 0.5 + PREFILL_S <= out.duration_s <= 0.5 + PREFILL_S + 0.5
    starts = sorted(r.start for r in out.records)
    # Poisson arrivals rescaled so the last is at 0.5 s after the run's start.
    assert starts[-1] - starts[0] <= 0.5 + 0.05


def test_duration_ends_the_run(standin) -> None:  # type: ignore[no-untyped-def]
    ep = runner.endpoint_from_url(standin.url, "standin", None, chat=True)
    w = Workload(stream=True, requests=None, duration_s=0.6, concurrency=2)
    out = runner.bench(ep, w, runner.Inputs(output_tokens=1, prompt_tokens=5))
    # Each request takes ~0.22 s: two clients fit two or three rounds in 0.6 s.
    assert 4 <= out.summary.requests_ok <= 8
    assert 0.6 <= out.duration_s < 1.2


def test_wrong_model_stops_before_measuring(standin) -> None:  # type: ignore[no-untyped-def]
    ep = runner.endpoint_from_url(standin.url, "nope", None, chat=True)
    with pytest.raises(EngineFailed, match=r"HTTP 404.*nope"):
        runner.bench(ep, Workload(requests=2), runner.Inputs(dataset=_dataset(standin)))


def _dataset(standin) -> Path:  # type: ignore[no-untyped-def]
    path = Path(standin.log_path).parent / "prompts.jsonl"
    path.write_text('{"prompt": "one two three"}\n')
    return path


def test_errors_by_kind_and_the_usage_probe() -> None:
    # No /tokenize there: the prompt is counted through a one-token request's usage.
    with fake_server(["ok", "503", "close", "hang"], hang_s=1.0) as server:
        ep = runner.endpoint_from_url(server.url, "m", None, chat=True)
        w = Workload(stream=False, requests=8, concurrency=1, timeout_s=0.5)
        out = runner.bench(ep, w, runner.Inputs(output_tokens=3, prompt_tokens=7))
        assert "/tokenize" in server.paths
        s = out.summary
        assert s.requests_ok == 2
        assert s.errors == {"disconnected": 2, "http_503": 2, "timeout": 2}
        assert all(r.prompt_tokens == 7 for r in out.records if r.ok)


def test_synthetic_prompt_too_short_for_the_template(standin) -> None:  # type: ignore[no-untyped-def]
    ep = runner.endpoint_from_url(standin.url, "standin", None, chat=True)
    with pytest.raises(UsageError, match="--prompt-tokens 1"):
        runner.bench(ep, Workload(requests=1), runner.Inputs(output_tokens=1, prompt_tokens=1))


def test_arrival_offsets_follow_vllm() -> None:
    offsets = loadgen.arrival_offsets(1000, 50.0, 1.0, random.Random(0))
    assert offsets[-1] == pytest.approx(1000 / 50.0)
    assert offsets == sorted(offsets)
    again = loadgen.arrival_offsets(1000, 50.0, 1.0, random.Random(0))
    assert offsets == again
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    mean = sum(gaps) / len(gaps)
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    # Exponential gaps: the coefficient of variation is about 1; burstiness 4 makes it ~1/2.
    assert 0.85 < var**0.5 / mean < 1.15
    steady = loadgen.arrival_offsets(1000, 50.0, 4.0, random.Random(0))
    sgaps = [b - a for a, b in zip([0.0, *steady], steady, strict=False)]
    smean = sum(sgaps) / len(sgaps)
    svar = sum((g - smean) ** 2 for g in sgaps) / len(sgaps)
    assert 0.4 < svar**0.5 / smean < 0.6
