"""Log commands: ``logs`` (an instance's engine log, through the daemon or from the file when
it is not running) and ``events`` (the daemon's event log, live).

Each command parses, calls the daemon through ``studioctl.client`` (or the log files through
``studioctl.lifecycle.logfiles``), and renders the lines.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import typer

from studioctl.cli.app import app
from studioctl.errors import UsageError

_JSON = typer.Option(False, "--json", help="Print JSON (one object per line when streaming).")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=None, default=str))


_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(value: str, now: float | None = None) -> float:
    """'10m', '2h', '30s', '1d', an epoch number, or an ISO time → epoch seconds."""
    now = time.time() if now is None else now
    v = value.strip()
    m = _REL.match(v)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - float(m.group(1)) * mult
    try:
        return float(v)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(v).timestamp()
    except ValueError:
        raise UsageError(
            f"--since takes 30s, 10m, 2h, 1d, an epoch or an ISO time (got {value!r})"
        ) from None


@app.command()
def logs(
    target: str = typer.Argument(..., help="Instance id or recipe id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    n: int = typer.Option(100, "-n", "--lines", help="How many lines from the end."),
    since: str | None = typer.Option(
        None, "--since", help="Only lines after: 10m, 2h, or an ISO time."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="One JSON object per line: ts (the time the line carries, else the last one "
        "seen), source (engine or studioctl), instance, line.",
    ),
) -> None:
    """Print an instance's engine log (from the daemon, or the log file when it is down)."""
    from studioctl.client import Client, path_segment

    since_ts = parse_since(since) if since else None
    params: dict[str, Any] = {"n": n, "follow": "1" if follow else "0"}
    if since_ts is not None:
        params["since"] = since_ts
    client = Client()
    try:
        if client.ping() is not None:
            out = _plain
            if as_json:  # the instance a recipe id names, for every object
                inst = client.request("GET", f"/instances/{path_segment(target)}")
                out = LogJson(str(inst["id"])).echo
            try:
                path = f"/instances/{path_segment(target)}/logs"
                for line in client.stream_lines("GET", path, params=params):
                    out(line)
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            return
    finally:
        client.close()
    _logs_from_file(target, n=n, follow=follow, since=since_ts, as_json=as_json)


def _plain(line: str) -> None:
    typer.echo(line)


class LogJson:
    """``logs --json``: each log line as one JSON object.

    Engines write stdout and stderr straight into one file, so the source tells only
    studioctl's own marker lines (``=== studioctl: launch …``) from the engine's. ``ts`` is
    the time the line carries (ISO, or vLLM's ``MM-DD HH:MM:SS``); a line without one (a
    traceback, a progress bar) gets the last one seen, as ``--since`` treats it; null
    before any.
    """

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.ts: float | None = None

    def record(self, line: str) -> dict[str, Any]:
        from studioctl.lifecycle.logfiles import line_time

        stamped = line_time(line)
        if stamped is not None:
            self.ts = stamped
        source = "studioctl" if line.startswith("=== studioctl:") else "engine"
        return {"ts": self.ts, "source": source, "instance": self.instance, "line": line}

    def echo(self, line: str) -> None:
        _echo_json(self.record(line))


def _logs_from_file(
    target: str, *, n: int, follow: bool, since: float | None, as_json: bool = False
) -> None:
    from studioctl import paths
    from studioctl.errors import NotFoundError
    from studioctl.lifecycle import logfiles

    path = logfiles.find_instance_log(paths.instance_log_dir(), target)
    if path is None:
        raise NotFoundError(
            f"no log for {target!r} in {paths.instance_log_dir()}",
            hint="the daemon is not running; `studioctl daemon start`",
        )
    sys.stderr.write(f"(daemon not running: reading {path})\n")
    out = LogJson(path.stem).echo if as_json else _plain  # the file is <instance id>.log
    for line in logfiles.read_tail(path, n, after=since):
        out(line)
    if follow:
        follower = logfiles.LogFollower(path, offset=path.stat().st_size)
        try:
            while True:
                for line in follower.read_new():
                    out(line)
                time.sleep(0.25)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


@app.command()
def events(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    n: int = typer.Option(50, "-n", help="How many past events."),
    instance: str | None = typer.Option(None, "--instance", help="Only this instance's."),
    as_json: bool = _JSON,
) -> None:
    """The daemon's event log: launches, stages, state changes, crashes, restarts."""
    from studioctl.client import connect

    params: dict[str, Any] = {"n": n, "follow": "1" if follow else "0"}
    if instance:
        params["instance"] = instance
    with connect() as client:
        try:
            for line in client.stream_lines("GET", "/events", params=params):
                if not line.startswith("data: "):
                    continue
                ev = json.loads(line[6:])
                if ev.get("kind") == "telemetry":
                    continue  # the once-a-second figures of `studioctl top`, not log events
                if as_json:
                    _echo_json(ev)
                else:
                    t = time.strftime("%H:%M:%S", time.localtime(ev["ts"]))
                    typer.echo(f"{t} {ev['kind']:<18} {ev['message']}")
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
