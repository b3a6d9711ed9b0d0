# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Test (and evaluate) a detector or segmentor with a ResT backbone.

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl]
        [--show-dir vis] [--show --wait-time 2] [--tta] [--work-dir DIR]
        [--cfg-options key=value ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [options]

Detection configs evaluate with mmdet's CocoMetric (bbox AP, and segm AP
for Mask R-CNN). Segmentation configs (configs/upernet, default scope
mmseg) evaluate mIoU with mmseg's IoUMetric; there ``--tta`` is mmseg's
multi-scale + flip testing and ``--out DIR`` saves the predicted label
maps, as in mmseg's tools/test.py. The work is done by
:func:`mmrest_tools.launch.test` and mmengine's Runner.
"""
import os.path as osp
import sys

# Run from a clone, the programs in mmrest_tools/ (beside tools/) are
# found without reinstalling.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.launch import test  # noqa: E402

if __name__ == '__main__':
    test()
