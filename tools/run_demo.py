# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""`make demo`: generate the shapes set if absent, train Mask R-CNN with a
ResT backbone from scratch, evaluate COCO bbox/segm mAP on val and write
metrics.json, loss.png and predictions.png to the work dir.

`make demo-seg` is the same with ``--config
configs/demo/rest-lite_upernet_1xb8-1900it_shapes-96x96.py --work-dir
work_dirs/demo_seg``: UperNet, the set's label maps, mIoU and each class's
IoU."""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

# Run from a clone, the programs in mmrest_tools/ (beside tools/) are
# found without reinstalling.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.demo import run_demo  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        '--config',
        default='configs/demo/mask-rcnn_rest-lite_fpn_3e_shapes.py')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument(
        '--data-root',
        default=None,
        help="the shapes set's folder (default: the config's)")
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch threads (default: one per CPU)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='config overrides, key=value')
    return parser.parse_args()


def main():
    args = parse_args()
    run_demo(
        args.config,
        args.work_dir,
        num_threads=args.threads,
        cfg_options=args.cfg_options,
        data_root=args.data_root)


if __name__ == '__main__':
    main()
