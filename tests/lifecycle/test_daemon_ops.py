"""Operating the daemon when things are not as expected: something in the way of the control
socket, a log dir it cannot write, the gateway port taken, a runtime dir someone else made,
``daemon stop --stop-engines`` with no daemon running, and systemd's notify protocol.
Real daemons, real processes, real sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_helpers import REPO, Daemon, alive, running_daemon
from studioctl.daemon_lock import lock_holder
from studioctl.errors import EXIT_CONFLICT, EXIT_ERROR
from studioctl.states import State
from studioctl.store.instances import InstanceRepo
from studioctl.store.sqlite import SqliteDatabase as Database

pytestmark = pytest.mark.integration

NOBODY = 65534


def no_daemon_left(d: Daemon) -> bool:
    return lock_holder(d.home / "state" / "daemon.lock") is None


# --------------------------------------------------------------------------- daemon start


def test_daemon_start_with_a_directory_at_the_socket_path() -> None:
    with running_daemon(start=False) as d:
        d.socket.mkdir(parents=True)
        os.chmod(d.socket.parent, 0o700)
        r = d.cli("daemon", "start", "--timeout", "30")
        assert r.returncode == EXIT_ERROR, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr
        assert f"cannot create the control socket {d.socket}: a directory is in the way" in r.stderr
        assert d.socket.is_dir()  # never removed
        assert no_daemon_left(d)


@pytest.mark.parametrize(
    ("command", "autostart"),
    [(("daemon", "start", "--timeout", "30"), "false"), (("events", "-n", "1"), "true")],
    ids=["daemon-start", "autostart"],
)
def test_starting_the_daemon_reports_its_own_error_and_exit_code(
    command: tuple[str, ...], autostart: str
) -> None:
    """An error only the detached daemon can see (here: its gateway port is taken), whether
    `daemon start` or a command that needs the daemon (daemon.autostart) started it."""
    with (
        socket.create_server(("127.0.0.1", 0)) as taken,
        running_daemon(start=False, gateway=True) as d,
    ):
        port = taken.getsockname()[1]
        d.env["STUDIOCTL_GATEWAY_PORT"] = str(port)
        d.env["STUDIOCTL_DAEMON_AUTOSTART"] = autostart
        r = d.cli(*command)
        assert r.returncode == EXIT_CONFLICT, (r.returncode, r.stderr)
        assert "could not start: gateway address 127.0.0.1:" + str(port) in r.stderr
        assert "is taken by" in r.stderr and "STUDIOCTL_GATEWAY_PORT" in r.stderr  # the hint
        assert no_daemon_left(d)


def _can_mount_read_only() -> bool:
    probe = tempfile.mkdtemp(prefix="ro-", dir="/tmp")
    try:
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount --bind {probe} {probe}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        os.rmdir(probe)


@pytest.mark.skipif(
    not shutil.which("unshare") or not _can_mount_read_only(),
    reason="needs a private mount namespace (root) for a read-only log dir",
)
def test_daemon_start_with_a_read_only_log_dir_says_why() -> None:
    """The log dir is a read-only mount in a private mount namespace (root writes anywhere
    else); ``daemon start`` and everything it starts run inside it."""
    with running_daemon(start=False) as d:
        log = d.home / "log"
        log.mkdir(mode=0o700)
        script = 'mount --bind "$LOG" "$LOG" && mount -o remount,bind,ro "$LOG" && exec "$@"'
        start = [sys.executable, "-m", "studioctl", "daemon", "start", "--timeout", "30"]
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", *start],
            env={**d.env, "LOG": str(log)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == EXIT_ERROR, (r.returncode, r.stderr)
        assert (
            f"error: cannot write the daemon log {log / 'daemon.log'}: Read-only file system"
            in r.stderr
        )
        assert "exited while starting" not in r.stderr
        assert no_daemon_left(d)


# --------------------------------------------------------------------------- runtime dir


@contextlib.contextmanager
def platform_dirs_env() -> Iterator[tuple[dict[str, str], Path]]:
    """An environment without STUDIOCTL_HOME or XDG_RUNTIME_DIR: the runtime dir falls back
    to ``$TMPDIR/studioctl-<uid>`` (a temporary TMPDIR here, not the real /tmp)."""
    base = Path(tempfile.mkdtemp(prefix="rtfb-", dir="/tmp"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STUDIOCTL_", "XDG_")) and k != "NOTIFY_SOCKET"
    }
    (base / "home").mkdir()
    (base / "tmp").mkdir()
    env.update(
        {
            "HOME": str(base / "home"),
            "TMPDIR": str(base / "tmp"),
            "STUDIOCTL_GATEWAY_ENABLED": "false",
            "STUDIOCTL_DAEMON_AUTOSTART": "false",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        }
    )
    try:
        yield env, base / "tmp" / f"studioctl-{os.getuid()}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _daemon_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "studioctl", "daemon", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_daemon_refuses_a_runtime_dir_made_by_another_user() -> None:
    with platform_dirs_env() as (env, runtime):
        runtime.mkdir(mode=0o777)
        os.chmod(runtime, 0o777)
        os.chown(runtime, NOBODY, NOBODY)
        r = _daemon_run(env)
        assert r.returncode == EXIT_CONFLICT, r.stderr
        assert f"refusing the runtime dir {runtime} (mode 0777, owner uid {NOBODY})" in r.stderr
        assert "writable by group and others" in r.stderr
        assert list(runtime.iterdir()) == []  # no socket was bound in it


def test_daemon_refuses_a_runtime_dir_that_is_a_symlink() -> None:
    with platform_dirs_env() as (env, runtime):
        target = runtime.parent / "elsewhere"
        target.mkdir(mode=0o700)
        runtime.symlink_to(target)
        r = _daemon_run(env)
        assert r.returncode == EXIT_CONFLICT, r.stderr
        assert f"refusing the runtime dir {runtime}: it is a symbolic link" in r.stderr
        assert list(target.iterdir()) == []


# --------------------------------------------------------------------------- stop --stop-engines


def test_stop_engines_without_a_daemon_stops_the_recorded_engines() -> None:
    with running_daemon() as d:
        d.recipe("left", env={"STANDIN_ACCESS_LOG": "0"})
        inst = d.launch("left")
        procs = [(p["pid"], p["create_time"]) for p in inst["processes"]]
        assert len(procs) >= 2  # the stand-in spawns a worker: a tree, not one process
        d.kill9()  # the daemon is gone; its engine is not
        assert all(alive(*p) for p in procs)

        r = d.cli("daemon", "stop", "--stop-engines", timeout=90)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            "daemon is not running",
            f"stopped {inst['id']} (pid {inst['pid']}): SIGTERM",
        ]
        assert not any(alive(*p) for p in procs)
        r = d.cli("daemon", "stop", "--stop-engines")
        assert r.stdout.splitlines() == ["daemon is not running", "no engines were running"]

        # Stored as a stop, not a crash ...
        db = Database(d.home / "state" / "studioctl.db")
        try:
            rec = InstanceRepo(db).require(inst["id"])
            assert (rec.state, rec.desired) == (State.STOPPED, "stopped")
            assert "no daemon running" in rec.state_reason
        finally:
            db.close()
        # ... so the next daemon restarts nothing.
        d.start()
        time.sleep(1.0)  # a few health intervals (0.3 s) for a restart to show up if wrong
        assert d.instances() == []
        assert any(
            e["kind"] == "evict" and "no daemon running" in e["message"]
            for e in d.events(instance=inst["id"])
        )


def test_stop_engines_with_no_state_at_all_says_so() -> None:
    with running_daemon(start=False) as d:
        r = d.cli("daemon", "stop", "--stop-engines")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            "daemon is not running",
            "no engines recorded (no state database): nothing to stop",
        ]


# --------------------------------------------------------------------------- systemd notify


def test_notify_on_an_abstract_socket_after_the_control_socket_answers() -> None:
    """systemd may pass an abstract-namespace NOTIFY_SOCKET ('@…'); READY=1 comes only once
    the control socket answers, STOPPING=1 when the stop begins, and nothing else."""
    name = f"studioctl-test-{os.getpid()}-{time.monotonic_ns()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind("\0" + name)
        notify.settimeout(30)
        with running_daemon({"NOTIFY_SOCKET": "@" + name}, start=False) as d:
            d.start()
            assert notify.recv(256) == b"READY=1"
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(str(d.socket))  # it answered before READY (d.start waited for it)
            assert d.proc is not None
            d.stop()
            assert notify.recv(256) == b"STOPPING=1"
            notify.settimeout(0.5)
            with pytest.raises(TimeoutError):
                notify.recv(256)
    finally:
        notify.close()
