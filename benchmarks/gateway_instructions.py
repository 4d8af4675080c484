"""The gateway's instructions per proxied request (valgrind's callgrind), for one or more
source trees side by side: the measure of its own work that a busy or throttled machine does
not move (wall-clock figures on a shared 2-core machine move 2x from day to day; instruction
counts repeat within ±0.5 %).

The setup of ``gateway_overhead.py`` (its gateway child: auth, every limit, metrics, usage
rows), run under callgrind; 100 requests to warm it, the counters zeroed, then ``--requests``
sequential requests counted; the total over every thread (the SQLite writer's included)
divided by the requests.

    python benchmarks/gateway_instructions.py [--requests 300] [--stream] [--usage sqlite]
        [TREE ...]     # source trees (a checkout, a git worktree); default: this one

Needs ``valgrind`` (``apt-get install valgrind``). Ends exactly the processes it started.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gateway_overhead as go
from rawhttp import chat_request

WARM = 100


def instructions(tree: Path, usage: str, n: int, stream: bool) -> float:
    """Instructions per request of ``tree``'s gateway."""
    with tempfile.TemporaryDirectory(prefix="studioctl-ir-") as tmp_s:
        tmp = Path(tmp_s)
        upstream_argv = [sys.executable, str(go.HERE / "upstream_fixed.py"), "--cpu", "1"]
        with go.started(upstream_argv) as up:
            up_port = int(go.read_line(up, "READY "))
            port = go.free_port()
            out = tmp / "cg.out"
            argv = [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                "--separate-threads=yes", sys.executable,
                str(tree / "benchmarks" / "gateway_overhead.py"), "--serve-gateway",
                "--upstream-port", str(up_port), "--port", str(port), "--cpu", "0",
                "--home", str(tmp / "home"), "--usage", usage,
            ]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
                cwd=tree,
                env=env,
            )
            try:
                key = go.read_line(proc, "KEY ")
                go.wait_port(port, proc, timeout=300)
                body = {**go.CHAT, "stream": True} if stream else go.CHAT
                request = chat_request(port, key, body)
                go.sequential(port, request, WARM, first_chunk=False)
                time.sleep(0.5)
                control = ["callgrind_control"]
                subprocess.run([*control, "-z", str(proc.pid)], check=True, capture_output=True)
                go.sequential(port, request, n, first_chunk=False)
                time.sleep(0.3)  # the writer thread's batch
                dump = [*control, "--dump=measured", str(proc.pid)]
                subprocess.run(dump, check=True, capture_output=True)
            finally:
                go.stop(proc)
            total = 0
            for name in glob.glob(f"{out}*"):
                lines = Path(name).read_text(errors="replace").splitlines()
                if not any("measured" in line for line in lines):
                    continue  # a dump of the process's end, not of the measured requests
                total += sum(int(line.split()[1]) for line in lines if line.startswith("totals:"))
    return total / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="gateway instructions per request (callgrind)")
    p.add_argument("trees", nargs="*", type=Path, default=[go.HERE.parent])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--stream", action="store_true", help="100-chunk streams instead")
    p.add_argument("--usage", choices=("sqlite", "memory"), default="sqlite")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (apt-get install valgrind)")
        return 2
    kind = "100-chunk streams" if args.stream else "non-streamed requests"
    print(f"instructions per request ({kind}, usage {args.usage}, {args.requests} requests)")
    for tree in args.trees:
        per = instructions(tree.resolve(), args.usage, args.requests, args.stream)
        print(f"  {tree!s:40} {per:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
