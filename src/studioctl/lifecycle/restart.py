"""Restart policy: exponential backoff and a crash-loop budget. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 10.0  # first delay; doubles per crash in the window
    backoff_max_s: float = 300.0
    budget: int = 5  # this many crashes inside `window_s` → failed
    window_s: float = 600.0


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay_s: float
    reason: str


def decide(
    policy: RestartPolicy,
    mode: str,
    crash_times: Sequence[float],
    now: float,
    *,
    exit_code: int | None = None,
) -> RestartDecision:
    """What to do after a crash. ``crash_times`` includes the crash being decided on.

    ``mode`` is the recipe's ``restart``: ``never``, ``on-failure`` (any crash: an engine that
    exits on its own is a failure even with code 0, since it was meant to keep serving), or
    ``always``.
    """
    if mode == "never":
        return RestartDecision(False, 0.0, "restart policy is 'never'")
    recent = [t for t in crash_times if now - t <= policy.window_s]
    if len(recent) >= policy.budget:
        return RestartDecision(
            False,
            0.0,
            f"crash loop: {len(recent)} crashes in {policy.window_s:.0f}s "
            f"(budget {policy.budget}); launch it again to retry",
        )
    delay = min(policy.backoff_max_s, policy.backoff_s * (2 ** max(0, len(recent) - 1)))
    return RestartDecision(True, delay, f"restart {len(recent)} in {delay:.0f}s")
