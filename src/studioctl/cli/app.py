"""The root typer app. Command groups live in sibling modules and register here.

Modules under ``cli/`` import nothing heavy at module level (rich, httpx, pynvml, the
store): ``studioctl --help`` must answer fast (see benchmarks/cli_startup.py).
"""

from __future__ import annotations

import os

import typer

from studioctl import __version__

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
    "serving_cmds",
    "log_cmds",
    "recipe_cmds",
    "config_cmds",
    "daemon_cmds",
    "gpu_cmds",
    "tenant_cmds",
    "request_cmds",
    "mailbox_cmds",
    "top_cmds",
    "bench_cmds",
]


# Registered at import so `typer.testing.CliRunner().invoke(app, …)` sees every command.
_register()
