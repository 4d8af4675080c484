"""``studioctl daemon``: run in the foreground (systemd), start detached, stop, status,
install the systemd unit."""

from __future__ import annotations

import json
import os
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
    from studioctl.errors import StudioError

    try:
        code = run_daemon(verbose=verbose)
    except StudioError as exc:
        if os.environ.get("STUDIOCTL_DETACHED") == "1":
            from studioctl.start_report import report_failure

            report_failure(exc)  # for `daemon start`, which cannot see our stderr
        raise
    raise typer.Exit(code)


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
    """Stop the daemon gracefully. Engines keep running unless --stop-engines.

    With --stop-engines and no daemon running, the engines it left are stopped from the
    state it stored (each process checked by pid and start time).
    """
    from studioctl.client import Client
    from studioctl.daemon_lock import lock_holder
    from studioctl.errors import OperationTimeout

    pid = lock_holder()
    if pid is None:
        typer.echo("daemon is not running")
        if stop_engines:
            _stop_engines_offline()
        return
    asked = False
    with Client() as client:
        if client.ping() is not None:
            client.shutdown(stop_engines=stop_engines)
            asked = True
        else:
            import signal

            if pid > 0:
                os.kill(pid, signal.SIGTERM)  # the lock's holder: ours by definition
    deadline = time.monotonic() + timeout
    while lock_holder() is not None:
        if time.monotonic() > deadline:
            raise OperationTimeout(f"daemon pid {pid} did not exit within {timeout:g}s")
        time.sleep(0.1)
    typer.echo(f"daemon stopped (pid {pid})")
    if stop_engines and not asked:  # SIGTERM leaves engines running: stop them ourselves
        _stop_engines_offline()


def _stop_engines_offline() -> None:
    """Stop the engines recorded in the store, holding the daemon lock meanwhile."""
    import asyncio

    from studioctl import paths
    from studioctl.daemon_lock import DaemonLock
    from studioctl.errors import StudioError

    db_file = paths.database_file()
    if not db_file.exists():
        typer.echo("no engines recorded (no state database): nothing to stop")
        return
    from studioctl.lifecycle.offline_stop import stop_recorded_engines
    from studioctl.store.migrations import migrate
    from studioctl.store.sqlite import SqliteDatabase

    lock = DaemonLock(paths.daemon_lock_file())
    lock.acquire()  # a daemon starting now would adopt what we are stopping
    db = SqliteDatabase(db_file)
    try:
        migrate(db)
        reports = asyncio.run(stop_recorded_engines(db))
    finally:
        db.close()
        lock.release()
    if not reports:
        typer.echo("no engines were running")
        return
    failed = []
    for r in reports:
        how = ", ".join(r["signals"]) or "already gone"
        typer.echo(f"stopped {r['id']} (pid {r['pid']}): {how}")
        if r["leftover"]:
            failed.append(f"{r['id']}: " + ", ".join(str(p["pid"]) for p in r["leftover"]))
    if failed:
        raise StudioError("processes survived SIGKILL: " + "; ".join(failed))


@daemon_app.command("status")
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Whether the daemon runs (exit 4 when not), its pid, version and socket."""
    from studioctl import paths
    from studioctl.client import Client
    from studioctl.daemon_lock import lock_holder
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


@daemon_app.command("install-unit")
def install_unit(
    user: bool = typer.Option(
        False, "--user", help="A user unit (~/.config/systemd/user) instead of a system one."
    ),
    print_only: bool = typer.Option(False, "--print", help="Print the unit; write nothing."),
    force: bool = typer.Option(False, "--force", help="Overwrite a different unit file."),
) -> None:
    """Write the systemd unit for this install (Type=notify, engines outlive restarts).

    System: /etc/systemd/system/studioctl.service, with STUDIOCTL_HOME (default
    /var/lib/studioctl, a systemd state directory). --user: ~/.config/systemd/user, using
    your own directories. Prints the two commands to run next.
    """
    from studioctl.errors import ConflictError, StudioError
    from studioctl.systemd_unit import next_commands, render, this_install, unit_path

    text = render(this_install(user=user), user=user)
    if print_only:
        typer.echo(text, nl=False)
        return
    dest = unit_path(user=user)
    try:
        old = dest.read_text() if dest.exists() else None
    except OSError:
        old = None
    if old is not None and old != text and not force:
        raise ConflictError(f"{dest} exists and differs", hint="pass --force to overwrite it")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as exc:
        raise StudioError(
            f"cannot write {dest}: {exc.strerror}",
            hint=None if user else "a system unit needs root (sudo), or use --user",
        ) from exc
    typer.echo(f"wrote {dest}")
    typer.echo("next:")
    for cmd in next_commands(user=user):
        typer.echo(f"  {cmd}")
    home = this_install(user=user).home
    if not user and home and os.environ.get("STUDIOCTL_HOME") != home:
        typer.echo(f"and in the shells that use it: export STUDIOCTL_HOME={home}")
