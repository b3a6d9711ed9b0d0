#!/usr/bin/env bash
# The GPU profile (tools/device/gpu_profile.py) in one command, on the GPU
# machine, from the repository root (with .whl/ carried: see
# tools/device/fetch_wheels.sh):
#
#   bash tools/device/run_gpu_profile.sh [gpu_profile.py arguments]
#   (e.g. --sections triton profile --triton-budget-s 150)
#
# Installs the carried wheels (tools/device/site_setup.sh), then runs the
# profile under a hard time limit (LIMIT_S, default 460 s). Results:
# $OUT/gpu_profile (or work_dirs/gpu_profile without $OUT): profile.json,
# written after each section, and the log gpu_profile.log.
set -uo pipefail
out="${OUT:-work_dirs}/gpu_profile"
mkdir -p "$out"
{
  source tools/device/site_setup.sh
  echo "== $(date -u +%FT%TZ) gpu_profile"
  timeout -k 10 "${LIMIT_S:-460}" python3 tools/device/gpu_profile.py \
    --out "$out" "$@"
  rc=$?
  echo "== $(date -u +%FT%TZ) gpu_profile exit code $rc"
} 2>&1 | tee "$out/gpu_profile.log"
