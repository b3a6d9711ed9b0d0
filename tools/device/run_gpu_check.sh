#!/usr/bin/env bash
# The GPU check in one command, on the GPU machine, from the repository root
# (with .whl/ carried: see tools/device/fetch_wheels.sh):
#
#   bash tools/device/run_gpu_check.sh [extra gpu_check.py arguments]
#
# Installs the carried wheels into /tmp/site and prints the card and the
# versions (tools/device/site_setup.sh), then runs tools/gpu_check.py with a
# deadline (no new step after DEADLINE_S seconds, default 400) under a hard
# time limit (LIMIT_S, default 460 s). Results: $OUT/gpu_check (or work_dirs/gpu_check without
# $OUT): gpu_check.json, gpu_check.md, and the log gpu_check.log.
set -uo pipefail
out="${OUT:-work_dirs}/gpu_check"
mkdir -p "$out"
log="$out/gpu_check.log"
{
  source tools/device/site_setup.sh
  echo "== $(date -u +%FT%TZ) gpu_check"
  timeout -k 10 "${LIMIT_S:-460}" python3 tools/gpu_check.py \
    --out "$out" --deadline-s "${DEADLINE_S:-400}" "$@"
  rc=$?
  echo "== $(date -u +%FT%TZ) gpu_check exit code $rc"
  if [ "$rc" -ne 0 ] && [ -f "$out/gpu_check.md" ]; then
    echo "== the tables written before the end:"
    cat "$out/gpu_check.md"
  fi
} 2>&1 | tee "$log"
