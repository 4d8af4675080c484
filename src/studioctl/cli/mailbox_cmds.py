"""``studioctl mailbox``: the kept results of requests whose client went away, and their
webhook deliveries (list, show with the delivery log, rm, redeliver), over the control API's
``/mailbox`` routes (every tenant's records: the admin's view)."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from studioctl.cli.app import app

mailbox_app = typer.Typer(
    help="Results kept for clients that went away, and their webhook deliveries.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(mailbox_app, name="mailbox")

_JSON = typer.Option(False, "--json", help="Print the daemon's answer as JSON.")
_ID = typer.Argument(..., help="The request id (the X-Request-Id answered).")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@mailbox_app.command("list")
def list_(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's (name or id)."),
    limit: int = typer.Option(100, "--limit", help="At most this many (1-1000), newest first."),
    as_json: bool = _JSON,
) -> None:
    """The kept records, newest first."""
    from studioctl.client import connect

    params: dict[str, str | int | float | None] = {"limit": limit, "tenant": tenant}
    with connect() as client:
        out: Any = client.mailbox(params=params)
    if as_json:
        _echo_json(out)
        return
    if not out["data"]:
        typer.echo("no records")
        return
    typer.echo(f"{'request id':32} {'created':19} {'status':10} model")
    for r in out["data"]:
        typer.echo(
            f"{r['request_id'][:32]:32} {_when(r['created']):19} {r['status']:10} "
            f"{r.get('model') or '-'}"
        )


@mailbox_app.command("show")
def show(request_id: str = _ID, as_json: bool = _JSON) -> None:
    """One record: its response, its delivery and every attempt (status code, error)."""
    from studioctl.client import connect

    with connect() as client:
        out: Any = client.mailbox(request_id)
    if as_json:
        _echo_json(out)
        return
    typer.echo(f"{'request id:':12} {out['request_id']}")
    typer.echo(f"{'tenant:':12} {out.get('tenant_id') or '-'}")
    typer.echo(f"{'model:':12} {out.get('model') or '-'}")
    typer.echo(f"{'created:':12} {_when(out['created'])}")
    typer.echo(f"{'status:':12} {out['status']}")
    usage = (
        (out.get("response") or {}).get("usage") if isinstance(out.get("response"), dict) else None
    )
    if isinstance(usage, dict):
        typer.echo(f"{'usage:':12} {json.dumps(usage, sort_keys=True)}")
    delivery = out.get("delivery")
    if delivery is None:
        typer.echo("webhook:     none")
    else:
        typer.echo(
            f"{'webhook:':12} {delivery['state']}, {delivery['tries']} of "
            f"{delivery['max_tries']} tries"
            + (f", next {_when(delivery['next_at'])}" if delivery.get("next_at") else "")
        )
    for a in out.get("attempts") or ():
        result = a["status_code"] if a["status_code"] is not None else "-"
        typer.echo(
            f"  try {a['attempt']}: {_when(a['at'])} {a['url']} -> {result}"
            f" ({a['duration_ms']:.0f} ms){'  ' + a['error'] if a['error'] else ''}"
        )


@mailbox_app.command("rm")
def rm(request_id: str = _ID, as_json: bool = _JSON) -> None:
    """Delete a record (and its delivery)."""
    from studioctl.client import connect

    with connect() as client:
        out = client.mailbox_delete(request_id)
    if as_json:
        _echo_json(out)
    else:
        typer.echo(f"deleted {request_id}")


@mailbox_app.command("redeliver")
def redeliver(
    request_id: str = _ID,
    url: str | None = typer.Option(None, "--url", help="Deliver to this URL instead."),
    bearer: str | None = typer.Option(
        None, "--bearer", envvar="STUDIOCTL_WEBHOOK_BEARER", help="Bearer token to send."
    ),
    as_json: bool = _JSON,
) -> None:
    """Deliver a record's webhook again, now (one try, logged with the others)."""
    from studioctl.client import connect

    body: dict[str, Any] = {}
    if url is not None:
        body["url"] = url
    if bearer is not None:
        body["bearer_token"] = bearer
    with connect() as client:
        out = client.mailbox_redeliver(request_id, body)
    if as_json:
        _echo_json(out)
    else:
        typer.echo(f"{out['status']}: {out['request_id']} to {out['url']}")
