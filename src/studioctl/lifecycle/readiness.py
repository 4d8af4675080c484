"""Watching an engine come up: launch stages from its log, and HTTP readiness probes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from studioctl.lifecycle.engine_http import EngineHttpError

if TYPE_CHECKING:
    from studioctl.engines.base import Stage
    from studioctl.lifecycle.engine_http import EngineHttp


@dataclass
class StageTracker:
    """Matches log lines against an engine's launch stages, in order."""

    stages: Sequence[Stage]
    reached: dict[str, float] = field(default_factory=dict)

    def feed(self, lines: Sequence[str], t: float) -> list[Stage]:
        """Return the stages newly reached by these lines (a later stage implies earlier ones)."""
        new: list[Stage] = []
        for line in lines:
            for i, stage in enumerate(self.stages):
                if stage.name in self.reached or not stage.pattern.search(line):
                    continue
                for earlier in self.stages[: i + 1]:
                    if earlier.name not in self.reached:
                        self.reached[earlier.name] = t
                        new.append(earlier)
        return new


async def probe(
    http: EngineHttp,
    base_url: str,
    paths: Sequence[str],
    timeout: float = 2.0,
    *,
    api_key: str | None = None,
) -> bool:
    """True when every path answers 200 (SGLang answers 503 on /health until warm).

    ``api_key``: the engine's own key (SGLang guards /get_model_info with it).
    """
    try:
        for path in paths:
            answer = await http.get(base_url + path, api_key=api_key, timeout_s=timeout)
            if answer.status != 200:
                return False
        return True
    except EngineHttpError:
        return False
