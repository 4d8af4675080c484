"""The ``studioctl`` entry point: the hot read commands first, then typer for everything else.

``status`` and ``ps`` are served here in their exact spellings without importing typer (its
import and its per-option validators cost them more than the daemon's answer; issue 9.5).
Anything else (``-h``, a typo, an unknown flag) goes through typer, which prints its usual
help and errors.
"""

from __future__ import annotations

import os
import sys

from studioctl.errors import StudioError

# {command: {flag: keyword argument}}
_FAST: dict[str, dict[str, str]] = {
    "status": {"--json": "as_json"},
    "ps": {"--json": "as_json", "--all": "all_", "-a": "all_"},
}


def fast_command(argv: list[str]) -> tuple[str, dict[str, bool]] | None:
    """``(command, flags)`` when ``argv`` is ``[--config FILE] status|ps [FLAG...]``."""
    args = list(argv)
    if args[:1] == ["--config"] and len(args) >= 2:
        os.environ["STUDIOCTL_CONFIG"] = args[1]
        args = args[2:]
    elif args and args[0].startswith("--config="):
        os.environ["STUDIOCTL_CONFIG"] = args[0].partition("=")[2]
        args = args[1:]
    if not args or args[0] not in _FAST:
        return None
    known = _FAST[args[0]]
    if any(a not in known for a in args[1:]):
        return None
    flags = dict.fromkeys(known.values(), False)
    flags.update({known[a]: True for a in args[1:]})
    return args[0], flags


def report_error(exc: StudioError) -> None:
    """Print a StudioError the way every command does: one line, then a hint."""
    sys.stderr.write(f"error: {exc.message}\n")
    log_tail = getattr(exc, "log_tail", None) or exc.details.get("log_tail")
    if log_tail:
        sys.stderr.write("--- last log lines ---\n")
        for line in log_tail:
            sys.stderr.write(f"  {line}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")


def main() -> None:
    try:
        fast = fast_command(sys.argv[1:])
        if fast is not None:
            from studioctl.cli import readouts

            command, flags = fast
            if command == "status":
                readouts.show_status(**flags)
            else:
                readouts.show_ps(**flags)
            return
        from studioctl.cli.app import app

        app()
    except StudioError as exc:
        report_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)  # 128 + SIGINT, as shells expect
