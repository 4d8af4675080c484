"""How long `studioctl --help` takes, next to the floor: a bare `python -c pass`.

    python benchmarks/cli_startup.py [-n 30] [--args "config --help"] [--importtime]

Runs the installed console script (or `python -m studioctl` when it is not on PATH) and
the bare interpreter alternately, N times each, and prints median and p90 wall time in
milliseconds and their ratio. The target (issue #2): well under 200 ms on the dev machine.
`--importtime` also prints the slowest imports (`python -X importtime`) to see what to
make lazy. Not a test: nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


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
        "from studioctl.cli.app import main\n"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="runs of each command (default 30)")
    parser.add_argument("--args", default="--help", help="studioctl arguments to time")
    parser.add_argument("--importtime", action="store_true", help="show the slowest imports")
    opts = parser.parse_args()
    args = shlex.split(opts.args)

    with tempfile.TemporaryDirectory(prefix="studioctl-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
        env["STUDIOCTL_HOME"] = home  # never read or write the user's real folders
        cli = _command(args)
        floor = [sys.executable, "-c", "pass"]
        # Warm the OS caches (and .pyc files) once; then alternate so both see the same load.
        _time_once(cli, env)
        _time_once(floor, env)
        cli_ms: list[float] = []
        floor_ms: list[float] = []
        for _ in range(opts.n):
            cli_ms.append(_time_once(cli, env))
            floor_ms.append(_time_once(floor, env))

        print(f"runs: {opts.n} each   command: {shlex.join(cli)}")
        print(f"{'':24}{'median ms':>10}{'p90 ms':>10}")
        for label, samples in (
            (shlex.join(["studioctl", *args]), cli_ms),
            ("python -c pass", floor_ms),
        ):
            print(f"{label:24}{statistics.median(samples):10.1f}{_p90(samples):10.1f}")
        ratio = statistics.median(cli_ms) / statistics.median(floor_ms)
        extra = statistics.median(cli_ms) - statistics.median(floor_ms)
        print(f"ratio (median): {ratio:.2f}x the bare interpreter; +{extra:.1f} ms for studioctl")
        if opts.importtime:
            _importtime(args, env, top=15)


if __name__ == "__main__":
    main()
