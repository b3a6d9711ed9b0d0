# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""FLOPs and parameters of the detector of a config, on one image.

    python tools/get_flops.py \
        configs/retinanet/retinanet_rest-small_fpn_1x_coco.py
    python tools/get_flops.py CONFIG --shape 800 1280 --json out.json

``--shape H W`` (default 800 1280: a COCO image at test scale, shorter side
800, padded to a multiple of 32). One multiply-add counts as one FLOP, as in
fvcore and mmdet. No data set and no pretrained weights are needed. See
:func:`mmrest_tools.analysis.detector_complexity`.
"""
import argparse
import json
import os.path as osp
import sys

from mmengine.config import Config, DictAction

# Run from a clone, the programs in mmrest_tools/ (beside tools/) are
# found without reinstalling.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.analysis import detector_complexity  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(
        description='FLOPs and parameters of a detector')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[800, 1280],
        help='input height and width (one value: square)')
    parser.add_argument('--json', help='also write the figures to this file')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value')
    args = parser.parse_args()
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    if len(args.shape) != 2:
        parser.error(f'--shape takes H W or one size, got {args.shape}')
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    result = detector_complexity(cfg, args.shape)
    result['config'] = args.config
    h, w = result['shape']
    print(f'config: {args.config}\n'
          f'input shape (H, W): ({h}, {w})\n'
          f'FLOPs: {result["flops"] / 1e9:.1f} G '
          f'(backbone {result["backbone_flops"] / 1e9:.1f} G)\n'
          f'params: {result["params"] / 1e6:.2f} M '
          f'({result["params"]}; backbone '
          f'{result["backbone_params"] / 1e6:.2f} M)\n'
          f'not counted (element-wise and the like): '
          f'{", ".join(sorted(result["unsupported_ops"])) or "none"}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
