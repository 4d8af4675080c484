"""Watching an engine come up: launch stages from its log, and HTTP readiness probes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studioctl.engines.base import Stage


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
    session: Any,
    base_url: str,
    paths: Sequence[str],
    timeout: float = 2.0,
    *,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """True when every path answers 200 (SGLang answers 503 on /health until warm).

    ``headers``: the engine's ``Authorization`` (SGLang guards /get_model_info with its key).
    """
    import aiohttp

    try:
        for path in paths:
            async with session.get(
                base_url + path, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    return False
        return True
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def fetch_text(
    session: Any, url: str, timeout: float = 3.0, *, headers: Mapping[str, str] | None = None
) -> str | None:
    import aiohttp

    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers
        ) as resp:
            if resp.status != 200:
                return None
            text: str = await resp.text()
            return text
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
