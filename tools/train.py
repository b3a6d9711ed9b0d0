# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Train a detector or segmentor with a ResT backbone: mmdet's usual options.

    python tools/train.py \
        configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py
    python tools/train.py \
        configs/upernet/restv2-tiny_upernet_8xb2-160k_ade20k-512x512.py
    python tools/train.py CONFIG --work-dir DIR --resume [CHECKPOINT] \
        --amp --auto-scale-lr --cfg-options key=value ...
    bash tools/dist_train.sh CONFIG NUM_GPUS [options]

The work is done by :func:`mmrest_tools.launch.train` and mmengine's Runner.
"""
import os.path as osp
import sys

# Run from a clone, the programs in mmrest_tools/ (beside tools/) are
# found without reinstalling.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.launch import train  # noqa: E402

if __name__ == '__main__':
    train()
