#!/usr/bin/env bash
# mmcv 2.1.0 with its compiled CUDA ops, as a wheel in .whl/ for the GPU
# machine (OpenMMLab's mmcv CUDA wheels exist for torch 2.0 / 2.1 only; the
# machine has torch 2.11; for torch 2.14 and later, which need C++20, the
# source's C++ standard is raised first: mmrest_tools/mmcv_source.py), from
# the repository root:
#
#   PYTHON=/path/to/python3.12 TORCH_CUDA_ARCH_LIST=9.0 \
#     bash tools/device/build_mmcv.sh
#
# Runs where nvcc and the GPU machine's Python and torch are: on the GPU
# machine itself, or on a machine with the same Python and torch (CUDA
# build, from PyPI) and a CUDA toolkit of torch's CUDA major version; the
# build needs no GPU. Compiles the sdist that tools/device/fetch_wheels.sh
# put in .whl/ for TORCH_CUDA_ARCH_LIST (default: the card's), with
# MAX_JOBS (default: the CPUs) in BUILD_DIR (default
# ~/.cache/mmrest/mmcv-build-device, outside the checkout: ninja resumes an
# interrupted build there, in a later checkout too, and fetch_wheels.sh
# takes the finished wheel from there), and prints how long it took.
# tools/device/run_gpu_check.sh installs the wheel instead of mmcv-lite.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
python="${PYTHON:-python3}"
sdist=.whl/mmcv-2.1.0.tar.gz
build="${BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mmrest/mmcv-build-device}"
[ -f "$sdist" ] || { echo "no $sdist: run tools/device/fetch_wheels.sh"; exit 2; }
"$python" -c 'import sys, torch, ninja, wheel; print("python", sys.version.split()[0], "torch", torch.__version__)' ||
  { echo "$python needs torch, ninja and wheel"; exit 2; }
# the toolkit as torch's extension builder finds it (CUDA_HOME, else the
# folder above nvcc's bin/; where nvcc is a wrapper script, e.g.
# /usr/local/bin/nvcc, that folder has no CUDA headers: set CUDA_HOME)
export CUDA_HOME="${CUDA_HOME:-$("$python" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' 2>/dev/null)}"
nvcc_path="$CUDA_HOME/bin/nvcc"
[ -n "$CUDA_HOME" ] && [ -x "$nvcc_path" ] && [ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] ||
  { echo "no CUDA toolkit at CUDA_HOME=${CUDA_HOME:-unset} (bin/nvcc and include/cuda_runtime_api.h): set CUDA_HOME to it"; exit 2; }
arch="${TORCH_CUDA_ARCH_LIST:-$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
echo "$("$nvcc_path" --version | tail -1); CUDA_HOME=$CUDA_HOME"
echo "arch $arch, $(nproc) CPUs, in $build"
# torch's PyPI CUDA wheels bring the CUDA libraries' headers (cuSPARSE,
# cuBLAS, ...) as nvidia-* packages; a bare toolkit may lack some of them
nvidia_includes=$("$python" -c 'import glob, os
import torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print(":".join(sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))))')
# (after the toolkit's own include folder: their cuda_runtime_api.h lacks crt/)
export CPATH="$CUDA_HOME/include:${nvidia_includes}${CPATH:+:$CPATH}"
mkdir -p "$build"
[ -d "$build/mmcv-2.1.0" ] || tar -xzf "$sdist" -C "$build"
# mmcv 2.1.0's setup.py asks for C++17; torch 2.14 and later need C++20
"$python" -m mmrest_tools.mmcv_source "$build/mmcv-2.1.0"
start=$(date +%s)
(cd "$build/mmcv-2.1.0" && PATH="$(dirname "$("$python" -c 'import sys; print(sys.executable)')"):$PATH" \
  MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" \
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$python" setup.py -q bdist_wheel)
echo "built in $(($(date +%s) - start)) s (this run; an interrupted build's earlier part not counted)"
wheel=$(ls "$build"/mmcv-2.1.0/dist/mmcv-2.1.0-*.whl)
cp "$wheel" .whl/
ls -la ".whl/$(basename "$wheel")"
