"""Small tools every test tier shares: free ports, waiting for a condition, a slowloris client.

Import them as ``from helpers import free_port, wait_for`` (pytest puts ``tests/`` on
sys.path: ``pythonpath = [".", "tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


# -- ports ------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_block(size: int = 50) -> int:
    """The first of ``size`` consecutive free ports, below the kernel's ephemeral range.

    Engine ports must not be in the ephemeral range: between the daemon picking a port and
    the engine binding it (seconds later for a real vLLM), any outgoing connection of the
    machine may take it as its local port ("Address already in use")."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(20000 + size, low) - size
    for _ in range(200):
        base = random.randrange(20000, top)
        if all(_bindable(p) for p in range(base, base + size)):
            return base
    raise RuntimeError(f"no {size} consecutive free ports below {low}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- waiting ----------------------------------------------------------------------------------


def wait_for(
    fn: Callable[[], T | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """Call ``fn`` until it returns something truthy and return that; AssertionError naming
    ``what`` (a callable: asked only then, e.g. for the last state seen) after ``timeout`` s.

    ``fn`` runs at least once, and once more after the deadline has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {said}")
        time.sleep(interval)


# -- hostile clients --------------------------------------------------------------------------


@contextlib.contextmanager
def slowloris(socks: Sequence[socket.socket], head: bytes, every: float = 0.2) -> Iterator[None]:
    """While the block runs, a thread sends ``head`` (a request line and the start of a header)
    on each connected socket, then one more byte of that endless header on each every
    ``every`` seconds. The caller closes the sockets (after the block)."""
    stop = threading.Event()

    def drip() -> None:
        for s in socks:
            with contextlib.suppress(OSError):  # the server may have closed it already
                s.sendall(head)
        while not stop.is_set():
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"a")
            stop.wait(every)

    dripper = threading.Thread(target=drip, name="slowloris")
    dripper.start()
    try:
        yield
    finally:
        stop.set()
        dripper.join(10)
