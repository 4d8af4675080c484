"""End-to-end tier: a missing engine environment is a visible skip (a failure in CI).

Skip reasons are collected and printed in their own section of the terminal summary, so a run
that quietly skipped the real-engine tests cannot pass unnoticed; with
``STUDIOCTL_E2E_REQUIRED=1`` (CI sets it) a missing environment fails instead. Measured
timings (launch, restart, switch, evict) are printed in a section of their own too.
"""

from __future__ import annotations

import os

import pytest
from tests.e2e.helpers import REQUIRE_VAR, EngineEnv

SKIPPED: list[str] = []
TIMINGS: dict[str, float] = {}


def require(env: EngineEnv) -> None:
    """Skip (or, when CI requires the engines, fail) the calling test if ``env`` is missing."""
    if env.ok:
        return
    if os.environ.get(REQUIRE_VAR, "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.fail(f"{REQUIRE_VAR} is set but {env.reason}", pytrace=False)
    if env.reason not in SKIPPED:
        SKIPPED.append(env.reason)
    pytest.skip(env.reason)


def record_timing(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 2)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SKIPPED:
        terminalreporter.section("end-to-end tests SKIPPED", sep="!", yellow=True, bold=True)
        for reason in SKIPPED:
            terminalreporter.line(f"SKIPPED: {reason}", yellow=True)
    if TIMINGS:
        terminalreporter.section("end-to-end timings (seconds)")
        for name, secs in TIMINGS.items():
            terminalreporter.line(f"{name:<52} {secs:8.2f}")
