"""The control API: the daemon's routes for lifecycle, events and logs (Starlette).

Served on the Unix socket (the file system is the authentication: mode 0600) and, behind
``X-Admin-Token``, on the gateway's TCP port under ``/admin/``. Every answer carries
``X-Studioctl-Api`` so the CLI can refuse a daemon of another API version. Errors are the
OpenAI envelope ``{"error": {...}}`` with the StudioError's status.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from studioctl import API_VERSION, __version__
from studioctl import api_params as P
from studioctl.errors import NotFoundError, StudioError, UsageError
from studioctl.lifecycle import logfiles
from studioctl.lifecycle.events import Event, EventBus
from studioctl.lifecycle.supervisor import Supervisor

if TYPE_CHECKING:
    from studioctl.recipes import Recipe

API_HEADER = "X-Studioctl-Api"
MAX_LOG_LINES = 1_000_000  # `logs -n`
MAX_EVENTS = 100_000  # `events -n`


@dataclass
class DaemonInfo:
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    socket: str = ""
    gateway_url: str | None = None
    shutdown: Callable[[bool], None] | None = None
    extra_status: Callable[[], Awaitable[dict[str, Any]]] | None = None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    h = {API_HEADER: str(API_VERSION)}
    if headers:
        h.update(headers)
    return JSONResponse(data, status_code=status, headers=h)


def error_response(exc: StudioError) -> JSONResponse:
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(-(-retry // 1))))
    return _json({"error": exc.to_dict()}, status=exc.http_status, headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    raw = await P.read_body(request)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"request body is not valid JSON: {exc.msg} at char {exc.pos}") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8; nested deeper than we parse
        raise UsageError(f"request body is not valid JSON: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object")
    return data


#: A recipe file a client sends is a few KiB; this bounds what the daemon will parse.
MAX_RECIPE_TEXT = 256 * 1024


def sent_recipe(value: Any, param: str) -> Recipe:
    """A recipe file that a client read and sent (``studioctl launch ./my.yaml``):
    ``{"path": its absolute path, "text": its text}``. Validated here exactly as that file
    would be in a recipe folder (the id from the file name, relative model/python paths
    from its folder, ``${VAR}`` from the daemon's environment, local paths must exist):
    the client's own check is a courtesy, not a guarantee."""
    from studioctl.recipes import SUFFIXES, parse_recipe_text

    path, text = (value.get("path"), value.get("text")) if isinstance(value, dict) else (0, 0)
    if not isinstance(path, str) or not isinstance(text, str):
        raise UsageError(
            f"{param} must be {{'path': ..., 'text': ...}} (strings)", details={"param": param}
        )
    if len(path) > 4096 or not Path(path).is_absolute() or not path.endswith((*SUFFIXES, ".json")):
        raise UsageError(
            f"{param}.path must be an absolute path to a .yaml, .yml or .json file",
            details={"param": param},
        )
    if len(text) > MAX_RECIPE_TEXT:
        raise UsageError(
            f"{param}.text is over {MAX_RECIPE_TEXT} characters", details={"param": param}
        )
    return parse_recipe_text(text, path=Path(path), label=f"{path} (as sent)")


def _on_control_socket(request: Request, what: str) -> None:
    """Recipe files and paths come only through the control socket, whose file mode limits it
    to the daemon's own user. Over TCP (the admin API, ``/admin/`` on the gateway port) the
    admin token must not become a way to run any command (a recipe's ``python:``) or read
    any file the daemon can: there, recipes are launched by id. uvicorn gives a Unix
    socket's requests no client address."""
    if request.client is not None:
        raise UsageError(
            f"{what} is accepted only on the daemon's control socket, not over TCP",
            hint="launch a recipe by id through the admin API; put the file in a recipe folder",
            details={"param": "recipe"},
        )


def recipe_id_of(target: str) -> str:
    """The recipe id a launch or switch by id-or-path will run. A relative path would be
    resolved against the daemon's working directory (``/`` under systemd), which is never
    what the caller meant: refused."""
    from studioctl.recipes import file_stem, is_path_like

    if not is_path_like(target):
        return target
    path = Path(target).expanduser()
    if not path.is_absolute():
        raise UsageError(
            f"recipe path {target[:200]!r} is relative, and the daemon does not share your "
            "working directory",
            hint="send the file (studioctl launch ./FILE does) or an absolute path",
            details={"param": "recipe"},
        )
    return file_stem(path)


def _ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, default=str) + "\n").encode()


def build_control_app(
    sup: Supervisor, bus: EventBus, info: DaemonInfo, extra_routes: list[Route] | None = None
) -> Starlette:
    """The control app; the admin routes (tenants, keys, usage) come in ``extra_routes``."""

    async def version(_: Request) -> Response:
        return _json(
            {
                "version": __version__,
                "api_version": API_VERSION,
                "pid": info.pid,
                "started_at": info.started_at,
            }
        )

    async def status(_: Request) -> Response:
        now = time.time()
        out: dict[str, Any] = {
            "daemon": {
                "pid": info.pid,
                "version": __version__,
                "api_version": API_VERSION,
                "uptime_s": now - info.started_at,
                "socket": info.socket,
            },
            "gateway": {"url": info.gateway_url},
            "instances": [i.to_dict(now) for i in sup.list()],
            "operations": sup.locks.in_progress(),
        }
        if info.extra_status is not None:
            out.update(await info.extra_status())
        return _json(out)

    async def list_instances(request: Request) -> Response:
        include = P.q_bool(request.query_params, "all")
        foreign = P.q_bool(request.query_params, "foreign")
        now = time.time()
        data = [i.to_dict(now) for i in sup.list(include_stopped=include)]
        out: dict[str, Any] = {"instances": data}
        if foreign:
            out["foreign"] = await asyncio.to_thread(sup.foreign_servers)
        return _json(out)

    async def get_instance(request: Request) -> Response:
        return _json(sup.get(request.path_params["target"]).to_dict())

    async def _streamed(
        request: Request,
        op: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
        match: Callable[[Event], bool],
    ) -> Response:
        """Run ``op`` while streaming matching events as NDJSON, then its result or error."""
        q = bus.subscribe()

        async def gen() -> AsyncIterator[bytes]:
            task = asyncio.create_task(op())
            try:
                while True:
                    getter = asyncio.create_task(q.get())
                    done, _ = await asyncio.wait(
                        {task, getter}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        ev = getter.result()
                        if match(ev):
                            yield _ndjson({"type": "event", **ev.to_dict()})
                    else:
                        getter.cancel()
                    if task in done:
                        while not q.empty():
                            ev = q.get_nowait()
                            if match(ev):
                                yield _ndjson({"type": "event", **ev.to_dict()})
                        exc = task.exception()
                        if isinstance(exc, StudioError):
                            yield _ndjson(
                                {"type": "error", "status": exc.http_status, "error": exc.to_dict()}
                            )
                        elif exc is not None:
                            yield _ndjson(
                                {
                                    "type": "error",
                                    "status": 500,
                                    "error": {"message": str(exc), "type": "internal_error"},
                                }
                            )
                        else:
                            yield _ndjson({"type": "result", "result": task.result()})
                        return
            finally:
                bus.unsubscribe(q)
                # A client that goes away does not cancel the operation: launches finish.

        return StreamingResponse(
            gen(), media_type="application/x-ndjson", headers={API_HEADER: str(API_VERSION)}
        )

    async def launch(request: Request) -> Response:
        data = await _body(request)
        recipe = data.get("recipe")
        target: str | Recipe
        if data.get("recipe_file") is not None:
            _on_control_socket(request, "a recipe file")
            target = await asyncio.to_thread(sent_recipe, data["recipe_file"], "recipe_file")
            if recipe not in (None, target.id):
                raise UsageError(
                    f"recipe {str(recipe)[:200]!r} and recipe_file (id {target.id!r}) differ",
                    details={"param": "recipe"},
                )
            recipe_id = target.id
        else:
            recipe = P.b_required_text(data, "recipe", max_len=P.MAX_PATH)
            target, recipe_id = recipe, recipe_id_of(recipe)
            if recipe_id != recipe:
                _on_control_socket(request, "a recipe path")
        port = P.b_int(data, "port", 1, 65535)
        gpus = P.gpus(data.get("gpus"))
        force = P.b_bool(data, "force")
        wait = P.b_bool(data, "wait", True)
        timeout = P.b_seconds(data, "timeout", None)
        lock_wait = P.b_bool(data, "lock_wait")

        async def op() -> dict[str, Any]:
            inst = await sup.launch(
                target,
                port=port,
                gpus=gpus,
                force=force,
                wait=wait,
                timeout=timeout,
                lock_wait=lock_wait,
            )
            return inst.to_dict()

        if P.b_bool(data, "stream"):
            # The recipe's id, never the raw argument: a path names no events.
            return await _streamed(request, op, lambda ev: ev.recipe_id == recipe_id)
        return _json(await op(), status=201)

    async def evict(request: Request) -> Response:
        data = await _body(request)
        drain_timeout = P.b_seconds(data, "drain_timeout", 30.0) or 0.0
        grace = P.b_seconds(data, "grace", 15.0) or 0.0
        force = P.b_bool(data, "force")
        lock_wait = P.b_bool(data, "lock_wait")
        stream = P.b_bool(data, "stream")
        inst = sup.get(request.path_params["target"])

        async def op() -> dict[str, Any]:
            report = await sup.evict(
                inst.id, drain_timeout=drain_timeout, grace=grace, force=force, lock_wait=lock_wait
            )
            return report.to_dict()

        if stream:
            return await _streamed(request, op, lambda ev: ev.instance_id == inst.id)
        return _json(await op())

    async def switch(request: Request) -> Response:
        data = await _body(request)
        frm = P.b_required_text(data, "from")
        to_target: str | Recipe
        if data.get("to_file") is not None:
            _on_control_socket(request, "a recipe file")
            to_target = await asyncio.to_thread(sent_recipe, data["to_file"], "to_file")
            to = to_target.id
        else:
            to_target = P.b_required_text(data, "to", max_len=P.MAX_PATH)
            to = recipe_id_of(to_target)
            if to_target != to:
                _on_control_socket(request, "a recipe path")
        port = P.b_int(data, "port", 1, 65535)
        gpus = P.gpus(data.get("gpus"))
        drain_timeout = P.b_seconds(data, "drain_timeout", 30.0) or 0.0
        grace = P.b_seconds(data, "grace", 15.0) or 0.0
        timeout = P.b_seconds(data, "timeout", None)
        lock_wait = P.b_bool(data, "lock_wait")
        stream = P.b_bool(data, "stream")
        src = sup.get(frm)

        async def op() -> dict[str, Any]:
            report = await sup.switch(
                src.id,
                to_target,
                port=port,
                gpus=gpus,
                drain_timeout=drain_timeout,
                grace=grace,
                timeout=timeout,
                lock_wait=lock_wait,
            )
            return report.to_dict()

        if stream:
            return await _streamed(
                request,
                op,
                lambda ev: ev.recipe_id in (src.recipe.id, to) or ev.kind == "switch",
            )
        return _json(await op())

    async def adopt(request: Request) -> Response:
        data = await _body(request)
        pid = P.b_int(data, "pid", 1, P.MAX_PID)
        if pid is None:
            raise P.bad("pid", "is required")
        recipe = P.b_required_text(data, "recipe", max_len=P.MAX_PATH)
        if recipe_id_of(recipe) != recipe:  # a path: absolute, and only on the socket
            _on_control_socket(request, "a recipe path")
        port = P.b_int(data, "port", 1, 65535)
        inst = await sup.adopt(pid, recipe, port=port)
        return _json(inst.to_dict(), status=201)

    async def logs(request: Request) -> Response:
        qp = request.query_params
        n = P.q_int(qp, "n", 0, MAX_LOG_LINES, 100)
        since = P.q_float(qp, "since", 0.0, 1e11)  # a Unix time
        if since is not None and "n" not in qp:
            n = 10**9  # since alone: every line after it
        follow = P.q_bool(qp, "follow")
        inst = sup.get(request.path_params["target"])
        return StreamingResponse(
            _log_stream(
                inst.log_path,
                n=n,
                follow=follow,
                since=since,
                alive=lambda: inst.state.value not in ("stopped", "failed"),
                secret=inst.api_key,
            ),
            media_type="text/plain; charset=utf-8",
            headers={API_HEADER: str(API_VERSION), "X-Log-Path": str(inst.log_path)},
        )

    async def events(request: Request) -> Response:
        from studioctl.store.events import EventRepo

        qp = request.query_params
        n = P.q_int(qp, "n", 0, MAX_EVENTS, 50)
        after = P.q_opt_int(qp, "after", 0, P.MAX_SQL_INT)
        follow = P.q_bool(qp, "follow")
        instance = P.q_text(qp, "instance")
        repo = EventRepo(sup.db)
        q = bus.subscribe() if follow else None
        past = (
            repo.since(after, limit=n) if after is not None else repo.tail(n, instance_id=instance)
        )

        def enc(ev: dict[str, Any]) -> bytes:
            payload = json.dumps(ev, default=str)
            return f"id: {ev['id']}\nevent: {ev['kind']}\ndata: {payload}\n\n".encode()

        async def gen() -> AsyncIterator[bytes]:
            try:
                for row in past:
                    d = row.to_dict()
                    if instance and d.get("instance_id") != instance:
                        continue
                    yield enc(d)
                if q is None:
                    return
                while True:
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if instance and ev.instance_id != instance:
                        continue
                    yield enc(ev.to_dict())
            finally:
                if q is not None:
                    bus.unsubscribe(q)

        return StreamingResponse(
            gen(),
            media_type="text/event-stream",
            headers={API_HEADER: str(API_VERSION), "Cache-Control": "no-cache"},
        )

    async def shutdown(request: Request) -> Response:
        data = await _body(request)
        stop_engines = P.b_bool(data, "stop_engines")
        if info.shutdown is None:
            raise StudioError("this daemon cannot be shut down over the API")
        info.shutdown(stop_engines)
        return _json({"ok": True, "pid": info.pid, "stop_engines": stop_engines}, status=202)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StudioError):
            return error_response(exc)
        return error_response(StudioError(f"internal error: {exc!r}"))

    routes = [
        Route("/version", version),
        Route("/status", status),
        Route("/instances", list_instances),
        Route("/instances", launch, methods=["POST"]),
        Route("/instances/{target}", get_instance),
        Route("/instances/{target}/evict", evict, methods=["POST"]),
        Route("/instances/{target}/logs", logs),
        Route("/switch", switch, methods=["POST"]),
        Route("/adopt", adopt, methods=["POST"]),
        Route("/events", events),
        Route("/daemon/shutdown", shutdown, methods=["POST"]),
        *(extra_routes or []),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(NotFoundError(f"no route {request.method} {request.url.path}"))

    app = Starlette(
        routes=routes,
        exception_handlers={Exception: on_error, 404: not_found, StudioError: on_error},
    )
    return app


async def _log_stream(
    path: Path,
    *,
    n: int,
    follow: bool,
    since: float | None,
    alive: Callable[[], bool],
    secret: str | None = None,
) -> AsyncIterator[bytes]:
    """The last ``n`` lines (0 = none; with ``since``, those at or after it), then with
    ``follow`` new lines as they are written, until the instance is gone.

    ``secret`` (the engine's API key) is masked in every line: SGLang prints its arguments,
    key included, and the supervisor scrubs the file only a moment later."""

    def line_bytes(line: str) -> bytes:
        if secret and secret in line:
            line = line.replace(secret, "***")
        return (line + "\n").encode()

    lines = logfiles.tail_lines(path, n, max_bytes=64 * 1024 * 1024 if since else 256 * 1024)
    if since is not None:
        lines = list(logfiles.since(lines, since))
    for line in lines:
        yield line_bytes(line)
    if not follow:
        return
    try:
        offset = path.stat().st_size
    except OSError:
        offset = 0
    follower = logfiles.LogFollower(path, offset=offset)
    idle = 0
    while True:
        new = follower.read_new()
        for line in new:
            yield line_bytes(line)
        if new:
            idle = 0
        else:
            idle += 1
            if idle % 20 == 0 and not alive():
                for line in follower.read_new():
                    yield line_bytes(line)
                return
        await asyncio.sleep(0.25)
