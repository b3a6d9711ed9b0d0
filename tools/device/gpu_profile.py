# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The command line of :mod:`mmrest_tools.gpu_profile` (see there).

    python3 tools/device/gpu_profile.py --out DIR
"""
import os.path as osp
import sys

sys.path.insert(0,
                osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from mmrest_tools.gpu_profile import main  # noqa: E402

if __name__ == '__main__':
    main()
