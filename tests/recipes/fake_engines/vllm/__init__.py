"""Fake vLLM (tests only)."""

import _fake_common

__version__ = "0.0.fake"
_fake_common.at_import()
