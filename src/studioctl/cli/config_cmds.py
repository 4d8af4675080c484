"""``studioctl config``: show the effective settings, the file path, validate a file.

Needs no daemon: the commands call ``studioctl.settings`` directly (imported inside each
command so that ``studioctl --help`` does not pay for YAML).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from studioctl.cli.app import app

config_app = typer.Typer(
    name="config",
    help="Show and check the settings (studioctl.yaml, STUDIOCTL_* variables).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(config_app, name="config")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@config_app.command("show")
def show(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the effective settings and where each value came from.

    Sources: default, file:PATH:LINE, env:VARIABLE, flag. The admin token is shown as ***.

    Example: studioctl config show --json | jq .settings.gateway.port
    """
    from studioctl.settings import all_keys, load_settings, settings_path

    path = settings_path()
    settings = load_settings()
    values = settings.to_dict(redact=True)
    if as_json:
        _echo_json(
            {
                "path": str(path),
                "exists": settings.file is not None,
                "settings": values,
                "sources": settings.sources,
            }
        )
        return
    state = "" if settings.file is not None else " (not found: defaults apply)"
    typer.echo(f"# settings file: {path}{state}")
    rows = []
    for dotted in all_keys():
        section, key = dotted.split(".")
        rows.append((dotted, _text(values[section][key]), settings.sources[dotted]))
    w_key = max(len(r[0]) for r in rows)
    w_val = min(max(len(r[1]) for r in rows), 40)
    for dotted, value, source in rows:
        typer.echo(f"{dotted:<{w_key}}  {value:<{w_val}}  {source}")


@config_app.command("path")
def path_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the settings file path and whether it exists.

    The path is --config FILE, else $STUDIOCTL_CONFIG, else <config dir>/studioctl.yaml.
    """
    from studioctl.settings import settings_path

    path = settings_path()
    exists = path.is_file()
    if as_json:
        _echo_json({"path": str(path), "exists": exists})
    else:
        typer.echo(f"{path}" + ("" if exists else " (does not exist)"))


@config_app.command("validate")
def validate(
    file: Path | None = typer.Argument(
        None,
        metavar="FILE",
        help="Settings file to check (default: the one `config path` prints).",
        show_default=False,
    ),
    as_json: bool = typer.Option(
        False, "--json", help='Print {"ok", "file", "line", "key", "error"} on stdout.'
    ),
) -> None:
    """Check a settings file: YAML, known keys, types, ranges, ${VAR} interpolation, and
    with store.backend postgres that store.url answers.

    Prints "ok: FILE" and exits 0, or prints the error (file, line, key) and exits 1.
    With --json, one object on stdout either way (same exit codes).
    """
    from studioctl.errors import ConfigError
    from studioctl.settings import settings_path, validate_settings_file

    target = (file if file is not None else settings_path()).expanduser().absolute()
    if not as_json:
        _check_connections(validate_settings_file(target))
        typer.echo(f"ok: {target}")
        return
    try:
        _check_connections(validate_settings_file(target))
    except ConfigError as exc:
        _echo_json(
            {
                "ok": False,
                "file": exc.file or str(target),
                "line": exc.line,
                "key": exc.key,
                "error": exc.message,
            }
        )
        raise typer.Exit(exc.exit_code) from None
    _echo_json({"ok": True, "file": str(target), "line": None, "key": None, "error": None})


def _check_connections(settings: Any) -> None:
    """The servers the settings name answer (ConfigError naming the URL, no password)."""
    from studioctl.store import check_connection  # store.backend postgres: reach it

    check_connection(settings.store)
    limits = settings.limits
    if limits.backend == "redis" and limits.redis_url is not None:
        from studioctl.gateway.redis_client import ping  # only for a redis deployment

        ping(limits.redis_url)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "[]"
    return str(value)
