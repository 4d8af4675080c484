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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import API_VERSION, paths
from studioctl.errors import (
    DaemonUnreachable,
    StudioError,
    from_envelope,
)

if TYPE_CHECKING:
    import httpx

API_HEADER = "x-studioctl-api"


class Client:
    def __init__(self, socket_path: Path | None = None, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path or paths.control_socket()
        self.timeout = timeout
        self._http: httpx.Client | None = None
        self._checked = False

    # -------------------------------------------------------------- transport

    def _client(self) -> httpx.Client:
        if self._http is None:
            import httpx

            self._http = httpx.Client(
                transport=httpx.HTTPTransport(uds=str(self.socket_path)),
                base_url="http://studioctl",
                timeout=httpx.Timeout(self.timeout, read=None),
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_version(self, resp: httpx.Response) -> None:
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

    def _socket_answers(self) -> bool:
        """Something accepts connections on the socket (a stale file from a killed daemon
        does not). Checked once per client: later calls reuse the connection."""
        if self._http is not None:
            return True
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            try:
                s.connect(str(self.socket_path))
            except OSError:
                return False
        return True

    def _unreachable(self) -> DaemonUnreachable:
        return DaemonUnreachable(
            f"the studioctl daemon is not running (no answer on {self.socket_path})",
            hint="studioctl daemon start",
        )

    def request(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        import httpx

        if not self._socket_answers():
            # No listener, no daemon (and httpcore would leak the failed socket object).
            raise self._unreachable()
        try:
            resp = self._client().request(method, path, json=json_body, params=params)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._unreachable() from exc
        except httpx.TransportError as exc:
            raise DaemonUnreachable(f"lost the daemon connection: {exc}") from exc
        self._check_version(resp)
        return _decode(resp)

    def stream_lines(
        self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> Iterator[str]:
        """Lines of a streamed answer (NDJSON, logs, SSE)."""
        import httpx

        if not self._socket_answers():
            raise self._unreachable()
        try:
            with self._client().stream(method, path, json=json_body, params=params) as resp:
                self._check_version(resp)
                if resp.status_code >= 400:
                    resp.read()
                    _decode(resp)
                yield from resp.iter_lines()
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._unreachable() from exc
        except httpx.RemoteProtocolError as exc:
            raise DaemonUnreachable(f"the daemon closed the stream: {exc}") from exc

    def ping(self) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = self.request("GET", "/version")
            return out
        except DaemonUnreachable:
            return None

    # -------------------------------------------------------------- API

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/status")
        return out

    def instances(self, *, include_stopped: bool = False, foreign: bool = False) -> dict[str, Any]:
        params = {"all": "1" if include_stopped else "0", "foreign": "1" if foreign else "0"}
        out: dict[str, Any] = self.request("GET", "/instances", params=params)
        return out

    def launch_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for line in self.stream_lines("POST", "/instances", json_body={**body, "stream": True}):
            if line.strip():
                yield json.loads(line)

    def launch(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/instances", json_body=body)
        return out

    def evict(self, target: str, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"/instances/{target}/evict", json_body=body)
        return out

    def switch_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for line in self.stream_lines("POST", "/switch", json_body={**body, "stream": True}):
            if line.strip():
                yield json.loads(line)

    def adopt(self, pid: int, recipe: str, port: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.request(
            "POST", "/adopt", json_body={"pid": pid, "recipe": recipe, "port": port}
        )
        return out

    def shutdown(self, *, stop_engines: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = self.request(
            "POST", "/daemon/shutdown", json_body={"stop_engines": stop_engines}
        )
        return out


def _decode(resp: httpx.Response) -> Any:
    try:
        data = resp.json()
    except ValueError:
        data = {"error": {"message": resp.text or f"HTTP {resp.status_code}"}}
    if resp.status_code >= 400:
        raise from_envelope(resp.status_code, data)
    return data


# ------------------------------------------------------------------ daemon process


def start_daemon(*, timeout: float = 30.0, socket_path: Path | None = None) -> dict[str, Any]:
    """Start ``studioctl daemon run`` detached; return its /version once the socket answers.

    Fails with the daemon's last log lines when it exits or does not answer in time.
    """
    from studioctl.daemon import lock_holder
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
