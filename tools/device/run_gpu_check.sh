#!/usr/bin/env bash
# The GPU check in one command, on the GPU machine, from the repository root
# (with .whl/ carried: see tools/device/fetch_wheels.sh):
#
#   bash tools/device/run_gpu_check.sh [extra gpu_check.py arguments]
#
# Installs the carried wheels into /tmp/site (mmcv with its compiled ops when
# tools/device/build_mmcv.sh made its wheel, else mmcv-lite and
# mmrest_tools.ops_shim's stand-ins), prints the card and the
# versions, and runs tools/gpu_check.py with a deadline (no new step after
# DEADLINE_S seconds, default 400) under a hard time limit (LIMIT_S,
# default 460 s). Results: $OUT/gpu_check (or work_dirs/gpu_check without
# $OUT): gpu_check.json, gpu_check.md, and the log gpu_check.log.
set -uo pipefail
out="${OUT:-work_dirs}/gpu_check"
mkdir -p "$out"
log="$out/gpu_check.log"
{
  echo "== $(date -u +%FT%TZ) setup"
  if ls .whl/*.whl >/dev/null 2>&1; then
    wheels=(.whl/*.whl)
    if ls .whl/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
      # mmcv with its compiled ops (tools/device/build_mmcv.sh), not -lite
      echo "mmcv with compiled ops: $(ls .whl/mmcv-2.1.0-*.whl)"
      wheels=($(ls .whl/*.whl | grep -v mmcv_lite))
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" ||
      echo "!! wheel install failed"
  else
    echo "!! no .whl/ folder: using whatever python3 has"
  fi
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
  nvidia-smi -L || true
  echo "nvcc: $(command -v nvcc || ls "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" 2>/dev/null || echo none)"
  python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  python3 -c 'import numpy, mmengine, mmcv, mmdet; print("numpy", numpy.__version__, "mmengine", mmengine.__version__, "mmcv", mmcv.__version__, "mmdet", mmdet.__version__)' || echo "!! OpenMMLab imports failed"
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
