"""How long `studioctl --help`, `status` and `ps` take, next to the floor: `python -c pass`.

    python benchmarks/cli_startup.py [-n 30] [--args "config --help"] [--importtime]

Starts a daemon on a temporary STUDIOCTL_HOME (gateway on a free port, no engines), runs
the installed console script (or `python -m studioctl` when it is not on PATH) for each
command and the bare interpreter in turn, N times each, prints median and p90 wall time
in milliseconds and each command's ratio to the floor, and stops the daemon by its pid.
`--args` times other arguments instead of the three. Targets: `--help` well under 200 ms
(issue #2); `status` and `ps` at most 150 ms with the daemon running (issue 9.5).
`--importtime` also prints the slowest imports (`python -X importtime`) of each command
to see what to make lazy. Not a test: nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

DEFAULT_COMMANDS = ["--help", "status", "ps"]


def _command(args: list[str]) -> list[str]:
    script = shutil.which("studioctl")
    return [script, *args] if script else [sys.executable, "-m", "studioctl", *args]


def _time_once(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return (time.perf_counter() - start) * 1000.0


def _p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _importtime(args: list[str], env: dict[str, str], top: int) -> None:
    probe = (
        "import sys; sys.argv=['studioctl', *sys.argv[1:]]\n"
        "from studioctl.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    rows: list[tuple[int, str]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative, name = line.removeprefix("import time:").split("|", 2)
        rows.append((int(cumulative), name.strip()))
    print(f"\nslowest imports (cumulative µs) for studioctl {' '.join(args)}:")
    for cumulative_us, name in sorted(rows, reverse=True)[:top]:
        print(f"  {cumulative_us / 1000:8.1f} ms  {name}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _daemon(env: dict[str, str]) -> Iterator[int]:
    """A daemon on ``env``'s STUDIOCTL_HOME for the duration; yields its pid, then stops it
    by that pid (SIGTERM, SIGKILL after 30 s): never anything found by name."""
    cmd = [sys.executable, "-m", "studioctl"]
    subprocess.run([*cmd, "daemon", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    info = subprocess.run(
        [*cmd, "daemon", "status", "--json"], env=env, check=True, capture_output=True, text=True
    )
    pid = int(json.loads(info.stdout)["pid"])
    try:
        yield pid
    finally:
        _stop(pid)


def _stop(pid: int) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="runs of each command (default 30)")
    parser.add_argument(
        "--args", help="studioctl arguments to time instead of --help, status and ps"
    )
    parser.add_argument("--importtime", action="store_true", help="show the slowest imports")
    opts = parser.parse_args()
    commands = [shlex.split(opts.args)] if opts.args else [[c] for c in DEFAULT_COMMANDS]

    with tempfile.TemporaryDirectory(prefix="sc-bench-", dir="/tmp") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
        env["STUDIOCTL_HOME"] = home  # never read or write the user's real folders
        env["STUDIOCTL_GATEWAY_PORT"] = str(_free_port())
        env["STUDIOCTL_DAEMON_AUTOSTART"] = "false"  # a dead daemon must show, not restart
        with _daemon(env) as pid:
            clis = [_command(args) for args in commands]
            floor = [sys.executable, "-c", "pass"]
            # Warm the OS caches (and .pyc files) once; then alternate so all see the same load.
            for cmd in [*clis, floor]:
                _time_once(cmd, env)
            samples: list[list[float]] = [[] for _ in clis]
            floor_ms: list[float] = []
            for _ in range(opts.n):
                for cmd, out in zip(clis, samples, strict=True):
                    out.append(_time_once(cmd, env))
                floor_ms.append(_time_once(floor, env))

            print(f"runs: {opts.n} each   command: {shlex.join(clis[0][: -len(commands[0])])}")
            print(f"daemon: pid {pid}, STUDIOCTL_HOME={home}")
            print(f"{'':24}{'median ms':>10}{'p90 ms':>10}{'x floor':>9}{'+ms':>8}")
            base = statistics.median(floor_ms)
            for args, ms in zip(commands, samples, strict=True):
                med = statistics.median(ms)
                print(
                    f"{shlex.join(['studioctl', *args]):24}{med:10.1f}{_p90(ms):10.1f}"
                    f"{med / base:9.2f}{med - base:8.1f}"
                )
            print(f"{'python -c pass':24}{base:10.1f}{_p90(floor_ms):10.1f}")
            if opts.importtime:
                for args in commands:
                    _importtime(args, env, top=15)


if __name__ == "__main__":
    main()
