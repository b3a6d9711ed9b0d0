# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""CPU inference time of the detector of a config (mmdet's
``tools/analysis_tools/benchmark.py`` needs CUDA).

    python tools/benchmark_inference.py \
        configs/retinanet/retinanet_rest-small_fpn_1x_coco.py
    python tools/benchmark_inference.py CONFIG --checkpoint iter_90000.pth \\
        --shape 800 1344 --repeats 5 --threads 2

One synthetic image of ``--shape`` (padded size), ``mode='predict'``, eval
mode, no autograd: the median seconds per image of the whole detector and of
its backbone alone. See :func:`mmrest_tools.analysis.detector_inference_time`.
"""
import argparse
import json
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction

# Run from a clone, the programs in mmrest_tools/ (beside tools/) are
# found without reinstalling.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.analysis import detector_inference_time  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='CPU inference time of a detector')
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='weights (random otherwise)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        default=[800, 1344],
        metavar=('H', 'W'),
        help='padded input size')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch threads (default: torch\'s)')
    parser.add_argument('--json', help='also write the result to this file')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    result = detector_inference_time(cfg, args.shape, args.repeats,
                                     args.warmup, args.checkpoint)
    h, w = result['shape']
    print(f'config: {args.config}\ninput (H, W): ({h}, {w}), '
          f'{result["threads"]} threads, median of {args.repeats}\n'
          f'detector: {result["detector_s"]:.3f} s/img '
          f'({1 / result["detector_s"]:.2f} img/s)\n'
          f'backbone: {result["backbone_s"]:.3f} s/img')
    if args.json:
        result['config'] = args.config
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
