#!/usr/bin/env bash
# Creates (or completes) the virtual environment at .venv with everything
# mmrest needs on a CPU machine. Idempotent: a second run only checks.
#
# The one slow step is mmcv 2.1.0, which has no wheel for torch 2.13 and is
# compiled from source with its ops (about 9 minutes on 2 cores). The built
# wheel is cached in $MMREST_CACHE (default ~/.cache/mmrest), outside the
# repository, and reused by every later set-up.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
py="${PYTHON:-python3}"
cache="${MMREST_CACHE:-$HOME/.cache/mmrest}"
constraints="$root/requirements/constraints.txt"
stamp="$venv/.mmrest-installed"

# Re-run only when the requirement files changed since the last full set-up.
if [ -f "$stamp" ] && [ -z "$(find "$root/requirements" "$root/setup.py" -newer "$stamp" 2>/dev/null)" ]; then
    exit 0
fi

step() { printf '\n[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ ! -x "$venv/bin/python" ]; then
    step "creating $venv"
    "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
pipc=("${pip[@]}" install -c "$constraints")

step "torch 2.13.0 (CPU) and build tools"
"${pipc[@]}" -q --upgrade pip wheel 'setuptools<81' ninja
"${pipc[@]}" -q torch==2.13.0 'numpy<2'

mkdir -p "$cache/wheels"
wheel=$(ls "$cache"/wheels/mmcv-2.1.0-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    step "building mmcv 2.1.0 with ops from source (one time, about 9 minutes)"
    # mmcv's setup.py imports torch and pkg_resources: no build isolation.
    "${pipc[@]}" -q addict packaging pillow pyyaml yapf mmengine==0.10.7 opencv-python
    tmp=$(mktemp -d)
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
        "${pip[@]}" wheel -c "$constraints" --no-build-isolation --no-deps \
        mmcv==2.1.0 -w "$tmp"
    mv "$tmp"/mmcv-2.1.0-*.whl "$cache/wheels/"
    rm -rf "$tmp"
    wheel=$(ls "$cache"/wheels/mmcv-2.1.0-*.whl | head -n 1)
else
    step "mmcv 2.1.0 from the cache: $wheel"
fi
"${pipc[@]}" -q "$wheel"

step "mmengine, mmdet, mmsegmentation, test, ONNX, mmdeploy, analysis and mim tools and mmrest (editable)"
"${pipc[@]}" -q -r "$root/requirements/runtime.txt" -r "$root/requirements/tests.txt" \
    -r "$root/requirements/deploy.txt" -r "$root/requirements/tools.txt"
# mmdeploy without its protobuf pin, mim without opendatalab (the files say why).
"${pipc[@]}" -q --no-deps -r "$root/requirements/mmdeploy.txt" -r "$root/requirements/mim.txt"
"${pipc[@]}" -q --no-build-isolation --no-deps -e "$root"

"$venv/bin/python" - <<'PY'
import torch, mmcv, mmdet, mmseg, mmengine
from mmcv.ops import nms, RoIAlign  # noqa: F401  (the compiled ops load)
assert torch.__version__.startswith('2.13.0'), torch.__version__
print(f'torch {torch.__version__}, mmengine {mmengine.__version__}, '
      f'mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}')
PY
touch "$stamp"
step "environment ready"
