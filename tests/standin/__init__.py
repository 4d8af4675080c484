"""The engine stand-in for the fast test tiers (see ``standin_engine``) and test helpers.

Put this directory on ``PYTHONPATH`` and the real engine commands start the stand-in:
``python -m vllm.entrypoints.openai.api_server ...`` and ``python -m sglang.launch_server ...``.
"""
