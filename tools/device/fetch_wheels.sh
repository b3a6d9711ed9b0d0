#!/usr/bin/env bash
# Fetch the wheels that the GPU machine lacks into .whl/ at the repository
# root (git-ignored through .git/info/exclude). Run here, with internet,
# from the repository root; tools/device/run_gpu_check.sh installs them there.
#
# The GPU machine (Python 3.12, torch 2.11, numpy 2.5, no internet) has
# torch, torchvision, numpy, scipy, matplotlib, opencv-python-headless,
# pyyaml, rich, pillow, packaging, six, tqdm, setuptools. Missing: the
# OpenMMLab stack and its small dependencies. mmcv 2.1.0 has no wheel on
# PyPI (sdist only, its ops need a long compile): mmcv-lite 2.1.0 is the
# same Python package without the compiled ops; mmrest_tools.ops_shim
# stands in for the three that Mask R-CNN needs.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
dest=.whl
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")" && touch "$exclude"
grep -qxF "/$dest/" "$exclude" || echo "/$dest/" >>"$exclude"
# a fresh folder, but an mmcv wheel that build_mmcv.sh made (hours) stays
mkdir -p "$dest"
find "$dest" -mindepth 1 ! -name 'mmcv-2.1.0-cp*-linux_x86_64.whl' -delete
# exact versions: one of each, all of them numpy-2 ready (cp312 builds)
packages=(
  mmengine==0.10.7
  mmcv-lite==2.1.0
  mmdet==3.3.0
  addict==2.4.0
  yapf==0.43.0
  platformdirs==4.14.8
  termcolor==3.3.0
  terminaltables==3.1.10
  pycocotools==2.0.11
  shapely==2.2.0
  ninja==1.13.0
)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any -d "$dest" "${packages[@]}"
# mmcv 2.1.0's source, for tools/device/build_mmcv.sh (its metadata step
# imports torch: the repository's .venv has it)
"${PYTHON:-.venv/bin/python}" -m pip download --no-deps --no-binary=:all: \
  --no-build-isolation -d "$dest" mmcv==2.1.0
# the mmcv wheel that build_mmcv.sh made in its default build folder
# (outside the checkout; it survives a new checkout on the same machine)
built="${XDG_CACHE_HOME:-$HOME/.cache}/mmrest/mmcv-build-device/mmcv-2.1.0/dist"
if ls "$built"/mmcv-2.1.0-cp312-*.whl >/dev/null 2>&1; then
  cp "$built"/mmcv-2.1.0-cp312-*.whl "$dest"/
fi
# with the built wheel the device needs neither mmcv-lite nor the build's
# inputs: left out, they keep the carry (64 MiB with the tree) smaller
if ls "$dest"/mmcv-2.1.0-cp312-*.whl >/dev/null 2>&1; then
  rm -f "$dest"/mmcv_lite-*.whl "$dest"/ninja-*.whl "$dest"/mmcv-2.1.0.tar.gz
fi
ls -la "$dest"
du -sh "$dest"
