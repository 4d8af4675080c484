"""``status`` and ``ps``: the commands people type all day and scripts poll.

They import neither typer nor pydantic (``studioctl.cli.main`` serves their exact spellings
before typer is loaded; benchmarks/cli_startup.py measures them): the daemon answers in about
a millisecond, so the time is what the interpreter imports.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studioctl.api.types import InstanceInfo, QueuedModel

PS_HEADERS = [
    "instance",
    "recipe",
    "backend",
    "model",
    "pid",
    "port",
    "state",
    "queued",
    "uptime",
    "restarts",
    "gpus",
    "vram",
]


def _echo(text: str) -> None:
    sys.stdout.write(text + "\n")


def echo_json(data: Any) -> None:
    _echo(json.dumps(data, indent=None, default=str))


def instance_rows(
    instances: Sequence[InstanceInfo], queued: Sequence[QueuedModel] = ()
) -> list[list[Any]]:
    """One row per instance, with the gateway's requests waiting for it (QUEUED); then one
    per model whose requests wait with no instance yet (its load is requested)."""
    from studioctl.ui import duration, human_bytes

    rows: list[list[Any]] = [
        [
            i["id"],
            i["recipe"],
            i["backend"],
            i["model"],
            i["pid"],
            i["port"],
            i["state"],
            i.get("queued", 0),
            duration(i.get("uptime_s")),
            i["restarts"],
            ",".join(map(str, i["gpus"])) or "-",
            human_bytes(i.get("vram_bytes")),  # None: no GPU/NVML, or not measured yet
        ]
        for i in instances
    ]
    for q in queued:
        if q["instance"] is None:
            rows.append(
                ["-", q["recipe"] or "-", "-", q["model"], "-", "-", "requested", q["queued"]]
                + ["-"] * 4
            )
    return rows


def show_ps(*, all_: bool, as_json: bool) -> None:
    from studioctl.client import connect
    from studioctl.ui import table

    with connect() as client:
        data = client.instances(include_stopped=all_, foreign=all_)
    if as_json:
        echo_json(data)
        return
    rows = instance_rows(data["instances"], data.get("queued", ()))
    if not rows and not data.get("foreign"):
        _echo("no instances (launch one: studioctl launch RECIPE)")
        return
    if rows:
        table(rows, PS_HEADERS)
    foreign = data.get("foreign") or []
    if foreign:
        _echo("")
        table(
            [[f["pid"], f["backend"], f["port"], f["command"][:80]] for f in foreign],
            ["pid", "backend", "port", "command"],
            title="not managed by studioctl (adopt with: studioctl adopt PID --recipe ID)",
        )


def show_status(*, as_json: bool) -> None:
    from studioctl.client import Client
    from studioctl.errors import DaemonUnreachable
    from studioctl.ui import duration, table

    with Client() as client:
        try:
            st = client.status()
        except DaemonUnreachable:
            if as_json:
                echo_json({"daemon": {"running": False}})
            raise
    if as_json:
        echo_json(st)
        return
    d = st["daemon"]
    _echo(f"daemon:  running (pid {d['pid']}, v{d['version']}, up {duration(d['uptime_s'])})")
    gw = st.get("gateway") or {}
    _echo(f"gateway: {gw.get('url') or 'off'}" + (f" ({gw['health']})" if gw.get("health") else ""))
    rows = instance_rows(st["instances"], st.get("queued", ()))
    if rows:
        table(rows, PS_HEADERS)
    else:
        _echo("no instances")
    for op in st.get("operations", []):
        _echo(f"in progress: {op['operation']} ({op['for_s']:.0f}s)")
