#!/usr/bin/env bash
# Sourced by tools/device/run_*.sh on the GPU machine, from the repository
# root (with .whl/ carried: see tools/device/fetch_wheels.sh): installs the
# carried wheels into $SITE (default /tmp/site; mmcv with its compiled ops when
# tools/device/build_mmcv.sh made its wheel, else mmcv-lite and
# mmrest_tools.ops_shim's stand-ins), puts it and the checkout on
# PYTHONPATH, and prints the card and the versions.
echo "== $(date -u +%FT%TZ) setup"
SITE="${SITE:-/tmp/site}"
if ls .whl/*.whl >/dev/null 2>&1; then
  wheels=(.whl/*.whl)
  if ls .whl/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    # mmcv with its compiled ops (tools/device/build_mmcv.sh), not -lite
    echo "mmcv with compiled ops: $(ls .whl/mmcv-2.1.0-*.whl)"
    wheels=($(ls .whl/*.whl | grep -v mmcv_lite))
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" ||
    echo "!! wheel install failed"
else
  echo "!! no .whl/ folder: using whatever python3 has"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi -L || true
echo "nvcc: $(command -v nvcc || ls "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" 2>/dev/null || echo none)"
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
python3 -c 'import numpy, mmengine, mmcv, mmdet; print("numpy", numpy.__version__, "mmengine", mmengine.__version__, "mmcv", mmcv.__version__, "mmdet", mmdet.__version__)' || echo "!! OpenMMLab imports failed"
