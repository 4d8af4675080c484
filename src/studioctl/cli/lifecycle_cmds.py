"""Lifecycle commands: launch, evict, switch, ps, status, logs, events, adopt.

Each command parses, calls the daemon through ``studioctl.client`` (or, for ``launch
--dry-run`` and ``logs`` without a daemon, the library), and renders the answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from studioctl.cli.app import app
from studioctl.errors import EngineFailed, StudioError, UsageError

_JSON = typer.Option(False, "--json", help="Print JSON (one object per line when streaming).")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=None, default=str))


def _parse_gpus(value: str | None) -> list[int] | None:
    if value is None:
        return None
    if value.strip() in ("", "none"):
        return []
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--gpus takes GPU indices like 0,1 (got {value!r})") from None


# ------------------------------------------------------------------ launch


@app.command()
def launch(
    recipe: str = typer.Argument(..., help="Recipe id (or a path to a recipe file)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the engine is ready."),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Seconds to wait for readiness (default: the recipe's)."
    ),
    port: int | None = typer.Option(None, "--port", help="Port for the engine."),
    gpus: str | None = typer.Option(None, "--gpus", help="GPU indices, e.g. 0,1."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Launch even onto GPUs another instance uses (a recipe without gpus uses all).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the exact command and environment; start nothing."
    ),
    as_json: bool = _JSON,
) -> None:
    """Launch a recipe's engine under the daemon and wait until it is ready.

    Shows the launch stages parsed from the engine's log (weights, KV cache, API server)
    with elapsed time and an ETA from earlier launches. Exit codes: 5 when the recipe is
    already running, its port is taken or another instance uses one of its GPUs (a recipe
    without `gpus` uses every GPU of the host; --force runs both), 6 on readiness timeout,
    7 when the engine exits before it is ready (the last log lines are printed).

    Examples:
      studioctl launch tiny-cpu
      studioctl launch llama-3.1-8b-vllm --gpus 1 --port 18001
      studioctl launch tiny-cpu --dry-run
    """
    gpu_list = _parse_gpus(gpus)
    if dry_run:
        _dry_run(recipe, port=port, gpus=gpu_list, as_json=as_json)
        return
    from studioctl.api.models import LaunchRequest, SentFile
    from studioctl.client import connect

    local = _recipe_file(recipe)
    body = LaunchRequest(
        recipe=recipe if local is None else local[0],
        recipe_file=None if local is None else SentFile(**local[1]),
        port=port,
        gpus=gpu_list,
        force=force,
        wait=wait,
        timeout=timeout,
    )
    if local is not None:
        recipe = local[0]
    with connect() as client:
        if not wait:
            out = client.launch(body)
            if as_json:
                _echo_json(out)
            else:
                typer.echo(f"{out['id']}: {out['state']} (pid {out['pid']}, port {out['port']})")
            return
        result = _follow_operation(client.launch_stream(body), f"launching {recipe}", as_json)
    if as_json:
        _echo_json({"type": "result", **result})
    else:
        ready_in = result.get("stages", {}).get("ready")
        typer.echo(
            f"{result['id']} ready on {result['url']} (model {result['served_name']}"
            + (f", {ready_in:.1f}s)" if ready_in is not None else ")")
        )


def _recipe_file(target: str) -> tuple[str, dict[str, str]] | None:
    """A TARGET that is a path (holds a slash, or ends .yaml/.yml/.json): ``(recipe id,
    {"path", "text"})`` to send in place of the path, else None (a recipe id).

    The daemon resolves a relative path against its own working directory (``/`` under
    systemd) and may not read the user's home: the CLI reads the file, validates it here
    (errors name the file and line, before anything is sent) and sends its text with its
    absolute path, which anchors the recipe's relative paths and names its id. The daemon
    validates it again; it trusts nothing it is sent.
    """
    from studioctl.errors import NotFoundError
    from studioctl.recipes import is_path_like, load_recipe_file

    if not is_path_like(target):
        return None
    path = Path(target).expanduser().absolute()
    if not path.is_file():
        shown = target if target == str(path) else f"{target} ({path})"
        bare = "/" not in target  # `launch tiny.yaml`: perhaps the id was meant
        raise NotFoundError(
            f"no recipe file {shown}",
            hint=f"a recipe id is written without .yaml: {Path(target).stem}" if bare else None,
        )
    recipe = load_recipe_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    return recipe.id, {"path": str(path), "text": text}


def _follow_operation(stream: Any, title: str, as_json: bool) -> dict[str, Any]:
    """Render a streamed operation's events; return its result or raise its error."""
    from studioctl.ui import LaunchProgress

    result: dict[str, Any] | None = None
    progress = LaunchProgress(title, live=False if as_json else None)
    try:
        with progress:
            for msg in stream:
                kind = msg.get("type")
                if kind == "event":
                    data = msg.get("data") or {}
                    if as_json:
                        _echo_json(msg)
                        continue
                    if msg["kind"] == "stage":
                        if data.get("eta"):
                            progress.set_eta(data["eta"])
                        progress.stage(f"{msg['instance_id']}: {data.get('label')}", data.get("t"))
                    elif msg["kind"] == "state" and data.get("to") in ("ready", "loading"):
                        progress.tick()  # the stages already say it
                    elif msg["kind"] in ("state", "evict", "crash", "restart_scheduled"):
                        progress.stage(msg["message"])
                    else:
                        progress.tick()
                elif kind == "result":
                    result = msg["result"]
                elif kind == "error":
                    from studioctl.client import envelope_error

                    raise envelope_error(int(msg.get("status", 500)), {"error": msg["error"]})
    except KeyboardInterrupt:
        sys.stderr.write(
            "\ninterrupted: the operation goes on in the daemon "
            "(see `studioctl ps`, `studioctl events -f`)\n"
        )
        raise typer.Exit(130) from None
    if result is None:
        raise StudioError("the daemon ended the stream without a result")
    return result


def _dry_run(recipe_id: str, *, port: int | None, gpus: list[int] | None, as_json: bool) -> None:
    from studioctl import gpu
    from studioctl.engines import get_engine
    from studioctl.engines.base import REDACTED
    from studioctl.lifecycle import placement
    from studioctl.lifecycle.osproc import OsProc
    from studioctl.lifecycle.runtime import key_file_path
    from studioctl.recipes import get_recipe, recipe_dirs
    from studioctl.settings import load_settings

    settings = load_settings()
    recipe = placement.placed(get_recipe(recipe_id, recipe_dirs(settings)), settings.engines.host)
    wanted = gpus if gpus is not None else list(recipe.gpus)
    visible = gpu.device_count()
    residents, used = _daemon_placement()
    in_the_way = placement.conflicts(residents, wanted, visible)
    eng = settings.engines
    # The port launch would pick: the same picker, the same ports in use.
    chosen = placement.pick_port(
        recipe.host,
        asked=port,
        recipe_port=recipe.port,
        port_range=(eng.port_min, eng.port_max),
        used=used,
        holder=OsProc().port_holder,
    )
    # The key is made at launch: shown as *** (and its file by the name it will have).
    cmd = get_engine(recipe.backend).command(
        recipe,
        port=chosen,
        gpus=gpus,
        api_key=REDACTED,
        key_file=str(key_file_path(f"{recipe.id}-N")),
    )
    if as_json:
        _echo_json(
            {
                "recipe": recipe.id,
                "backend": recipe.backend,
                "host": recipe.host,
                "port": chosen,
                "argv": cmd.shown_argv(),
                "env": cmd.shown_env(),
                "shell": cmd.shell(),
                "gpus": sorted(placement.gpu_set(wanted, visible)),
                "visible_gpus": visible,
                "serving": recipe.serving(),
                "conflicts": [
                    {"instance": c.instance_id, "recipe": c.recipe_id, "gpus": list(c.gpus)}
                    for c in in_the_way
                ],
            }
        )
    else:
        typer.echo(cmd.shell())
        for c in in_the_way:
            sys.stderr.write(f"note: {c.message()}: launch refuses it without --force\n")


def _daemon_placement() -> tuple[list[Any], set[int]]:
    """What the daemon holds, if one is running (nothing otherwise): the instances that hold
    GPUs, and the ports of its active instances (one still starting may not listen yet)."""
    from studioctl.client import Client
    from studioctl.lifecycle import placement
    from studioctl.states import ACTIVE, State

    client = Client()
    try:
        if client.ping() is None:
            return [], set()
        listed = client.instances()["instances"]
    except StudioError:
        return [], set()
    finally:
        client.close()
    holding = {str(s) for s in (*ACTIVE, State.CRASHED)}  # as the supervisor counts them
    active = {str(s) for s in ACTIVE}
    residents = [
        placement.Resident(i["id"], i["recipe"], tuple(i.get("gpus") or ()))
        for i in listed
        if i.get("state") in holding
    ]
    return residents, {int(i["port"]) for i in listed if i.get("state") in active}


# ------------------------------------------------------------------ evict / switch / adopt


@app.command()
def evict(
    target: str = typer.Argument(..., help="Instance id or recipe id."),
    drain_timeout: float = typer.Option(
        30.0, "--drain-timeout", help="Seconds to wait for in-flight requests."
    ),
    grace: float = typer.Option(15.0, "--grace", help="Seconds between SIGTERM and SIGKILL."),
    force: bool = typer.Option(False, "--force", help="Skip draining."),
    wait_lock: bool = typer.Option(False, "--wait", help="Queue behind a running operation."),
    as_json: bool = _JSON,
) -> None:
    """Stop an instance: drain in-flight requests, SIGTERM its process group, SIGKILL after
    the grace period, then verify that every process of its tree is gone.

    Example: studioctl evict tiny-cpu --drain-timeout 10
    """
    from studioctl.api.models import EvictRequest
    from studioctl.client import connect

    req = EvictRequest(drain_timeout=drain_timeout, grace=grace, force=force, lock_wait=wait_lock)
    with connect() as client:
        rep = client.evict(target, req)
    if as_json:
        _echo_json(rep)
        return
    if rep.get("already"):
        typer.echo(f"{rep['instance']} is already {rep['already']}")
        return
    drained = rep.get("drained")
    drain = "skipped" if drained is None else ("done" if drained else "timed out")
    typer.echo(
        f"{rep['instance']}: {rep['state']} in {rep['seconds']:.1f}s "
        f"(drain {drain}; signals: {', '.join(rep['signals']) or 'none needed'})"
    )
    for p in rep.get("processes", []):
        typer.echo(f"  pid {p['pid']:>7}  {p['name']:<24} {p['how']}")
    if "vram_released" in rep:  # only with GPUs (NVML)
        from studioctl.ui import human_bytes

        held = human_bytes(rep.get("vram_bytes"))
        if rep["vram_released"]:
            typer.echo(f"  GPU memory {held} released ({rep['vram_wait_s']:.1f}s)")
        else:
            typer.echo(
                f"  GPU memory {held}: {human_bytes(rep.get('vram_still_held'))} still held "
                f"after {rep['vram_wait_s']:.1f}s by pid(s) {rep.get('vram_pids')}"
            )
    if rep.get("leftover"):
        left = ", ".join(f"{p['pid']} ({p['name']})" for p in rep["leftover"])
        raise EngineFailed(f"processes survived SIGKILL: {left}")


@app.command()
def switch(
    frm: str = typer.Argument(..., metavar="FROM", help="Running instance or recipe id."),
    to: str = typer.Argument(
        ..., metavar="TO", help="Recipe id (or a path to a recipe file) to run instead."
    ),
    port: int | None = typer.Option(None, "--port"),
    gpus: str | None = typer.Option(None, "--gpus"),
    timeout: float | None = typer.Option(None, "--timeout"),
    drain_timeout: float = typer.Option(30.0, "--drain-timeout"),
    grace: float = typer.Option(15.0, "--grace"),
    wait_lock: bool = typer.Option(False, "--wait", help="Queue behind a running operation."),
    as_json: bool = _JSON,
) -> None:
    """Replace a running instance with another recipe.

    When their GPU sets overlap: evict, then launch. When they don't: launch the new one,
    and evict the old one once the new one is ready (no gap in service).

    Example: studioctl switch tiny-cpu tiny-cpu-b
    """
    from studioctl.api.models import SentFile, SwitchRequest
    from studioctl.client import connect

    local = _recipe_file(to)
    body = SwitchRequest.model_validate(
        {
            "from": frm,
            "to": to if local is None else local[0],
            "to_file": None if local is None else SentFile(**local[1]),
            "port": port,
            "gpus": _parse_gpus(gpus),
            "timeout": timeout,
            "drain_timeout": drain_timeout,
            "grace": grace,
            "lock_wait": wait_lock,
        }
    )
    if local is not None:
        to = local[0]
    with connect() as client:
        rep = _follow_operation(client.switch_stream(body), f"switching {frm} -> {to}", as_json)
    if as_json:
        _echo_json({"type": "result", **rep})
        return
    inst = rep["instance"]
    typer.echo(
        f"switched {rep['from']} -> {inst['id']} ({rep['order']}): launch "
        f"{rep['launch_s']:.1f}s, evict {rep['evict_s']:.1f}s, gap {rep['gap_s']:.1f}s"
    )


@app.command()
def adopt(
    pid: int = typer.Argument(..., help="PID of a running vLLM/SGLang server."),
    recipe: str = typer.Option(..., "--recipe", help="The recipe it runs."),
    port: int | None = typer.Option(None, "--port", help="Its port (read from --port if not)."),
    as_json: bool = _JSON,
) -> None:
    """Take over an engine server that studioctl did not start (see `ps --all`)."""
    from studioctl.api.models import AdoptRequest
    from studioctl.client import connect
    from studioctl.recipes import is_path_like

    if is_path_like(recipe):  # the daemon does not share our working directory
        recipe = str(Path(recipe).expanduser().absolute())
    req = AdoptRequest(pid=pid, recipe=recipe, port=port)
    with connect() as client:
        out = client.adopt(req)
    if as_json:
        _echo_json(out)
    else:
        typer.echo(f"adopted pid {pid} as {out['id']} ({out['state']}, port {out['port']})")


# ------------------------------------------------------------------ ps / status


@app.command()
def ps(
    all_: bool = typer.Option(
        False,
        "--all",
        "-a",
        help="Also stopped instances, and vLLM/SGLang servers studioctl did not start.",
    ),
    as_json: bool = _JSON,
) -> None:
    """List instances: state, pid, port, uptime, restarts, GPUs, GPU memory (VRAM)."""
    from studioctl.cli.readouts import show_ps

    show_ps(all_=all_, as_json=as_json)


@app.command()
def status(as_json: bool = _JSON) -> None:
    """Daemon, gateway and instance health in one view (exit 4 when the daemon is down)."""
    from studioctl.cli.readouts import show_status

    show_status(as_json=as_json)
