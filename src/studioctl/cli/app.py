"""The root typer app. Command groups live in sibling modules and register here.

Modules under ``cli/`` import nothing heavy at module level (rich, httpx, pynvml, the
store): ``studioctl --help`` must answer fast (see benchmarks/cli_startup.py).
"""

from __future__ import annotations

import os
import sys

import typer

from studioctl import __version__
from studioctl.errors import StudioError

app = typer.Typer(
    name="studioctl",
    help="Run LLM inference engines (vLLM, SGLang) on your own GPU hosts.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: rendering help must not import rich
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"studioctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        metavar="FILE",
        envvar="STUDIOCTL_CONFIG",
        help="Settings file to use instead of <config dir>/studioctl.yaml.",
    ),
) -> None:
    """Run LLM inference engines (vLLM, SGLang) on your own GPU hosts."""
    if config:
        os.environ["STUDIOCTL_CONFIG"] = config


def _register() -> None:
    # Each module adds its commands to `app` (or a sub-app) when imported.
    import importlib

    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"studioctl.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"studioctl.cli.{name}":
                raise


# Command modules, in help order. A module that is not there yet is simply skipped.
_COMMAND_MODULES = [
    "lifecycle_cmds",
    "recipe_cmds",
    "config_cmds",
    "daemon_cmds",
    "gpu_cmds",
    "tenant_cmds",
    "top_cmds",
]


def report_error(exc: StudioError) -> None:
    """Print a StudioError the way every command does: one line, then a hint."""
    sys.stderr.write(f"error: {exc.message}\n")
    log_tail = getattr(exc, "log_tail", None) or exc.details.get("log_tail")
    if log_tail:
        sys.stderr.write("--- last log lines ---\n")
        for line in log_tail:
            sys.stderr.write(f"  {line}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")


# The hot read commands, served without typer's parameter handling: typer builds a pydantic
# validator for each option it processes (its own --help and completion options included),
# which cost `status` and `ps` more than the daemon's answer (issue 9.5). Only these exact
# spellings are served here; anything else (-h, a typo, an unknown flag) goes through typer,
# which prints its usual help and errors. {command: {flag: keyword argument}}.
_FAST: dict[str, dict[str, str]] = {
    "status": {"--json": "as_json"},
    "ps": {"--json": "as_json", "--all": "all_", "-a": "all_"},
}


def _fast_command(argv: list[str]) -> tuple[str, dict[str, bool]] | None:
    """``(command, flags)`` when ``argv`` is ``[--config FILE] status|ps [FLAG...]``."""
    args = list(argv)
    if args[:1] == ["--config"] and len(args) >= 2:
        os.environ["STUDIOCTL_CONFIG"] = args[1]
        args = args[2:]
    elif args and args[0].startswith("--config="):
        os.environ["STUDIOCTL_CONFIG"] = args[0].partition("=")[2]
        args = args[1:]
    if not args or args[0] not in _FAST:
        return None
    known = _FAST[args[0]]
    if any(a not in known for a in args[1:]):
        return None
    flags = dict.fromkeys(known.values(), False)
    flags.update({known[a]: True for a in args[1:]})
    return args[0], flags


def _run_fast(command: str, flags: dict[str, bool]) -> None:
    from studioctl.cli import lifecycle_cmds

    try:
        if command == "status":
            lifecycle_cmds.status(**flags)
        else:
            lifecycle_cmds.ps(**flags)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


def main() -> None:
    try:
        fast = _fast_command(sys.argv[1:])
        if fast is not None:
            _run_fast(*fast)
            return
        app()
    except StudioError as exc:
        report_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)  # 128 + SIGINT, as shells expect


# Registered at import so `typer.testing.CliRunner().invoke(app, …)` sees every command.
_register()
