#!/usr/bin/env bash
# The device work left for issue #22, each part within one call of the
# device tool (at most 600 s a command), on the GPU machine, from the
# repository root (with .whl/ carried: run tools/device/fetch_wheels.sh
# here first):
#
#   bash tools/device/run_session.sh          # part 1 (default)
#   bash tools/device/run_session.sh compile  # part 2
#
# Part 1: the profile's triton, profile and fitted sections (LIMIT_S
# PROFILE_S, default 200; its triton launches stop at 2/3 of it; fitted,
# last, checks the triton core's step-down from a launch too large for the
# GPU's shared memory on a real GPU), then the GPU check's
# variants and maskrcnn sections with --emsa-core auto and the cores
# chunked, maps and triton, its deadline and limit from what is left of
# TOTAL_S (default 560). Part 2: the check's compile section within
# TOTAL_S. Results under $OUT (or work_dirs): gpu_profile/ and gpu_check/,
# as run_gpu_profile.sh and run_gpu_check.sh write them, and session.log
# with each step's seconds.
#
# PROFILE_ARGS and CHECK_ARGS replace the two programs' arguments (the
# tests run the parts on the CPU that way).
set -uo pipefail
part="${1:-main}"
total="${TOTAL_S:-560}"
out="${OUT:-work_dirs}"
mkdir -p "$out"
log="$out/session.log"
start=$SECONDS
note() { echo "== session $part, $((SECONDS - start)) s: $*" | tee -a "$log"; }
# the check's deadline and hard limit from the seconds left of $total
check() {
  local left=$((total - (SECONDS - start)))
  if [ "$left" -lt 60 ]; then
    note "$left s left of $total: no time for the check"
    return 1
  fi
  note "gpu_check with $left s left"
  DEADLINE_S=$((left - 60)) LIMIT_S=$((left - 10)) \
    bash tools/device/run_gpu_check.sh "$@"
  note "gpu_check done"
}
case "$part" in
  main)
    profile_s="${PROFILE_S:-200}"
    note "gpu_profile, limit $profile_s s"
    # shellcheck disable=SC2086
    LIMIT_S="$profile_s" bash tools/device/run_gpu_profile.sh \
      ${PROFILE_ARGS:---sections triton profile fitted --triton-budget-s $((profile_s * 2 / 3))}
    note "gpu_profile done"
    # shellcheck disable=SC2086
    check ${CHECK_ARGS:---sections variants,maskrcnn --emsa-core auto --variant-cores chunked,maps,triton}
    ;;
  compile)
    # shellcheck disable=SC2086
    check ${CHECK_ARGS:---sections compile --compile-budget-s $((total - 80))}
    ;;
  *)
    echo "unknown part '$part': choose main or compile" >&2
    exit 2
    ;;
esac
