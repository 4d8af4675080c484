"""Stand-in for ``python -m vllm.entrypoints.openai.api_server`` (tests only).

Runs ``standin_engine`` (the directory above this package, on PYTHONPATH) in vLLM flavour.
"""

import importlib

if __name__ == "__main__":
    importlib.import_module("standin_engine").main("vllm")
