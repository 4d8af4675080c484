"""Shared by the fake engines: the import-time switches."""

import os
import time


def at_import() -> None:
    pidfile = os.environ.get("FAKE_ENGINE_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as fh:
            fh.write(str(os.getpid()))
    if os.environ.get("FAKE_ENGINE_BROKEN"):
        raise RuntimeError("libcuda.so.1: cannot open shared object file")
    delay = float(os.environ.get("FAKE_ENGINE_SLEEP", "0"))
    if delay:
        time.sleep(delay)


def max_positions(model: str) -> int:
    import json

    with open(os.path.join(model, "config.json")) as fh:
        return int(json.load(fh)["max_position_embeddings"])
