"""``studioctl tenant`` and ``studioctl usage``: gateway tenants, API keys, usage.

They talk to the daemon's admin routes over the control socket.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from studioctl.cli.app import app

tenant_app = typer.Typer(
    name="tenant",
    help="Gateway tenants: API keys and per-tenant limits.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
key_app = typer.Typer(
    name="key", help="A tenant's API keys.", no_args_is_help=True, rich_markup_mode=None
)
tenant_app.add_typer(key_app, name="key")
app.add_typer(tenant_app, name="tenant")

_JSON = typer.Option(False, "--json", help="Print JSON.")


def _limit_options(
    max_concurrent: int | None,
    rpm: int | None,
    tpm: int | None,
    max_context: int | None,
    max_output: int | None,
) -> dict[str, int]:
    fields = {
        "max_concurrent": max_concurrent,
        "rpm": rpm,
        "tpm": tpm,
        "max_context_tokens": max_context,
        "max_output_tokens": max_output,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _webhook_flags(webhooks: bool | None, url_override: bool | None) -> dict[str, bool]:
    """The tenant's webhook flags given on the command line (None: not given)."""
    flags = {"webhooks": webhooks, "webhook_url_override": url_override}
    return {k: v for k, v in flags.items() if v is not None}


_WEBHOOKS = typer.Option(
    None, "--webhooks/--no-webhooks", help="May its requests ask for webhooks (default yes)."
)
_URL_OVERRIDE = typer.Option(
    None,
    "--webhook-url-override/--no-webhook-url-override",
    help="May its requests name their own webhook URL (X-Webhook-URL; default no).",
)


def _models(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [m.strip() for m in value.split(",") if m.strip()]


def _call(method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    from studioctl.client import connect

    with connect() as client:
        return client.request(method, path, json_body=body, params=params)


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _print_tenant(t: dict[str, Any]) -> None:
    lim = t["limits"]
    models = ",".join(lim.get("allowed_models") or []) or "all"
    typer.echo(
        f"{t['name']} ({t['id']}) {'enabled' if t['enabled'] else 'DISABLED'}, "
        f"profile {t['profile']}: concurrent {lim['max_concurrent']}, rpm {lim['rpm']}, "
        f"tpm {lim['tpm']}, context {lim['max_context_tokens']}, "
        f"output {lim['max_output_tokens']}, models {models}"
        + (", bodies logged" if lim.get("log_bodies") else "")
        + (", webhooks refused" if lim.get("webhooks") is False else "")
        + (", webhook URL override" if lim.get("webhook_url_override") else "")
    )


@tenant_app.command("create")
def create(
    name: str = typer.Argument(..., help="Tenant name (letters, digits, - _ .)."),
    profile: str = typer.Option("standard", "--profile", help="conservative, standard or pro."),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent"),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute."),
    tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute."),
    max_context: int | None = typer.Option(None, "--max-context", help="Prompt token cap."),
    max_output: int | None = typer.Option(None, "--max-output", help="max_tokens cap."),
    models: str | None = typer.Option(None, "--models", help="Allowed models, a,b (default all)."),
    webhooks: bool | None = _WEBHOOKS,
    url_override: bool | None = _URL_OVERRIDE,
    as_json: bool = _JSON,
) -> None:
    """Create a tenant and print its first API key (shown once: only its hash is kept).

    Example: studioctl tenant create acme --profile pro --rpm 1200
    """
    out = _call(
        "POST",
        "/tenants",
        {
            "name": name,
            "profile": profile,
            "overrides": {
                **_limit_options(max_concurrent, rpm, tpm, max_context, max_output),
                **_webhook_flags(webhooks, url_override),
            },
            "allowed_models": _models(models),
        },
    )
    if as_json:
        _echo(out)
        return
    _print_tenant(out["tenant"])
    typer.echo(f"API key (shown once, store it now): {out['key']}")


@tenant_app.command("list")
def list_(as_json: bool = _JSON) -> None:
    """All tenants with their effective limits."""
    from studioctl.ui import table

    out = _call("GET", "/tenants")
    if as_json:
        _echo(out)
        return
    rows = []
    for t in out["tenants"]:
        lim = t["limits"]
        rows.append(
            [
                t["name"],
                t["id"],
                "yes" if t["enabled"] else "no",
                t["profile"],
                lim["max_concurrent"],
                lim["rpm"],
                lim["tpm"],
                lim["max_context_tokens"],
                lim["max_output_tokens"],
                ",".join(lim.get("allowed_models") or []) or "all",
            ]
        )
    if not rows:
        typer.echo("no tenants (create one: studioctl tenant create NAME)")
        return
    table(
        rows,
        [
            "name",
            "id",
            "enabled",
            "profile",
            "concurrent",
            "rpm",
            "tpm",
            "context",
            "output",
            "models",
        ],
    )


@tenant_app.command("show")
def show(tenant: str = typer.Argument(..., help="Name or id."), as_json: bool = _JSON) -> None:
    """One tenant, its limits and its keys (prefixes only)."""
    out = _call("GET", f"/tenants/{tenant}")
    if as_json:
        _echo(out)
        return
    _print_tenant(out)
    for k in out.get("keys", []):
        typer.echo(f"  key {k['prefix']}…  {k['status']}")


@tenant_app.command("set")
def set_(
    tenant: str = typer.Argument(..., help="Name or id."),
    profile: str | None = typer.Option(None, "--profile"),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent"),
    rpm: int | None = typer.Option(None, "--rpm"),
    tpm: int | None = typer.Option(None, "--tpm"),
    max_context: int | None = typer.Option(None, "--max-context"),
    max_output: int | None = typer.Option(None, "--max-output"),
    models: str | None = typer.Option(None, "--models", help="Allowed models (* = all)."),
    log_bodies: bool | None = typer.Option(
        None,
        "--log-bodies/--no-log-bodies",
        help="Store the tenant's request and answer bodies (debugging; capped, pruned).",
    ),
    webhooks: bool | None = _WEBHOOKS,
    url_override: bool | None = _URL_OVERRIDE,
    as_json: bool = _JSON,
) -> None:
    """Change a tenant's profile or limits; applies to its very next request."""
    overrides: dict[str, int | bool] = {
        **_limit_options(max_concurrent, rpm, tpm, max_context, max_output),
        **_webhook_flags(webhooks, url_override),
    }
    if log_bodies is not None:
        overrides["log_bodies"] = log_bodies
    out = _call(
        "PATCH",
        f"/tenants/{tenant}",
        {"profile": profile, "overrides": overrides, "allowed_models": _models(models)},
    )
    if as_json:
        _echo(out)
    else:
        _print_tenant(out)


def _enable(tenant: str, enabled: bool, as_json: bool) -> None:
    out = _call("PATCH", f"/tenants/{tenant}", {"enabled": enabled})
    if as_json:
        _echo(out)
    else:
        _print_tenant(out)


@tenant_app.command("disable")
def disable(tenant: str = typer.Argument(...), as_json: bool = _JSON) -> None:
    """Refuse the tenant's requests (403) from the next one on; keys are kept."""
    _enable(tenant, False, as_json)


@tenant_app.command("enable")
def enable(tenant: str = typer.Argument(...), as_json: bool = _JSON) -> None:
    """Accept the tenant's requests again."""
    _enable(tenant, True, as_json)


@tenant_app.command("rm")
def rm(
    tenant: str = typer.Argument(...),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete a tenant and its keys (its usage history stays)."""
    if not yes and not typer.confirm(f"delete tenant {tenant} and all its keys?"):
        raise typer.Exit(1)
    out = _call("DELETE", f"/tenants/{tenant}")
    typer.echo(f"deleted {out['deleted']['name']} ({out['deleted']['id']})")


@key_app.command("create")
def key_create(tenant: str = typer.Argument(...), as_json: bool = _JSON) -> None:
    """Issue an additional key for the tenant (shown once)."""
    out = _call("POST", f"/tenants/{tenant}/keys")
    if as_json:
        _echo(out)
    else:
        typer.echo(out["key"])


@key_app.command("rotate")
def key_rotate(
    tenant: str = typer.Argument(...),
    grace: str = typer.Option(
        "24h", "--grace", help="How long the old keys stay valid: 0, 30m, 24h, 7d."
    ),
    as_json: bool = _JSON,
) -> None:
    """Issue a new key; the tenant's other keys expire after the grace period."""
    from studioctl.api.params import parse_window

    grace_s = 0.0 if grace.strip() in ("0", "0s", "now") else parse_window(grace.strip())
    out = _call("POST", f"/tenants/{tenant}/keys/rotate", {"grace_s": grace_s})
    if as_json:
        _echo(out)
    else:
        typer.echo(out["key"])
        typer.echo(f"(old keys valid for {grace})" if grace_s else "(old keys revoked)", err=True)


@key_app.command("revoke")
def key_revoke(
    key: str = typer.Argument(..., help="Key prefix (as listed) or key id."),
    tenant: str | None = typer.Option(None, "--tenant"),
    as_json: bool = _JSON,
) -> None:
    """Revoke a key; the very next request with it is refused."""
    out = _call("POST", f"/keys/{key}/revoke", {"tenant": tenant})
    if as_json:
        _echo(out)
    else:
        typer.echo(f"revoked {out['prefix']}…")


@key_app.command("list")
def key_list(tenant: str = typer.Argument(...), as_json: bool = _JSON) -> None:
    """The tenant's keys: prefixes, status, dates (never the keys)."""
    from studioctl.ui import table

    out = _call("GET", f"/tenants/{tenant}/keys")
    if as_json:
        _echo(out)
        return

    def t(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"

    table(
        [
            [
                k["prefix"] + "…",
                k["status"],
                t(k["created_at"]),
                t(k["expires_at"]),
                t(k["last_used_at"]),
            ]
            for k in out["keys"]
        ],
        ["key", "status", "created", "expires", "last used"],
    )


@app.command()
def usage(
    window: str = typer.Option("24h", "--window", help="1h, 24h, 7d or 30d."),
    tenant: str | None = typer.Option(None, "--tenant"),
    model: str | None = typer.Option(None, "--model"),
    as_json: bool = _JSON,
) -> None:
    """Gateway usage: requests, errors, tokens, latency and TTFT percentiles."""
    from studioctl.ui import table

    params = {
        "window": window,
        **({"tenant": tenant} if tenant else {}),
        **({"model": model} if model else {}),
    }
    out = _call("GET", "/usage", params=params)
    if as_json:
        _echo(out)
        return
    names = out.get("tenant_names", {})

    def row(label: str, s: dict[str, Any]) -> list[Any]:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        return [
            label,
            s["requests"],
            s["errors"],
            s["prompt_tokens"],
            s["completion_tokens"],
            ms(s["latency_p50_ms"]),
            ms(s["latency_p95_ms"]),
            ms(s["ttft_p50_ms"]),
            ms(s["ttft_p95_ms"]),
        ]

    headers = [
        "",
        "requests",
        "errors",
        "prompt tok",
        "completion tok",
        "p50 ms",
        "p95 ms",
        "ttft p50",
        "ttft p95",
    ]
    rows = [row(f"total ({window})", out["total"])]
    rows += [
        row(f"tenant {names.get(k, k) or '(none)'}", v) for k, v in sorted(out["by_tenant"].items())
    ]
    rows += [row(f"model {k or '(none)'}", v) for k, v in sorted(out["by_model"].items())]
    table(rows, headers)
