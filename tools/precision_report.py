# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The eval fast path's float32 error against float64, beside the literal
(authors') float32 error, per variant and stage.

    python tools/precision_report.py                      # all 8 variants
    python tools/precision_report.py --models v1:large --size 224 224
    python tools/precision_report.py --models v1:small --components all

Prints a Markdown table: per stage the relative error
``||out - exact|| / ||exact||`` (the maximum absolute difference in
brackets) and, for the fast path, its factor over the literal path's
error. ``--components all`` also runs the fast path with each fast
component computed literally, one at a time (see
:mod:`mmrest_tools.precision`).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.precision import V1_ARCHS  # noqa: E402
from mmrest_tools.precision import COMPONENTS, V2_ARCHS, format_rows, measure

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
        default=[224, 224],
        metavar=('H', 'W'),
        help='input size')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--components',
        nargs='*',
        default=[],
        help=f'fast components to compute literally, one at '
        f'a time ({", ".join(COMPONENTS)}, or all)')
    return parser.parse_args()


def main():
    args = parse_args()
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
