"""The typed control-API client: HTTP over the daemon's Unix socket.

Checks the daemon's API version on the first answer, translates error envelopes back into
StudioErrors (same exit codes on both sides), and starts the daemon when it is not running
and ``daemon.autostart`` is on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

from studioctl import API_VERSION, paths
from studioctl.errors import DaemonUnreachable, StudioError, from_envelope
from studioctl.httpanswer import HttpAnswer

if TYPE_CHECKING:
    from studioctl.api import models as M
    from studioctl.api.models import AdoptRequest, EvictRequest, LaunchRequest, SwitchRequest
    from studioctl.api.types import (
        EngineKey,
        InstanceInfo,
        InstanceList,
        JsonObject,
        PreloadAnswer,
        Report,
        ShutdownAnswer,
        Status,
        StreamMessage,
        UnloadAnswer,
        VersionInfo,
    )

#: What the client sends: a JSON object (``api.models.body`` of a request model), or none.
Body: TypeAlias = "JsonObject | None"
#: Query parameters; None values are left out.
Params: TypeAlias = "Mapping[str, str | int | float | None] | None"

API_HEADER = "x-studioctl-api"

# Bodies of plain (not streamed) answers are read whole: bounded, so a confused peer on the
# socket cannot make the CLI buffer without limit.
_MAX_BODY = 64 << 20


class Client:
    """HTTP/1.1 over the daemon's Unix socket, on a plain socket (see ``HttpAnswer``).

    ``status`` and ``ps`` are typed all day and polled by scripts: httpx (with httpcore,
    anyio and its optional rich/trio imports), and even ``http.client`` (which imports the
    email parser and ssl), cost more than the request itself. One connection per request
    (``Connection: close``): connecting to a Unix socket costs microseconds, and no idle
    keep-alive connection can be closed under a later request.
    """

    def __init__(self, socket_path: Path | None = None, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path or paths.control_socket()
        self.timeout = timeout  # connecting and sending; answers may take as long as they take
        self._checked = False
        self._dir_checked = False
        self._open: HttpAnswer | None = None  # a stream being read

    # -------------------------------------------------------------- transport

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_version(self, resp: HttpAnswer) -> None:
        if self._checked:
            return
        got = resp.headers.get(API_HEADER)
        if got is not None and got != str(API_VERSION):
            raise StudioError(
                f"the daemon speaks control API v{got}, this studioctl speaks v{API_VERSION}",
                code="api_mismatch",
                hint="restart the daemon with this version: studioctl daemon stop && "
                "studioctl daemon start",
            )
        self._checked = True

    def _unreachable(self, why: str | None = None) -> DaemonUnreachable:
        return DaemonUnreachable(
            f"the studioctl daemon is not running (no answer on {self.socket_path}"
            + (f": {why})" if why else ")"),
            hint="studioctl daemon start",
        )

    def _send(self, method: str, path: str, json_body: Body, params: Params) -> HttpAnswer:
        """Connect, send one request, read the answer's head; the caller reads the body and
        closes the answer (which closes the connection)."""
        import socket
        from urllib.parse import urlencode

        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                path += "?" + urlencode(query)
        if not self._dir_checked:
            # A socket in a folder another user controls may be theirs, not our daemon's:
            # refused before we send anything to it (the daemon refuses to bind there too).
            paths.private_dir(self.socket_path.parent, create=False)
            self._dir_checked = True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise self._unreachable() from exc
        except OSError as exc:  # e.g. the socket of another user, a timeout
            sock.close()
            raise self._unreachable(exc.strerror or str(exc)) from exc
        resp: HttpAnswer | None = None
        try:
            body = b"" if json_body is None else json.dumps(json_body).encode()
            head = f"{method} {path} HTTP/1.1\r\nHost: studioctl\r\nConnection: close\r\n"
            if json_body is not None:
                head += "Content-Type: application/json\r\n"
            if json_body is not None or method not in ("GET", "HEAD"):
                head += f"Content-Length: {len(body)}\r\n"
            sock.sendall(head.encode() + b"\r\n" + body)
            sock.settimeout(None)  # a launch answers when the engine is ready
            resp = HttpAnswer(sock)
            self._check_version(resp)
        except BaseException as exc:
            if resp is not None:
                resp.close()
            sock.close()
            if isinstance(exc, OSError):
                raise DaemonUnreachable(f"lost the daemon connection: {exc!r}") from exc
            raise
        return resp

    def request(
        self, method: str, path: str, *, json_body: Body = None, params: Params = None
    ) -> JsonObject:
        """One request; its answer's JSON object, or the StudioError its envelope names."""
        resp = self._send(method, path, json_body, params)
        try:
            raw = resp.read_all(_MAX_BODY + 1)
        except OSError as exc:
            raise DaemonUnreachable(f"lost the daemon connection: {exc!r}") from exc
        finally:
            resp.close()
        if len(raw) > _MAX_BODY:
            raise StudioError(f"the daemon's answer to {method} {path} is over {_MAX_BODY} bytes")
        return _decode(resp.status, raw)

    def stream_lines(
        self, method: str, path: str, *, json_body: Body = None, params: Params = None
    ) -> Iterator[str]:
        """Lines of a streamed answer (NDJSON, logs, SSE), each as soon as it arrives."""
        resp = self._send(method, path, json_body, params)
        self._open = resp
        try:
            if resp.status >= 400:
                _decode(resp.status, resp.read_all(_MAX_BODY))
            pending = b""
            while True:
                data = resp.read_some()  # what has arrived, without waiting for more
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield _text(line)
            if pending:
                yield _text(pending)
        except OSError as exc:
            raise DaemonUnreachable(f"the daemon closed the stream: {exc!r}") from exc
        finally:
            resp.close()
            self._open = None

    def ping(self) -> VersionInfo | None:
        try:
            return cast("VersionInfo", self.request("GET", "/version"))
        except DaemonUnreachable:
            return None

    # -------------------------------------------------------------- API
    # Requests are the models of ``api.models``; answers the TypedDicts of ``api.types``
    # (no pydantic on the way to ``status`` and ``ps``).

    def status(self) -> Status:
        return cast("Status", self.request("GET", "/status"))

    def instances(self, *, include_stopped: bool = False, foreign: bool = False) -> InstanceList:
        params = {"all": "1" if include_stopped else "0", "foreign": "1" if foreign else "0"}
        return cast("InstanceList", self.request("GET", "/instances", params=params))

    def instance(self, target: str) -> InstanceInfo:
        return cast("InstanceInfo", self.request("GET", f"/instances/{path_segment(target)}"))

    def launch_stream(self, req: LaunchRequest) -> Iterator[StreamMessage]:
        return self._operation("/instances", req.model_copy(update={"stream": True}))

    def launch(self, req: LaunchRequest) -> InstanceInfo:
        from studioctl.api.models import body

        return cast("InstanceInfo", self.request("POST", "/instances", json_body=body(req)))

    def evict(self, target: str, req: EvictRequest) -> Report:
        from studioctl.api.models import body

        path = f"/instances/{path_segment(target)}/evict"
        return cast("Report", self.request("POST", path, json_body=body(req)))

    def unload(self, req: M.UnloadRequest) -> UnloadAnswer:
        from studioctl.api.models import body

        return cast("UnloadAnswer", self.request("POST", "/models/unload", json_body=body(req)))

    def preload(self, req: M.PreloadRequest) -> PreloadAnswer:
        from studioctl.api.models import body

        return cast("PreloadAnswer", self.request("POST", "/models/preload", json_body=body(req)))

    def switch_stream(self, req: SwitchRequest) -> Iterator[StreamMessage]:
        return self._operation("/switch", req.model_copy(update={"stream": True}))

    def _operation(self, path: str, req: LaunchRequest | SwitchRequest) -> Iterator[StreamMessage]:
        """A streamed launch or switch: its NDJSON lines, each as it arrives."""
        from studioctl.api.models import body

        for line in self.stream_lines("POST", path, json_body=body(req)):
            if line.strip():
                yield json.loads(line)

    def adopt(self, req: AdoptRequest) -> InstanceInfo:
        from studioctl.api.models import body

        return cast("InstanceInfo", self.request("POST", "/adopt", json_body=body(req)))

    def shutdown(self, *, stop_engines: bool = False) -> ShutdownAnswer:
        # Built by hand, not from ShutdownRequest: `daemon stop` stays free of pydantic.
        answer = self.request("POST", "/daemon/shutdown", json_body={"stop_engines": stop_engines})
        return cast("ShutdownAnswer", answer)

    def telemetry(self) -> JsonObject:
        """The daemon's current telemetry snapshot (``studioctl top``)."""
        return self.request("GET", "/telemetry")

    def stats(self, recipe: str | None = None) -> list[JsonObject]:
        """Lifetime figures and peaks per recipe (``studioctl stats``)."""
        data = self.request("GET", "/stats", params={"recipe": recipe or None})
        return cast("list[JsonObject]", data.get("recipes") or [])

    def requests(self, request_id: str | None = None, params: Params = None) -> JsonObject:
        """The request log (``studioctl requests``): rows by filter (``params``: tenant,
        model, status, since, limit, after), or one request with its stored bodies."""
        if request_id is not None:
            return self.request("GET", f"/requests/{path_segment(request_id)}")
        return self.request("GET", "/requests", params=params)

    def mailbox(self, request_id: str | None = None, params: Params = None) -> JsonObject:
        """The mailbox (``studioctl mailbox``): every tenant's records (``params``: tenant,
        limit), or one record with its response, delivery state and attempts."""
        if request_id is not None:
            return self.request("GET", f"/mailbox/{path_segment(request_id)}")
        return self.request("GET", "/mailbox", params=params)

    def mailbox_delete(self, request_id: str) -> JsonObject:
        """Delete one record (``studioctl mailbox rm``); NotFoundError if there is none."""
        return self.request("DELETE", f"/mailbox/{path_segment(request_id)}")

    def mailbox_redeliver(self, request_id: str, body: JsonObject | None = None) -> JsonObject:
        """Deliver a record's webhook again now (``studioctl mailbox redeliver``); ``body``:
        optional ``url``, ``bearer_token`` and ``headers`` overrides."""
        path = f"/mailbox/{path_segment(request_id)}/webhook"
        return self.request("POST", path, json_body=body or {})


def path_segment(value: str) -> str:
    """``value`` as one path segment (an id never holds '/', but a typo may)."""
    from urllib.parse import quote

    return quote(value, safe="")


def _text(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", "replace")


def _decode(status: int, raw: bytes) -> JsonObject:
    try:
        data = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")
        data = {"error": {"message": text or f"HTTP {status}"}}
    if status >= 400:
        raise envelope_error(status, data)
    return cast("JsonObject", data)


def envelope_error(status: int, data: object) -> StudioError:
    """The StudioError of an error answer (or of a stream's error message): the class the
    envelope's code names (``errors.from_envelope``), so exit codes match local ones."""
    err = data.get("error") if isinstance(data, dict) else data
    if not isinstance(err, dict):  # not our envelope: show (a bounded part of) what came
        err = {"message": str(err)[:500] or f"HTTP {status}"}
    return from_envelope(status, {"error": err})


# ------------------------------------------------------------------ daemon process


def start_daemon(*, timeout: float = 30.0, socket_path: Path | None = None) -> VersionInfo:
    """Start ``studioctl daemon run`` detached; return its /version once the socket answers.

    Fails with the daemon's own error and exit code when it reported one (start_report),
    else with its last log lines, when it exits or does not answer in time. Used by
    ``daemon start`` and by autostart alike.
    """
    from studioctl.start_report import check_log_writable, reported_failure

    check_log_writable()
    t0 = time.time()
    try:
        return _start_daemon(timeout=timeout, socket_path=socket_path)
    except DaemonUnreachable as exc:
        failure = reported_failure(since=t0)
        if failure is not None:
            raise failure from exc
        raise


def _start_daemon(*, timeout: float, socket_path: Path | None) -> VersionInfo:
    from studioctl.daemon_lock import lock_holder
    from studioctl.lifecycle.logfiles import tail_lines

    sock = socket_path or paths.control_socket()
    client = Client(sock, timeout=5.0)
    holder = lock_holder()
    if holder:
        info = client.ping()
        if info is not None:
            return info
    logfile = paths.daemon_log_file()
    paths.ensure_dir(logfile.parent)
    offset = logfile.stat().st_size if logfile.exists() else 0
    pid = _spawn_detached(
        [sys.executable, "-m", "studioctl", "daemon", "run"],
        logfile=logfile,
        env={**os.environ, "STUDIOCTL_DETACHED": "1"},
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            info = client.ping()
            if info is not None:
                return info
            if not _running(pid):
                lines = _new_lines(logfile, offset) or tail_lines(logfile, 20)
                raise DaemonUnreachable(
                    f"the daemon (pid {pid}) exited while starting",
                    hint="its log:\n  " + "\n  ".join(lines[-20:]),
                )
            time.sleep(0.1)
    finally:
        client.close()
    lines = _new_lines(logfile, offset)
    raise DaemonUnreachable(
        f"the daemon (pid {pid}) did not answer on {sock} within {timeout:g}s",
        hint="its log:\n  " + "\n  ".join(lines[-20:]),
    )


def _spawn_detached(argv: list[str], *, logfile: Path, env: dict[str, str]) -> int:
    """Start ``argv`` fully detached and return its pid.

    A short-lived ``sh`` starts it in the background and exits, so the daemon is re-parented
    (init reaps it) and is not this process's child: no zombie, no Popen left to warn about,
    and a new session keeps it out of the terminal's job control and SIGHUP.
    """
    launcher = subprocess.run(
        ["/bin/sh", "-c", '"$@" </dev/null >/dev/null 2>>"$STUDIOCTL_LOG" & echo $!', "sh", *argv],
        env={**env, "STUDIOCTL_LOG": str(logfile)},
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=30,
        check=False,
    )
    pid = launcher.stdout.strip()
    if launcher.returncode != 0 or not pid.isdigit():
        raise DaemonUnreachable(
            f"could not start the daemon: {launcher.stderr.strip() or 'no pid from /bin/sh'}"
        )
    return int(pid)


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _new_lines(path: Path, offset: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def connect(*, autostart: bool | None = None) -> Client:
    """A client to a running daemon, starting one first when allowed by settings."""
    client = Client()
    if client.ping() is not None:
        return client
    if autostart is None:
        from studioctl.settings import load_settings

        autostart = load_settings().daemon.autostart
    if not autostart:
        raise DaemonUnreachable(
            f"the studioctl daemon is not running (no answer on {client.socket_path})",
            hint="start it (systemctl start studioctl, or studioctl daemon start); "
            "daemon.autostart is off",
        )
    start_daemon()
    return client


def engine_key(client: Client, target: str) -> EngineKey:
    """An instance's engine URL and its own API key (``GET /instances/{target}/engine-key``:
    the control socket only, never the admin API over TCP): to talk to the engine directly,
    without the gateway. A function beside the class, not a method, so that it travels as
    one separate hunk."""
    path = f"/instances/{path_segment(target)}/engine-key"
    return cast("EngineKey", client.request("GET", path))
