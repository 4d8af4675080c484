"""``studioctl bench``: measure a model's serving performance (docs/bench.md).

``bench`` is a group whose default command is ``run``: ``studioctl bench TARGET …`` and
``studioctl bench --url …`` are ``bench run …``; ``bench history`` and ``bench compare`` are
its other commands (``cli/bench_history_cmds.py``). A TARGET named like a command is reached
with ``bench run history`` or ``bench -- history``. The lifecycle benchmarks (``--cold-start``,
``--switch``, ``--evict``, ``--cold-request``) are forwarded to ``cli/bench_lifecycle.py``.

Everything heavy (the load generator, uvloop, orjson, the control client's models, the
store) is imported inside the commands: ``studioctl --help`` stays fast.
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
from typer.core import TyperGroup

from studioctl.cli import bench_history_cmds
from studioctl.cli.app import app

if TYPE_CHECKING:
    from studioctl.bench.loadgen import Progress, Workload
    from studioctl.bench.report import TargetInfo
    from studioctl.bench.runner import Inputs, Outcome
    from studioctl.bench.thresholds import Threshold, Verdict
    from studioctl.client import Client

#: The command ``bench`` runs when its first word is not one of its commands.
DEFAULT = "run"
LIFECYCLE = ("cold-start", "switch", "evict", "cold-request")


class BenchGroup(TyperGroup):
    """A group with a default command: anything but a command's name (or help) goes to
    ``run``, so ``bench TARGET`` and ``bench --url URL`` work as a plain command would."""

    # Typed Any: typer vendors click, and its Context and HelpFormatter are not exported.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [DEFAULT, *args]
        result: list[str] = super().parse_args(ctx, args)
        return result

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The group's help, then the default command's options: `bench --help` shows what
        `bench TARGET` takes."""
        super().format_help(ctx, formatter)
        run = self.commands[DEFAULT]
        with type(ctx)(run, info_name=DEFAULT, parent=ctx) as sub:
            formatter.write_paragraph()
            formatter.write_text(f"Options of `{ctx.command_path} [{DEFAULT}]`:")
            run.format_options(sub, formatter)


bench_app = typer.Typer(
    name="bench",
    cls=BenchGroup,
    help="Measure serving performance (default command: run); keep, list and compare runs.\n\n"
    "studioctl bench TARGET|--url URL [OPTIONS] is `bench run`. A TARGET named like a "
    "command: `bench run history` or `bench -- history`.",
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(bench_app)


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
Timeout = Annotated[
    float | None,
    typer.Option("--timeout", min=0.001, help="Seconds per request (default 600)."),
]
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
Save = Annotated[
    bool, typer.Option("--save", help="Keep the run in the database (bench history, compare).")
]
Repeat = Annotated[
    int, typer.Option("--repeat", min=1, help="Run the workload K times: mean and spread.")
]
ColdStart = Annotated[
    str | None,
    typer.Option("--cold-start", metavar="RECIPE", help="Lifecycle: launch to first token."),
]
Switch = Annotated[
    tuple[str, str] | None,
    typer.Option("--switch", metavar="A B", help="Lifecycle: time without service, A to B."),
]
Evict = Annotated[
    str | None,
    typer.Option("--evict", metavar="TARGET", help="Lifecycle: until processes and VRAM free."),
]
ColdRequest = Annotated[
    str | None,
    typer.Option("--cold-request", metavar="MODEL", help="Lifecycle: TTFT of a cold model."),
]


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
    timeout: float | None
    slo: str | None
    fail_if: list[str] | None
    as_json: bool
    save: bool
    repeat: int
    cold_start: str | None
    switch: tuple[str, str] | None
    evict: str | None
    cold_request: str | None


@bench_app.command(DEFAULT)
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
    timeout: Timeout = None,
    slo: Slo = None,
    fail_if: FailIf = None,
    as_json: AsJson = False,
    save: Save = False,
    repeat: Repeat = 1,
    cold_start: ColdStart = None,
    switch: Switch = None,
    evict: Evict = None,
    cold_request: ColdRequest = None,
) -> None:
    """Measure serving performance: TTFT, ITL, TPOT, latency, throughput, goodput.

    Exits 8 when a --fail-if threshold is crossed, naming each one. --save keeps the run
    (its id is printed; see bench history, bench compare). Examples:
    studioctl bench --url http://127.0.0.1:8000 --model m --prompt-tokens 512 -c 8;
    studioctl bench tiny --through-gateway --rate 4 -n 200 --fail-if 'ttft_p95>500ms' --json
    """
    a = BenchArgs(**locals())
    lifecycle = _lifecycle(a)
    if lifecycle is not None:
        from studioctl.cli.bench_lifecycle import run_lifecycle

        code = run_lifecycle(
            *lifecycle,
            json_out=a.as_json,
            fail_if=list(a.fail_if or []),
            api_key=a.api_key,
            save=a.save,
            repeat=a.repeat,
            timeout_s=a.timeout,
        )
        if code:
            raise typer.Exit(code)
        return
    run(a)


def _lifecycle(a: BenchArgs) -> tuple[str, tuple[str, ...]] | None:
    """(kind, arguments) of the one lifecycle option given, or None; a usage error for two,
    or for one with TARGET or --url."""
    given = [
        (kind, args)
        for kind, args in zip(
            LIFECYCLE,
            (
                (a.cold_start,) if a.cold_start is not None else None,
                tuple(a.switch) if a.switch is not None else None,
                (a.evict,) if a.evict is not None else None,
                (a.cold_request,) if a.cold_request is not None else None,
            ),
            strict=True,
        )
        if args is not None
    ]
    if not given:
        return None
    from studioctl.errors import UsageError

    if len(given) > 1:
        names = ", ".join(f"--{kind}" for kind, _ in given)
        raise UsageError(f"{names}: give one lifecycle benchmark at a time")
    kind, args = given[0]
    if a.target is not None or a.url is not None:
        raise UsageError(f"--{kind} names what it measures: no TARGET or --url with it")
    return kind, args


def run(a: BenchArgs) -> None:
    from studioctl.bench import runner, thresholds
    from studioctl.bench.loadgen import Workload
    from studioctl.errors import StudioError, ThresholdCrossed, UsageError

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
        timeout_s=a.timeout if a.timeout is not None else 600.0,
        ignore_eos=a.ignore_eos,
    )
    inputs = runner.Inputs(a.output_tokens, a.prompt_tokens, a.dataset)
    chat = a.endpoint == "chat"
    with _target(a) as (where, client):
        if where.through_gateway and not a.api_key:
            raise UsageError(
                "the gateway needs a tenant key: --api-key or STUDIOCTL_API_KEY",
                hint="studioctl tenant key add TENANT",
            )
        ep = runner.endpoint_from_url(where.url, where.model, where.api_key or a.api_key, chat=chat)
        started = time.time()
        outcomes = []
        for _ in range(a.repeat):
            progress = _progress()
            with _live(progress, show=not a.as_json and sys.stdout.isatty()):
                outcomes.append(runner.bench(ep, workload, inputs, slos, progress))
        env = _environment(client, where)
    doc, crossed = _document(
        where, a.keep, workload, inputs, outcomes, chat, slos, checks, started, env
    )
    failure: StudioError | None = None
    if a.save:
        try:
            doc["run_id"] = _save(doc)
        except StudioError as exc:
            failure = exc  # the result is still shown: a CI job keeps its JSON
    _show(doc, as_json=a.as_json)
    if failure is not None:
        raise failure
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


def _environment(client: Client | None, where: TargetInfo) -> dict[str, Any]:
    from studioctl.bench import provenance

    return provenance.environment(client, where)


def _save(doc: dict[str, Any]) -> str:
    from studioctl.store import open_database
    from studioctl.store.bench import save_run

    db = open_database()
    try:
        return save_run(db, doc)
    finally:
        db.close()


@contextlib.contextmanager
def _target(a: BenchArgs) -> Iterator[tuple[TargetInfo, Client | None]]:
    from studioctl.bench import target as targets

    if a.url is not None:
        yield targets.from_url(a.url, a.model), None
        return
    assert a.target is not None
    from studioctl.client import connect

    with (
        connect() as client,
        targets.resolved(
            client, a.target, through_gateway=a.through_gateway, model=a.model, keep=a.keep
        ) as where,
    ):
        yield where, client


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
    outcomes: list[Outcome],
    chat: bool,
    slos: dict[str, float] | None,
    checks: list[Threshold],
    started: float,
    env: dict[str, Any],
) -> tuple[dict[str, Any], list[Verdict]]:
    from studioctl.bench import report, thresholds
    from studioctl.bench import target as targets

    verdicts = thresholds.check(checks, report.metrics_of(outcomes))
    doc = report.document(
        targets.evicted(where, keep),
        workload,
        inputs,
        outcomes[0],
        chat=chat,
        slo=slos,
        verdicts=verdicts,
        started_at=started,
        repeats=outcomes,
        environment=env,
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
    if doc["repeat"]:
        rows, headers = report.spread_table(doc)
        ui.table(rows, headers)
    if doc["run_id"]:
        typer.echo(f"saved as run {doc['run_id']}")


# After `run`: the commands in help order.
bench_app.command("history")(bench_history_cmds.history)
bench_app.command("compare")(bench_history_cmds.compare)
