"""Engines: pure descriptions of vLLM and SGLang (recipe → argv/env, probes, logs, metrics).

Nothing here imports an engine; ``check.py`` runs the engine's own parser in a subprocess
with the recipe's python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from studioctl.engines.base import Engine, EngineCommand, Stage
from studioctl.errors import NotFoundError

if TYPE_CHECKING:
    from studioctl.engines.check import FlagCheck
    from studioctl.engines.spec import RecipeSpec

BACKENDS = ("vllm", "sglang")


def get_engine(backend: str) -> Engine:
    """The engine for a recipe's ``backend``: ``"vllm"`` or ``"sglang"``."""
    if backend == "vllm":
        from studioctl.engines.vllm import ENGINE as vllm_engine

        return vllm_engine
    if backend == "sglang":
        from studioctl.engines.sglang import ENGINE as sglang_engine

        return sglang_engine
    raise NotFoundError(f"unknown engine {backend!r} (known: {', '.join(BACKENDS)})")


def check_flags(recipe: RecipeSpec, *, deep: bool = True, timeout: float = 180) -> FlagCheck:
    """Check the recipe's flags with the engine's own parser (see engines/check.py)."""
    from studioctl.engines.check import check_flags as _check

    return _check(recipe, get_engine(recipe.backend), deep=deep, timeout=timeout)


__all__ = ["BACKENDS", "Engine", "EngineCommand", "Stage", "check_flags", "get_engine"]
