"""Stand-in for ``python -m sglang.launch_server`` (tests only).

Runs ``standin_engine`` (the directory above this package, on PYTHONPATH) in SGLang flavour.
"""

import importlib

if __name__ == "__main__":
    importlib.import_module("standin_engine").main("sglang")
