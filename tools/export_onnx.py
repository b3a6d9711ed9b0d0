# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Export a config's backbone (and neck) to ONNX and check it in onnxruntime.

    python tools/export_onnx.py \
        configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py
    python tools/export_onnx.py CONFIG --checkpoint iter_90000.pth \
        --with-neck \
        --shape 800 1344 --out rest_small_fpn.onnx --check 320x448 97x131

The graph has dynamic batch, height and width. After the export the file is
run in onnxruntime at the export size and at each ``--check`` size, compared
with eager PyTorch, and the relative error of every output is printed; the
command fails when an output's error against the float64 model exceeds
``--factor`` (4) times the eager float32 model's own error plus 1e-5.
Without ``--checkpoint`` the
weights are random (no pretrained file is needed). Needs
``pip install -r requirements/deploy.txt -c requirements/constraints.txt``.
See :mod:`mmrest.onnx_export`.
"""
import argparse
import sys

from mmengine.config import DictAction

import mmrest  # noqa: F401  (registers ResT)
from mmrest.onnx_export import (ERROR_FACTOR, ERROR_FLOOR, EXPORTERS,
                                build_feature_extractor, check_onnx,
                                export_onnx, onnx_matches)


def size(text: str):
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'a size is HEIGHTxWIDTH, e.g. 320x448; got {text!r}')
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f'sizes must be positive: {text!r}')
    return height, width


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a backbone (+ neck) to ONNX and check it')
    parser.add_argument('config', help='detector or segmentor config file')
    parser.add_argument('--checkpoint', help='whole-model checkpoint')
    parser.add_argument('--out', default='backbone.onnx', help='ONNX file')
    parser.add_argument(
        '--with-neck', action='store_true', help='export backbone and neck')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        default=[640, 960],
        metavar=('H', 'W'),
        help='export input size (default: 640 960)')
    parser.add_argument(
        '--check',
        type=size,
        nargs='*',
        default=[(320, 448), (97, 131), (800, 1344)],
        help='other sizes to check in onnxruntime (default: 320x448 97x131 '
        "800x1344: a smaller one, one that is no multiple of the stride, "
        "COCO's test size)")
    parser.add_argument('--exporter', choices=EXPORTERS, default='torchscript')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument(
        '--factor',
        type=float,
        default=ERROR_FACTOR,
        help='accept ONNX errors up to this many times the '
        'eager float32 error (both against float64)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value')
    args = parser.parse_args(argv)
    if min(args.shape) < 1:
        parser.error(f'--shape must be positive: {args.shape}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    model = build_feature_extractor(args.config, args.checkpoint,
                                    args.with_neck, args.cfg_options)
    names = export_onnx(model, args.out, args.shape, args.exporter, args.opset)
    print(f'wrote {args.out} ({len(names)} outputs, {args.exporter})')
    sizes = [tuple(args.shape)] + list(args.check)
    ok = True
    for key, errs in check_onnx(args.out, model, sizes).items():
        good = [onnx_matches(e, ref, args.factor) for e, ref in errs]
        ok = ok and all(good)
        print(f'{key:>10}: relative error against float64, onnxruntime / '
              'eager float32: ' +
              ', '.join(f'{e:.1e}/{ref:.1e}{"" if g else " (!)"}'
                        for (e, ref), g in zip(errs, good)))
    print(f'onnxruntime {"matches" if ok else "DIFFERS FROM"} PyTorch (ONNX '
          f'error within {args.factor:g}x the eager float32 error + '
          f'{ERROR_FLOOR:g})')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
