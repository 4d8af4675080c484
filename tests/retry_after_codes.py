"""The README's error codes, and where the Retry-After tests provoke each 429 and 503 one.

``readme_codes()`` parses the "Errors use the OpenAI envelope" paragraph of README.md: every
code with the status written after it. A 429/503 code added there must be provoked by one of
the Retry-After tests (``DAEMON_CODES``: through a real daemon in
``tests/gateway_daemon/test_retry_after_daemon.py``; ``HARNESS_CODES``: through the
gateway's unit harness in ``tests/gateway/test_retry_after.py``), else
``test_every_readme_429_and_503_code_is_provoked`` fails.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
RETRYABLE_STATUSES = (429, 503)

#: Provoked for real against a daemon.
DAEMON_CODES = frozenset(
    {
        "limit_concurrent",
        "limit_rpm",
        "limit_tpm",
        "model_not_running",
        "model_loading",
        "queue_full",
        "model_load_failed",
        "too_many_connections",
    }
)
#: Provoked through the gateway's unit harness (a failing store, a drain, Redis unreachable).
HARNESS_CODES = frozenset(
    {"auth_unavailable", "shutting_down", "limits_unavailable", "store_unavailable"}
)


def readme_codes() -> dict[str, int]:
    """Each code of the README's error paragraph → its HTTP status."""
    text = README.read_text(encoding="utf-8")
    start = text.index("Errors use the OpenAI envelope")
    end = text.index("\n\n", start)
    paragraph = text[text.index("Codes:", start, end) : end]
    out: dict[str, int] = {}
    pending: list[str] = []
    # A code is `snake_case` in backticks; its status is the next "(NNN" after it (a
    # parenthesis without a status, "(a recipe not loaded on demand; …)", is a remark).
    for m in re.finditer(r"`([a-z][a-z0-9_]*)`|\((\d{3})\b", paragraph):
        if m.group(1):
            pending.append(m.group(1))
        else:
            out.update(dict.fromkeys(pending, int(m.group(2))))
            pending = []
    assert not pending, f"codes without a status in the README: {pending}"
    return out


def retryable_codes() -> set[str]:
    return {code for code, status in readme_codes().items() if status in RETRYABLE_STATUSES}
