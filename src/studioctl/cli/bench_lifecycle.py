"""Lifecycle benchmarks (``bench --cold-start``, ``--switch``, ``--evict``,
``--cold-request``): a placeholder in this branch. The module that measures them replaces
this file; ``cli/bench_cmds.py`` calls ``run_lifecycle`` with exactly this signature."""

from __future__ import annotations

from studioctl.errors import UsageError


def run_lifecycle(
    kind: str,
    args: tuple[str, ...],
    *,
    json_out: bool,
    fail_if: list[str],
    api_key: str | None,
    save: bool,
    repeat: int,
    timeout_s: float | None,
) -> int:
    """Run one lifecycle benchmark; return the exit code."""
    raise UsageError("lifecycle benchmarks are not built in this branch")
