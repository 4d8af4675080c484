#!/usr/bin/env bash
# Everything the tests need on a fresh machine, then every check CI runs:
#   install studioctl with its dev extras, build the engine envs + tiny model (cached under
#   ~/.cache/studioctl-dev, keyed by version), ruff, mypy, and pytest over all three tiers
#   (unit, integration with the stand-in engine, end to end with a real vLLM and SGLang).
# Arguments are passed to pytest (e.g. scripts/test.sh -m "not e2e" -x).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
PY="${PYTHON:-python3}"

echo "==> systemd's tools (tests verify the shipped unit with systemd-analyze)"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Debian/Ubuntu: systemd-analyze is in the systemd package. No daemon is started.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  else
    echo "systemd-analyze is missing: install systemd (the unit tests fail without it)" >&2
  fi
fi

echo "==> Redis and PostgreSQL (the scale-out tests start private servers of their own)"
if ! command -v redis-server >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # A policy-rc.d that refuses service starts, so that installing the packages starts no
    # system-wide server (on a machine without one already in place); removed after.
    POLICY=/usr/sbin/policy-rc.d; OWN_POLICY=
    if [ ! -e "$POLICY" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod +x "$POLICY"; OWN_POLICY=1
      trap 'rm -f "$POLICY"' EXIT  # also when the install fails
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql >/dev/null
    if [ -n "$OWN_POLICY" ]; then rm -f "$POLICY"; trap - EXIT; fi
  else
    echo "redis-server or PostgreSQL is missing: install them (the scale-out tests fail without them)" >&2
  fi
fi

echo "==> installing studioctl[dev]"
. scripts/lib.sh
quiet "$PY" -m pip install -e '.[dev]'

echo "==> engine environments (vLLM CPU, SGLang CPU, tiny model)"
# Not `eval "$(…)"` alone: its exit status would hide a failed set-up from `set -e`.
ENGINE_ENV="$(bash scripts/setup-engines.sh --sglang)"
eval "$ENGINE_ENV"
export STUDIOCTL_VLLM_PYTHON STUDIOCTL_TINY_MODEL STUDIOCTL_SGLANG_PYTHON STUDIOCTL_SGLANG_STUB
# The engines were just built: a real-engine test that cannot find them fails, never skips.
export STUDIOCTL_E2E_REQUIRED=1

echo "==> ruff"
"$PY" -m ruff check .
"$PY" -m ruff format --check .

echo "==> mypy"
"$PY" -m mypy

echo "==> import contracts (docs/architecture.md)"
"$PY" -c 'import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))'

echo "==> pytest"
exec "$PY" -m pytest "$@"
