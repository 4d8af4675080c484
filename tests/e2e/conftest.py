"""End-to-end tier: a missing engine environment is a visible skip (a failure in CI).

Skip reasons are printed in their own section of the terminal summary, so a run that quietly
skipped the real-engine tests cannot pass unnoticed; with ``STUDIOCTL_E2E_REQUIRED=1`` (CI
sets it) a missing environment fails instead (``helpers.require``). The timings the tests
measured (launch, restart, switch, evict) get a section of their own.
"""

from __future__ import annotations

import pytest
from tests.e2e.helpers import NOTES, SKIPPED, TIMINGS, record_timing, require

# Re-exported for test modules that import them from here (the state lives in helpers).
__all__ = ["record_timing", "require"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SKIPPED:
        terminalreporter.section("end-to-end tests SKIPPED", sep="!", yellow=True, bold=True)
        for reason in SKIPPED:
            terminalreporter.line(f"SKIPPED: {reason}", yellow=True)
    if NOTES:
        terminalreporter.section("end-to-end notes", yellow=True)
        for text in NOTES:
            terminalreporter.line(f"NOTE: {text}", yellow=True)
    if TIMINGS:
        terminalreporter.section("end-to-end timings (seconds)")
        for name, secs in TIMINGS.items():
            terminalreporter.line(f"{name:<56} {secs:8.2f}")
