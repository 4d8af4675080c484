"""``studioctl bench``: measure a model's serving performance (docs/bench.md).

Everything heavy (the load generator, uvloop, orjson, the control client's models) is
imported inside the command: ``studioctl --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from studioctl.cli.app import app

if TYPE_CHECKING:
    from studioctl.bench.loadgen import Progress, Workload
    from studioctl.bench.report import TargetInfo
    from studioctl.bench.runner import Inputs, Outcome
    from studioctl.bench.thresholds import Threshold, Verdict


# One alias per option: the command's signature stays one line per option.
Target = Annotated[
    str | None,
    typer.Argument(
        metavar="TARGET", help="A running instance id or a recipe id (launched if not running)."
    ),
]
Url = Annotated[
    str | None,
    typer.Option(
        "--url", metavar="URL", help="Any OpenAI-compatible server (http://HOST:PORT), not TARGET."
    ),
]
Model = Annotated[
    str | None, typer.Option("--model", metavar="NAME", help="The model name to request.")
]
ThroughGateway = Annotated[
    bool, typer.Option("--through-gateway", help="Send TARGET's requests through the gateway.")
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", metavar="KEY", envvar="STUDIOCTL_API_KEY", help="Bearer key (a tenant key)."
    ),
]
Keep = Annotated[bool, typer.Option("--keep", help="Keep a recipe launched for the run.")]
Requests = Annotated[
    int | None, typer.Option("--requests", "-n", min=1, help="Measured requests (default 100).")
]
Duration = Annotated[
    float | None, typer.Option("--duration", min=0.001, help="Seconds to send requests for.")
]
Concurrency = Annotated[
    int | None, typer.Option("--concurrency", "-c", min=1, help="Closed loop: clients (def. 1).")
]
Rate = Annotated[
    float | None, typer.Option("--rate", min=0.001, help="Open loop: requests/s (Poisson).")
]
Burstiness = Annotated[
    float,
    typer.Option("--burstiness", min=0.001, help="Gamma shape of --rate's gaps (1: Poisson)."),
]
Warmup = Annotated[int, typer.Option("--warmup", min=0, help="Unmeasured requests first.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the prompts and the arrivals.")]
PromptTokens = Annotated[
    int | None,
    typer.Option("--prompt-tokens", min=1, help="Synthetic prompts of exactly this many tokens."),
]
OutputTokens = Annotated[
    int, typer.Option("--output-tokens", min=1, help="max_tokens (with ignore_eos: exactly).")
]
Dataset = Annotated[
    Path | None,
    typer.Option(
        "--dataset", metavar="FILE", help='JSONL of {"prompt": ...} or ShareGPT conversations.'
    ),
]
Endpoint = Annotated[str, typer.Option("--endpoint", metavar="KIND", help="chat or completions.")]
Stream = Annotated[bool, typer.Option("--stream/--no-stream", help="Stream: token times.")]
IgnoreEos = Annotated[bool, typer.Option("--ignore-eos/--no-ignore-eos")]
Timeout = Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds per request.")]
Slo = Annotated[
    str | None, typer.Option("--slo", metavar="SLOS", help="Goodput SLOs: ttft=500ms,tpot=50ms.")
]
FailIf = Annotated[
    list[str] | None,
    typer.Option(
        "--fail-if", metavar="EXPR", help="Exit 8 when crossed: 'ttft_p95>500ms' (repeatable)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the studioctl.bench/1 document.")]


@dataclass(frozen=True)
class BenchArgs:
    target: str | None
    url: str | None
    model: str | None
    through_gateway: bool
    api_key: str | None
    keep: bool
    requests: int | None
    duration: float | None
    concurrency: int | None
    rate: float | None
    burstiness: float
    warmup: int
    seed: int
    prompt_tokens: int | None
    output_tokens: int
    dataset: Path | None
    endpoint: str
    stream: bool
    ignore_eos: bool
    timeout: float
    slo: str | None
    fail_if: list[str] | None
    as_json: bool


@app.command("bench")
def bench(
    target: Target = None,
    url: Url = None,
    model: Model = None,
    through_gateway: ThroughGateway = False,
    api_key: ApiKey = None,
    keep: Keep = False,
    requests: Requests = None,
    duration: Duration = None,
    concurrency: Concurrency = None,
    rate: Rate = None,
    burstiness: Burstiness = 1.0,
    warmup: Warmup = 0,
    seed: Seed = 0,
    prompt_tokens: PromptTokens = None,
    output_tokens: OutputTokens = 128,
    dataset: Dataset = None,
    endpoint: Endpoint = "chat",
    stream: Stream = True,
    ignore_eos: IgnoreEos = True,
    timeout: Timeout = 600.0,
    slo: Slo = None,
    fail_if: FailIf = None,
    as_json: AsJson = False,
) -> None:
    """Measure serving performance: TTFT, ITL, TPOT, latency, throughput, goodput.

    Exits 8 when a --fail-if threshold is crossed, naming each one. Examples:
    studioctl bench --url http://127.0.0.1:8000 --model m --prompt-tokens 512 -c 8;
    studioctl bench tiny --through-gateway --rate 4 -n 200 --fail-if 'ttft_p95>500ms' --json
    """
    run(BenchArgs(**locals()))


def run(a: BenchArgs) -> None:
    from studioctl.bench import runner, thresholds
    from studioctl.bench.loadgen import Workload
    from studioctl.errors import ThresholdCrossed, UsageError

    checks = thresholds.parse_all(a.fail_if or [])
    slos = thresholds.parse_slo(a.slo) if a.slo is not None else None
    if (a.target is None) == (a.url is None):
        raise UsageError("give TARGET (an instance or recipe) or --url, one of them")
    if a.url is not None and (a.through_gateway or a.keep):
        raise UsageError("--through-gateway and --keep go with TARGET: --url is the server itself")
    if a.endpoint not in ("chat", "completions"):
        raise UsageError(f"--endpoint {a.endpoint[:50]!r}: chat or completions")
    if (a.prompt_tokens is None) == (a.dataset is None):
        raise UsageError("give --prompt-tokens P or --dataset FILE.jsonl, one of them")
    bounded = a.requests is not None or a.duration is not None
    workload = Workload(
        stream=a.stream,
        requests=a.requests if bounded else 100,
        duration_s=a.duration,
        concurrency=a.concurrency if a.concurrency is not None or a.rate is not None else 1,
        rate=a.rate,
        burstiness=a.burstiness,
        warmup=a.warmup,
        seed=a.seed,
        timeout_s=a.timeout,
        ignore_eos=a.ignore_eos,
    )
    inputs = runner.Inputs(a.output_tokens, a.prompt_tokens, a.dataset)
    chat = a.endpoint == "chat"
    with _target(a) as where:
        if where.through_gateway and not a.api_key:
            raise UsageError(
                "the gateway needs a tenant key: --api-key or STUDIOCTL_API_KEY",
                hint="studioctl tenant key add TENANT",
            )
        ep = runner.endpoint_from_url(where.url, where.model, where.api_key or a.api_key, chat=chat)
        started = time.time()
        progress = _progress()
        with _live(progress, show=not a.as_json and sys.stdout.isatty()):
            outcome = runner.bench(ep, workload, inputs, slos, progress)
        doc, crossed = _document(
            where, a.keep, workload, inputs, outcome, chat, slos, checks, started
        )
    _show(doc, as_json=a.as_json)
    if crossed:
        n = len(crossed)
        raise ThresholdCrossed(
            f"{n} threshold{'s' if n > 1 else ''} crossed: "
            + "; ".join(v.describe() for v in crossed),
            details={"crossed": [v.threshold.expr for v in crossed]},
        )


def _progress() -> Progress:
    from studioctl.bench.loadgen import Progress

    return Progress()


@contextlib.contextmanager
def _target(a: BenchArgs) -> Iterator[TargetInfo]:
    from studioctl.bench import target as targets

    if a.url is not None:
        yield targets.from_url(a.url, a.model)
        return
    assert a.target is not None
    from studioctl.client import connect

    with (
        connect() as client,
        targets.resolved(
            client, a.target, through_gateway=a.through_gateway, model=a.model, keep=a.keep
        ) as where,
    ):
        yield where


@contextlib.contextmanager
def _live(progress: Progress, *, show: bool) -> Iterator[None]:
    if not show:
        yield
        return
    from studioctl import ui
    from studioctl.bench.report import progress_lines

    with ui.LiveLines(lambda: progress_lines(progress)):
        yield


def _document(
    where: TargetInfo,
    keep: bool,
    workload: Workload,
    inputs: Inputs,
    outcome: Outcome,
    chat: bool,
    slos: dict[str, float] | None,
    checks: list[Threshold],
    started: float,
) -> tuple[dict[str, Any], list[Verdict]]:
    from studioctl.bench import report, thresholds
    from studioctl.bench import target as targets
    from studioctl.bench.metrics import flat

    verdicts = thresholds.check(checks, flat(outcome.summary))
    doc = report.document(
        targets.evicted(where, keep),
        workload,
        inputs,
        outcome,
        chat=chat,
        slo=slos,
        verdicts=verdicts,
        started_at=started,
    )
    return doc, [v for v in verdicts if v.crossed]


def _show(doc: dict[str, Any], *, as_json: bool) -> None:
    from studioctl import ui
    from studioctl.bench import report

    if as_json:
        typer.echo(report.dumps(doc))
        return
    for line in report.summary_lines(doc):
        typer.echo(line)
    rows, headers = report.table(doc)
    ui.table(rows, headers)
