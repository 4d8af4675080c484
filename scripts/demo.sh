#!/usr/bin/env bash
# The main job, from a fresh machine, on the embedded default (a CPU, no GPU):
#   1. install studioctl (pip, editable) and build the vLLM CPU engine + tiny model (cached),
#   2. start the daemon on a private STUDIOCTL_HOME,
#   3. launch the tiny-cpu recipe (a real vLLM on the CPU) and wait until it is ready,
#   4. create a tenant and send a chat completion through the gateway with its API key
#      (the official openai client),
#   5. show ps / usage, then evict the engine and stop the daemon (--keep to leave them up).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
PY="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

step "installing studioctl"
. scripts/lib.sh
quiet "$PY" -m pip install -e '.[dev]'

step "engine venv and tiny model (cached under ~/.cache/studioctl-dev)"
# Not `eval "$(…)"` alone: its exit status would hide a failed set-up from `set -e`.
ENGINE_ENV="$(bash scripts/setup-engines.sh)"
eval "$ENGINE_ENV"
export STUDIOCTL_VLLM_PYTHON STUDIOCTL_TINY_MODEL

export STUDIOCTL_HOME="${STUDIOCTL_HOME:-$HOME/.cache/studioctl-demo}"
export STUDIOCTL_RECIPES_DIRS="$HERE/recipes"
export STUDIOCTL_GATEWAY_PORT="${STUDIOCTL_GATEWAY_PORT:-8000}"
STUDIOCTL=("$PY" -m studioctl)

cleanup() {
  if [ "$KEEP" = 0 ]; then
    step "evicting and stopping the daemon"
    "${STUDIOCTL[@]}" daemon stop --stop-engines || true
  fi
}
trap cleanup EXIT

step "starting the daemon (STUDIOCTL_HOME=$STUDIOCTL_HOME)"
"${STUDIOCTL[@]}" daemon start

step "launching tiny-cpu (a real vLLM on the CPU; ~50 s)"
"${STUDIOCTL[@]}" launch tiny-cpu --dry-run
"${STUDIOCTL[@]}" launch tiny-cpu

step "creating a tenant and chatting through the gateway"
KEY="$("${STUDIOCTL[@]}" tenant create "demo-$$" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
STUDIOCTL_DEMO_KEY="$KEY" "$PY" - <<PYEOF
import os
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:${STUDIOCTL_GATEWAY_PORT}/v1",
                api_key=os.environ["STUDIOCTL_DEMO_KEY"])
reply = client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Hello, who are you?"}], max_tokens=16
)
print("reply:", repr(reply.choices[0].message.content))
print("usage:", reply.usage.model_dump())
stream = client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Stream, please."}], max_tokens=8,
    stream=True,
)
print("stream:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))
PYEOF

step "status"
"${STUDIOCTL[@]}" ps
sleep 0.5  # usage rows are written in the background, ~100 ms behind
"${STUDIOCTL[@]}" usage --window 1h
echo
echo "demo ok"
