# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Time one training step of the detectors of several configs on the same
batches (see :mod:`mmrest_tools.demo_step_time`).

    python tools/demo_step_time.py \\
        configs/demo/mask-rcnn_rest-lite_fpn_2e_shapes.py \\
        configs/demo/mask-rcnn_restv2-tiny_fpn_2e_shapes.py --threads 1
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.demo_step_time import main  # noqa: E402

if __name__ == '__main__':
    raise SystemExit(main())
