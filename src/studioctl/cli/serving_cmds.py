"""Serving commands: ``unload`` and ``preload`` a model by the name clients use.

A model is named by its served name, an alias or its recipe id. Both answer one JSON
document with ``--json``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from studioctl.cli.app import app
from studioctl.errors import EngineFailed

if TYPE_CHECKING:
    from studioctl.api.types import PreloadAnswer, UnloadAnswer

_JSON = typer.Option(False, "--json", help="Print the answer as one JSON document.")
_MODEL = typer.Argument(..., help="Served model name, alias or recipe id.")


@app.command()
def unload(
    model: str = _MODEL,
    drain_timeout: float = typer.Option(
        30.0, "--drain-timeout", help="Seconds to let in-flight requests finish."
    ),
    grace: float = typer.Option(15.0, "--grace", help="Seconds between SIGTERM and SIGKILL."),
    as_json: bool = _JSON,
) -> None:
    """Stop every instance of a model: in-flight requests finish (none is aborted), then
    the engine stops. A recipe loaded on demand loads again on its next request.

    Not running is not an error (exit 0); a name no recipe serves exits 3.

    Example: studioctl unload qwen-0.5b --drain-timeout 60
    """
    from studioctl.api.models import UnloadRequest
    from studioctl.client import connect

    req = UnloadRequest(model=model, drain_timeout=drain_timeout, grace=grace)
    with connect() as client:
        answer = client.unload(req)
    if as_json:
        typer.echo(json.dumps(answer, default=str))
    else:
        typer.echo(unload_text(answer))
    leftover = [p for rep in answer.get("unloaded", []) for p in rep.get("leftover", [])]
    if leftover:
        left = ", ".join(f"{p['pid']} ({p['name']})" for p in leftover)
        raise EngineFailed(f"processes survived SIGKILL: {left}")


def unload_text(answer: UnloadAnswer) -> str:
    """The human lines of an unload answer."""
    model, recipe = answer["model"], answer.get("recipe")
    if answer.get("already"):
        return f"{model} is {answer['already']} (recipe {recipe})"
    lines = []
    for rep in answer.get("unloaded", []):
        if rep.get("already"):
            lines.append(f"{rep['instance']}: already {rep['already']}")
            continue
        drained = rep.get("drained")
        drain = "skipped" if drained is None else ("done" if drained else "timed out")
        lines.append(
            f"{rep['instance']}: {rep.get('state')} in {rep.get('seconds', 0.0):.1f}s "
            f"(drain {drain})"
        )
    return f"unloaded {model} (recipe {recipe}):\n  " + "\n  ".join(lines)


@app.command()
def preload(
    model: str = _MODEL,
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        help="Seconds to wait for it to be ready (default: its readiness timeout + 120).",
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until it is ready."),
    as_json: bool = _JSON,
) -> None:
    """Load a model before its first request, as a request would: placed by the scheduler
    (idle instances evicted least recently used first, pinned recipes and groups
    respected), one launch however many requests arrive meanwhile.

    Exit codes: 0 when ready (or already ready), 3 for a name no recipe serves, 2 for a
    recipe that is not loaded on demand (launch it), 5 when it can never fit on this host,
    6 on timeout, 7 when its load fails.

    Example: studioctl preload qwen-0.5b --timeout 300
    """
    from studioctl.api.models import PreloadRequest
    from studioctl.client import connect

    req = PreloadRequest(model=model, timeout=timeout, wait=wait)
    with connect() as client:
        answer = client.preload(req)
    typer.echo(json.dumps(answer, default=str) if as_json else preload_text(answer))


def preload_text(answer: PreloadAnswer) -> str:
    """The human line of a preload answer."""
    model, recipe, inst = answer["model"], answer.get("recipe"), answer.get("instance")
    if answer.get("already"):
        return f"{model} is already {answer['already']} ({inst}, recipe {recipe})"
    if answer.get("state") == "ready":
        return f"{model} ready: {inst} (recipe {recipe}) in {answer.get('seconds', 0.0):.1f}s"
    where = f" as {inst}" if inst else ""
    return f"{model}: load requested (recipe {recipe}{where}, {answer.get('state')})"
