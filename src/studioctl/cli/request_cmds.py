"""``studioctl requests``: the gateway's request log (usage rows), listed, followed, shown.

``studioctl requests`` lists rows newest first; ``-f`` prints the last ones oldest first and
then every new row as the daemon writes it (polling ``GET /requests?after=<last id>``);
``--json`` prints the daemon's answer as one JSON document, or with ``-f`` one JSON object
per row and line. ``studioctl requests show ID`` prints one request, with its bodies when a
recipe or tenant with ``log_bodies`` had them stored.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from studioctl.cli.app import app

requests_app = typer.Typer(
    help="The gateway's request log: one row per request (ids, status, tokens, latency).",
    no_args_is_help=False,
    invoke_without_command=True,
    rich_markup_mode=None,
)
app.add_typer(requests_app, name="requests")

#: The largest --limit (the daemon's bound too).
MAX_LIMIT = 10_000
# How often -f asks for new rows, and how many it takes per ask.
POLL_S = 0.5
_FOLLOW_BATCH = 1000

_COLUMNS = ("request id", "time", "tenant", "model", "status", "in", "out", "ms", "ttft", "queue")
_WIDTHS = (16, 19, 12, 20, 6, 6, 6, 7, 6, 6)


def _filters(
    tenant: str | None, model: str | None, status: str | None, since: str | None, limit: int
) -> dict[str, str | int]:
    """The query parameters, checked here first (the daemon checks them again)."""
    from studioctl.api import params as P

    if status is not None:
        P.parse_status(status)
    if since is not None:
        P.parse_since(since)
    if not 1 <= limit <= MAX_LIMIT:
        raise P.bad("limit", f"must be an integer from 1 to {MAX_LIMIT}, got {limit}")
    out: dict[str, str | int] = {"limit": limit}
    for name, value in (("tenant", tenant), ("model", model), ("status", status)):
        if value is not None:
            out[name] = value
    if since is not None:
        out["since"] = since
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _cells(r: dict[str, Any]) -> list[str]:
    status = str(r["status"])
    if r.get("error_code"):
        status += f" {r['error_code']}"
    return [
        r["request_id"] or f"#{r['id']}",  # rows from before request ids
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])),
        r.get("tenant") or "-",
        r["model"] or "-",
        status,
        str(r["prompt_tokens"]),
        str(r["completion_tokens"]),
        _ms(r["duration_ms"]),
        _ms(r["ttft_ms"]),
        _ms(r["queue_ms"]),
    ]


def _line(cells: list[str], widths: tuple[int, ...] | list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _print_rows(rows: list[dict[str, Any]]) -> None:
    cells = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(_COLUMNS)]
    typer.echo(_line(list(_COLUMNS), widths))
    for c in cells:
        typer.echo(_line(c, widths))


def _echo_json(data: Any, indent: int | None = None) -> None:
    typer.echo(json.dumps(data, indent=indent, default=str))


@requests_app.callback()
def requests(
    ctx: typer.Context,
    tenant: str | None = typer.Option(None, "--tenant", help="A tenant's name or id."),
    model: str | None = typer.Option(None, "--model", help="A model name as requested."),
    status: str | None = typer.Option(None, "--status", help="A status (429) or class (4xx)."),
    since: str | None = typer.Option(None, "--since", help="How far back: 15m, 1h, 7d."),
    limit: int = typer.Option(
        100, "--limit", "-n", help=f"At most this many rows (1-{MAX_LIMIT})."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new rows."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON document (with -f: one JSON object per row and line)."
    ),
) -> None:
    """List the gateway's requests, newest first (-f: follow new ones)."""
    if ctx.invoked_subcommand is not None:
        return
    from studioctl.client import connect

    params = _filters(tenant, model, status, since, limit)
    with connect() as client:
        out: Any = client.requests(params=params)
        if not follow:
            if as_json:
                _echo_json(out, indent=2)
            else:
                _print_rows(out["data"])
            return
        _follow(client, params, out, as_json)


def _follow(client: Any, params: dict[str, str | int], first: Any, as_json: bool) -> None:
    """Print ``first``'s rows oldest first, then every new row until interrupted."""
    if not as_json:
        typer.echo(_line(list(_COLUMNS), _WIDTHS))
    last = first["last_id"]
    rows = list(reversed(first["data"]))
    params = {**params, "limit": _FOLLOW_BATCH}
    params.pop("since", None)  # the rows after ``last`` are newer anyway
    try:
        while True:
            for r in rows:
                if as_json:
                    _echo_json(r)
                else:
                    typer.echo(_line(_cells(r), _WIDTHS))
            if len(rows) < _FOLLOW_BATCH:
                time.sleep(POLL_S)
            out: Any = client.requests(params={**params, "after": last})
            rows, last = out["data"], out["last_id"]
    except KeyboardInterrupt:
        return


@requests_app.command("show")
def show(
    request_id: str = typer.Argument(..., help="The request id (the X-Request-Id answered)."),
    as_json: bool = typer.Option(False, "--json", help="Print the daemon's answer as JSON."),
) -> None:
    """One request: its usage row, and its bodies when log_bodies stored them."""
    from studioctl.client import connect

    with connect() as client:
        out: Any = client.requests(request_id)
    if as_json:
        _echo_json(out, indent=2)
        return
    for i, r in enumerate(out["data"]):
        if i:
            typer.echo("")  # a client reused the id: each request in turn, newest first
        for name, value in zip(_COLUMNS, _cells(r), strict=True):
            typer.echo(f"{name + ':':12} {value}")
        typer.echo(f"{'instance:':12} {r['instance_id'] or '-'}")
        typer.echo(f"{'streamed:':12} {'yes' if r['streamed'] else 'no'}")
        typer.echo(f"{'disconnected:':12} {'yes' if r['disconnected'] else 'no'}")
        if "request_body" not in r:
            typer.echo("bodies:      not stored (log_bodies is off for its recipe and tenant)")
            continue
        if r.get("truncated"):
            typer.echo("bodies:      cut at usage.body_max_bytes")
        typer.echo("request body:")
        typer.echo(r["request_body"] if r["request_body"] is not None else "-")
        typer.echo("response body:")
        typer.echo(r["response_body"] if r["response_body"] is not None else "-")
