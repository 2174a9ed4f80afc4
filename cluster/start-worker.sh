#!/usr/bin/env bash
# Joins this Ascend host to a running Ray head, offering one "NPU" resource per device.
# usage: start-worker.sh [--dry-run] HEAD_IP[:PORT] [extra `ray start` args...]
#   env: RAY_HEAD_ADDRESS (if no HEAD_IP argument), NPU_COUNT, DRY_RUN=1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}

head="${RAY_HEAD_ADDRESS:-}"
# An empty first argument comes from an unset "$RAY_HEAD_IP"; fall back to the env then.
if (( $# > 0 )) && [[ "$1" != -* ]]; then
  if [[ -n "$1" ]]; then head="$1"; fi
  shift
fi
if [[ -z "$head" ]]; then
  echo "usage: start-worker.sh [--dry-run] HEAD_IP[:PORT] [ray start args...] (or set RAY_HEAD_ADDRESS)" >&2
  exit 2
fi
if [[ "$head" != *:* ]]; then head="$head:6379"; fi

n=$(npu_count)
npu=()
if (( n > 0 )); then npu=(--resources="{\"NPU\": $n}"); fi

if [[ "$DRY_RUN" != 1 ]]; then source_cann; fi
run ray stop
run ray start --address="$head" ${npu[@]+"${npu[@]}"} "$@"
