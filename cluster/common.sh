# Helpers shared by start-head.sh and start-worker.sh; sourced, never run alone.

# Lets `/dev/davinci[0-9]*` expand to nothing (not to itself) on hosts without NPUs.
shopt -s nullglob

DRY_RUN="${DRY_RUN:-0}"
ARGS=()

# Removes --dry-run (wherever it appears) and keeps the other arguments in ARGS.
parse_dry_run() {
  local a
  for a in "$@"; do
    if [[ "$a" == --dry-run ]]; then DRY_RUN=1; else ARGS+=("$a"); fi
  done
}

# The NPUs this host lets Ray hand out: the entries of ASCEND_RT_VISIBLE_DEVICES when it
# is set (a fold's device index then picks from that list), else one /dev/davinciN node per
# NPU (davinci_manager etc. don't match [0-9]). npu-smi is avoided because it is slow and
# absent in containers that only get the device nodes.
npu_count() {
  local n="${NPU_COUNT:-}"
  if [[ -z "$n" && -n "${ASCEND_RT_VISIBLE_DEVICES:-}" ]]; then
    local visible
    IFS=, read -r -a visible <<< "${ASCEND_RT_VISIBLE_DEVICES// /}"
    n=${#visible[@]}
  elif [[ -z "$n" ]]; then
    local devs=("${NPU_DEVICE_DIR:-/dev}"/davinci[0-9]*)
    n=${#devs[@]}
  fi
  if [[ ! "$n" =~ ^[0-9]+$ ]]; then
    echo "NPU_COUNT must be a non-negative integer, got '$n'" >&2
    exit 2
  fi
  echo "$n"
}

# CANN 8 and earlier ship ascend-toolkit/set_env.sh, newer CANN cann/set_env.sh;
# the newer one wins if an upgrade left both behind.
source_cann() {
  local f
  for f in /usr/local/Ascend/cann/set_env.sh /usr/local/Ascend/ascend-toolkit/set_env.sh; do
    if [[ -f "$f" ]]; then
      # CANN's script reads variables that may be unset, which `set -u` would reject.
      set +u
      # shellcheck disable=SC1090
      source "$f"
      set -u
      return 0
    fi
  done
}

# Single-quotes a word unless it is plainly safe, so dry-run output can be pasted into a shell.
quote() {
  local safe='^[-A-Za-z0-9_./:=,+@%]+$'
  if [[ "$1" =~ $safe ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
    # Keep the option name outside the quotes: --resources='{"NPU": 8}'.
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/\'\\\'\'}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs a command, or on a dry run only prints it (one line, quoted).
run() {
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
    return
  fi
  local a line=""
  for a in "$@"; do line+="${line:+ }$(quote "$a")"; done
  echo "$line"
}
