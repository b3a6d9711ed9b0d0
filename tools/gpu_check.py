# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The prepared GPU check (see :mod:`mmrest_tools.gpu_check`).

Usage (on a machine with one CUDA GPU, from the repository root)::

    python tools/gpu_check.py --out work_dirs/gpu_check

A CPU smoke test of every section at tiny sizes::

    python tools/gpu_check.py --device cpu --quick --out /tmp/gpu_check
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.gpu_check import main  # noqa: E402

if __name__ == '__main__':
    main()
