#!/usr/bin/env bash
# Creates (or completes) a virtual environment with everything mmrest needs
# on a CPU machine. Idempotent: a second run only checks.
#
#   tools/setup_env.sh          .venv: torch 2.13.0 (CPU), the pins of
#                               requirements/constraints.txt (`make setup`)
#   tools/setup_env.sh oldest   .venv-torch2.1: the oldest supported stack,
#                               torch 2.1.2 from PyPI, the pins of
#                               requirements/constraints-oldest.txt
#                               (`make setup-oldest`, `make test-oldest`)
#   tools/setup_env.sh newest   .venv-torch2.15: the newest torch, 2.15.0
#                               from PyPI, the pins of
#                               requirements/constraints-newest.txt
#                               (`make setup-newest`, `make test-newest`)
#
# MMREST_MMCV_OPS=1 or 0 builds mmcv with or without its compiled ops. The
# default is 1 for .venv and the newest stack; for the oldest stack it is 0
# (mmcv's Python code in about a minute, instead of 10 to 90 minutes of
# compiling on 2 busy cores): its environment then gets
# mmrest_tools/ops_shim.py, pure-PyTorch stand-ins for the three ops the
# tests' detectors use (NMS and RoIAlign forward and backward), installed at
# interpreter start-up when MMREST_OPS_SHIM=1 (`make test-oldest` sets it).
#
# The one slow step is mmcv 2.1.0, which has no wheel on PyPI (and none at
# all for torch 2.13) and is compiled from source with its ops (6 to 22
# minutes on an idle 2-core machine, about an hour on a busy one). The built
# wheel is cached in $MMREST_CACHE (default
# ~/.cache/mmrest), outside the repository, one per torch, and reused by
# every later set-up.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
py="${PYTHON:-python3}"
cache="${MMREST_CACHE:-$HOME/.cache/mmrest}"
profile="${1:-main}"
case "$profile" in
    main)
        venv="$root/.venv"
        constraints="$root/requirements/constraints.txt"
        torch_version=2.13.0
        torch_note="torch 2.13.0 (CPU)"
        ops="${MMREST_MMCV_OPS:-1}"
        wheels="$cache/wheels" ;;
    # PyPI's torch 2.1.2 and 2.15.0 are CUDA builds (2.1.2: a 670 MB
    # wheel and about 2 GB of CUDA libraries; 2.15.0: about 3 GB in all);
    # they run on the CPU as well.
    oldest)
        torch_version=2.1.2
        ops="${MMREST_MMCV_OPS:-0}" ;;
    newest)
        torch_version=2.15.0
        ops="${MMREST_MMCV_OPS:-1}" ;;
    *)
        echo "usage: $0 [main|oldest|newest]" >&2
        exit 2 ;;
esac
if [ "$profile" != main ]; then
    venv="$root/.venv-torch${torch_version%.*}"
    constraints="$root/requirements/constraints-$profile.txt"
    torch_note="torch $torch_version (PyPI's CUDA build, used on the CPU)"
    wheels="$cache/wheels-torch$torch_version"
    [ "$ops" = 1 ] || wheels="$wheels-noops"
fi
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

step "$torch_note and build tools"
"${pipc[@]}" -q --upgrade pip wheel 'setuptools<81' ninja
"${pipc[@]}" -q "torch==$torch_version" 'numpy<2'

# Without its ops, mmcv's set-up names the distribution mmcv-lite.
dist=mmcv
[ "$ops" = 1 ] || dist=mmcv_lite
mkdir -p "$wheels"
wheel=$(ls "$wheels"/$dist-2.1.0-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    if [ "$ops" = 1 ]; then
        step "building mmcv 2.1.0 with ops from source (one time: 6 to 22 min on an idle 2-core machine, up to an hour on a busy one)"
    else
        step "building mmcv 2.1.0 without its compiled ops (one time, about a minute)"
    fi
    # mmcv's setup.py imports torch and pkg_resources: no build isolation.
    "${pipc[@]}" -q addict packaging pillow pyyaml yapf mmengine==0.10.7 opencv-python
    tmp=$(mktemp -d)
    # The source is fetched, then built from its folder: pip refuses a
    # distribution named other than asked for (mmcv-lite without the ops),
    # and torch 2.14 and later need C++20 where mmcv's setup.py asks for
    # C++17 (mmrest_tools/mmcv_source.py raises it; nothing changes for an
    # older torch).
    "${pip[@]}" download -c "$constraints" --no-build-isolation --no-deps \
        --no-binary mmcv mmcv==2.1.0 -d "$tmp/src"
    tar -xzf "$tmp"/src/mmcv-2.1.0.tar.gz -C "$tmp/src"
    if [ "$ops" = 1 ]; then
        (cd "$root" && "$venv/bin/python" -m mmrest_tools.mmcv_source "$tmp/src/mmcv-2.1.0")
    fi
    MMCV_WITH_OPS="$ops" FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
        "${pip[@]}" wheel --no-build-isolation --no-deps \
        "$tmp/src/mmcv-2.1.0" -w "$tmp"
    mv "$tmp"/$dist-2.1.0-*.whl "$wheels/"
    rm -rf "$tmp"
    wheel=$(ls "$wheels"/$dist-2.1.0-*.whl | head -n 1)
else
    step "mmcv 2.1.0 from the cache: $wheel"
fi
"${pipc[@]}" -q "$wheel"

step "mmengine, mmdet, mmsegmentation, test, ONNX, mmdeploy, analysis and mim tools and mmrest (editable)"
if [ "$ops" = 1 ]; then
    "${pipc[@]}" -q -r "$root/requirements/runtime.txt" -r "$root/requirements/tests.txt" \
        -r "$root/requirements/deploy.txt" -r "$root/requirements/tools.txt"
else
    # mmcv-lite does not satisfy mmdet's and mmseg's requirement on mmcv (pip
    # would compile mmcv with its ops for it): they are installed without
    # dependencies, then what else they require.
    reqs=$(mktemp)
    cat "$root/requirements/runtime.txt" "$root/requirements/tests.txt" \
        "$root/requirements/deploy.txt" "$root/requirements/tools.txt" |
        grep -v -E '^(mmcv|mmdet|mmsegmentation)[=<> ]' > "$reqs"
    "${pipc[@]}" -q -r "$reqs"
    grep -E '^(mmdet|mmsegmentation)[=<> ]' "$root/requirements/runtime.txt" > "$reqs"
    "${pipc[@]}" -q --no-deps -r "$reqs"
    "$venv/bin/python" - > "$reqs" <<'PY'
import re
from importlib.metadata import requires
for dist in ('mmdet', 'mmsegmentation'):
    for req in requires(dist) or ():
        name = re.split(r'[ ;<>=!~\[]', req, maxsplit=1)[0]
        if 'extra ==' not in req and name.lower() not in ('mmcv', 'mmengine'):
            print(req)
PY
    "${pipc[@]}" -q -r "$reqs"
    rm -f "$reqs"
fi
# mmdeploy without its protobuf pin, mim without opendatalab (the files say why).
"${pipc[@]}" -q --no-deps -r "$root/requirements/mmdeploy.txt" -r "$root/requirements/mim.txt"
"${pipc[@]}" -q --no-build-isolation --no-deps -e "$root"

if [ "$ops" != 1 ]; then
    # The ops shim at start-up, only when MMREST_OPS_SHIM=1 (and only while
    # mmcv has no compiled ops: the shim steps aside for the real ones).
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "import os; os.environ.get('MMREST_OPS_SHIM') == '1' and __import__('mmrest_tools.ops_shim').ops_shim.install()" \
        > "$site/mmrest_ops_shim.pth"
fi

MMREST_OPS_SHIM="$([ "$ops" = 1 ] || echo 1)" MMREST_TORCH="$torch_version" "$venv/bin/python" - <<'PY'
import os
import torch, mmcv, mmdet, mmseg, mmengine
from mmcv.ops import nms, RoIAlign  # noqa: F401  (the compiled ops, or the shim, load)
assert torch.__version__.startswith(os.environ['MMREST_TORCH']), torch.__version__
print(f'torch {torch.__version__}, mmengine {mmengine.__version__}, '
      f'mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}')
PY
touch "$stamp"
step "environment ready"
