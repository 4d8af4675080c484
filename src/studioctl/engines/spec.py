"""What an engine reads from a recipe: the ``RecipeSpec`` protocol.

Engines are pure command builders from a recipe, and recipes ask the engines to check
their flags while they validate. So that the dependency runs one way (recipes → engines),
engines never import ``studioctl.recipes``: they take any object with these read-only
attributes, which ``studioctl.recipes.Recipe`` has. The common engine options
(``engines.base.COMMON_OPTIONS``) are read by name with ``getattr``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol


class RecipeSpec(Protocol):
    """A validated recipe, as the engines see it."""

    @property
    def id(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def model_is_local(self) -> bool:
        """Does ``model`` name a local path (rather than a Hugging Face id)?"""
        ...

    @property
    def served_name(self) -> str: ...
    @property
    def python(self) -> str | None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def gpus(self) -> Sequence[int]: ...
    @property
    def engine_args(self) -> Mapping[str, Any]: ...
    @property
    def extra_args(self) -> Sequence[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def source(self) -> Path | None:
        """The recipe's file (errors point at its lines), or None."""
        ...

    def python_executable(self) -> str: ...
