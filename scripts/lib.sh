# Shared by the set-up scripts (sourced, not run).

# quiet CMD...: run a noisy install step showing nothing unless it fails; then the last
# 40 lines of its output go to stderr. pip's warnings about this machine's index mirrors,
# running as root and the like are not something a user of the demo needs to read.
quiet() {
  local log rc=0
  log="$(mktemp)"
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    printf 'failed (exit %s): %s\n' "$rc" "$*" >&2
    tail -n 40 "$log" >&2
  fi
  rm -f "$log"
  return "$rc"
}
