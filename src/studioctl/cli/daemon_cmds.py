"""``studioctl daemon``: run in the foreground (systemd), start detached, stop, status."""

from __future__ import annotations

import json
import time

import typer

from studioctl.cli.app import app

daemon_app = typer.Typer(
    name="daemon",
    help="Run, start, stop and inspect the background daemon.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(daemon_app, name="daemon")


@daemon_app.command("run")
def run(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """Run the daemon in the foreground (for systemd: Type=notify is supported).

    Logs go to stderr and to daemon.log in the log dir. SIGTERM/SIGINT stop it
    gracefully; engines keep running and are adopted by the next daemon.
    """
    from studioctl.daemon import run as run_daemon

    raise typer.Exit(run_daemon(verbose=verbose))


@daemon_app.command("start")
def start(
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for it to answer."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start the daemon in the background; return once its control socket answers."""
    from studioctl.client import start_daemon

    info = start_daemon(timeout=timeout)
    if as_json:
        typer.echo(json.dumps(info))
    else:
        typer.echo(f"daemon running (pid {info['pid']}, v{info['version']})")


@daemon_app.command("stop")
def stop(
    stop_engines: bool = typer.Option(
        False, "--stop-engines", help="Also evict every instance (default: leave them running)."
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for it to exit."),
) -> None:
    """Stop the daemon gracefully. Engines keep running unless --stop-engines."""
    from studioctl.client import Client
    from studioctl.daemon import lock_holder
    from studioctl.errors import OperationTimeout

    pid = lock_holder()
    if pid is None:
        typer.echo("daemon is not running")
        return
    with Client() as client:
        if client.ping() is not None:
            client.shutdown(stop_engines=stop_engines)
        else:
            import os
            import signal

            if pid > 0:
                os.kill(pid, signal.SIGTERM)  # the lock's holder: ours by definition
    deadline = time.monotonic() + timeout
    while lock_holder() is not None:
        if time.monotonic() > deadline:
            raise OperationTimeout(f"daemon pid {pid} did not exit within {timeout:g}s")
        time.sleep(0.1)
    typer.echo(f"daemon stopped (pid {pid})")


@daemon_app.command("status")
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Whether the daemon runs (exit 4 when not), its pid, version and socket."""
    from studioctl import paths
    from studioctl.client import Client
    from studioctl.daemon import lock_holder
    from studioctl.errors import DaemonUnreachable

    with Client() as client:
        info = client.ping()
    if info is None:
        pid = lock_holder()
        if as_json:
            typer.echo(
                json.dumps({"running": False, "pid": pid, "socket": str(paths.control_socket())})
            )
        raise DaemonUnreachable(
            "the studioctl daemon is not running"
            + (f" (pid {pid} holds the lock but does not answer)" if pid else ""),
            hint="studioctl daemon start",
        )
    out = {"running": True, **info, "socket": str(paths.control_socket())}
    if as_json:
        typer.echo(json.dumps(out))
    else:
        typer.echo(
            f"daemon running: pid {info['pid']}, v{info['version']} "
            f"(api {info['api_version']}), socket {out['socket']}"
        )
