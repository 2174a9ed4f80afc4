#!/usr/bin/env bash
# Starts the Ray head on this Ascend host, offering one "NPU" resource per device.
# usage: start-head.sh [--dry-run] [extra `ray start` args...]
#   env: NPU_COUNT (overrides /dev/davinci* counting), DRY_RUN=1 (same as --dry-run)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_dry_run "$@"
# The ${x+...} form keeps bash < 4.4 from calling an empty array unbound under set -u.
set -- ${ARGS[@]+"${ARGS[@]}"}

n=$(npu_count)
npu=()
if (( n > 0 )); then npu=(--resources="{\"NPU\": $n}"); fi

# Ray has no authentication: unless the caller says otherwise, keep the dashboard
# and its job API (port 8265) on loopback.
case " $* " in
  *" --dashboard-host"*) ;;
  *) set -- --dashboard-host=127.0.0.1 "$@" ;;
esac

if [[ "$DRY_RUN" != 1 ]]; then source_cann; fi
run ray stop
# Ray 2.7.2 hands out per-instance indices only for "neuron_cores,TPU"; adding NPU gives
# each task distinct NPU ids instead of a bare count. It is a GCS setting: head only.
run ray start --head --port=6379 ${npu[@]+"${npu[@]}"} \
  --system-config='{"custom_unit_instance_resources":"neuron_cores,TPU,NPU"}' "$@"
