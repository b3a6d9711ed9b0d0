# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The eval fast path's float32 error against float64, beside the literal
(authors') float32 error, per variant and stage.

    python tools/precision_report.py                      # all 8 variants
    python tools/precision_report.py --models v1:large --size 224 224
    python tools/precision_report.py --models v1:small --components all
    python tools/precision_report.py --models v1:small --autocast bf16 fp16

Prints a Markdown table: per stage the relative error
``||out - exact|| / ||exact||`` (the maximum absolute difference in
brackets) and, for the fast path, its factor over the literal path's
error. ``--components all`` also runs the fast path with each fast
component computed literally, one at a time (see
:mod:`mmrest_tools.precision`). ``--autocast`` instead prints, per stage,
how far each path's output under CPU autocast is from its own float32
output (the literal path is the authors' code under autocast).
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.precision import V1_ARCHS  # noqa: E402
from mmrest_tools.precision import (COMPONENTS, V2_ARCHS, autocast_errors,
                                    format_cell, format_rows, measure)

ALL = [f'v1:{a}' for a in V1_ARCHS] + [f'v2:{a}' for a in V2_ARCHS]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--models',
        nargs='+',
        default=ALL,
        choices=ALL,
        help='family:arch (default: all)')
    parser.add_argument(
        '--size',
        nargs=2,
        type=int,
        default=None,
        metavar=('H', 'W'),
        help='input size')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--components',
        nargs='*',
        default=[],
        help=f'fast components to compute literally, one at '
        f'a time ({", ".join(COMPONENTS)}, or all)')
    parser.add_argument(
        '--autocast',
        nargs='+',
        default=[],
        choices=['bf16', 'fp16'],
        help='report the error under CPU autocast against float32 '
        '(batch 2; --size defaults to 224 288 here) instead')
    args = parser.parse_args()
    args.size_given = args.size is not None
    if args.size is None:
        args.size = [224, 224]
    return args


def report_autocast(args):
    dtypes = dict(bf16=torch.bfloat16, fp16=torch.float16)
    size = args.size if args.size_given else (224, 288)
    print(f'Batch 2 x 3 x {size[0]} x {size[1]}; per stage '
          '||out - out_fp32|| / ||out_fp32|| (max abs difference)')
    print('| variant | autocast | path | stage 1 | stage 2 | stage 3 | '
          'stage 4 |')
    print('|---|---|---|---|---|---|---|')
    for spec in args.models:
        family, arch = spec.split(':')
        for name in args.autocast:
            result = autocast_errors(
                family, arch, dtypes[name], size, seed=args.seed)
            for path, errs in result.items():
                print(
                    f'| {family} {arch} | {name} | {path} | ' +
                    ' | '.join(format_cell(s) for s in errs) + ' |',
                    flush=True)


def main():
    args = parse_args()
    if args.autocast:
        return report_autocast(args)
    components = list(COMPONENTS) if 'all' in args.components else \
        args.components
    for name in components:
        if name not in COMPONENTS:
            sys.exit(f'unknown component {name!r}; choose from {COMPONENTS}')
    print('| variant | path | stage 1 | stage 2 | stage 3 | stage 4 |')
    print('|---|---|---|---|---|---|')
    for spec in args.models:
        family, arch = spec.split(':')
        result = measure(family, arch, args.size, args.seed,
                         [None] + components)
        for row in format_rows(family, arch, result):
            print(row, flush=True)


if __name__ == '__main__':
    main()
