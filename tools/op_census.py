# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The command line of :mod:`mmrest_tools.op_census` (see there).

    python tools/op_census.py [--models rest_small swin_t restv2_tiny]
        [--size 224 224] [--autocast fp16] [--core triton]
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.op_census import main  # noqa: E402

if __name__ == '__main__':
    main()
