# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Speed and memory table: ResT (fast and literal EMSA) against mmdet's
ResNet-50, Swin-T and PVT-Small (``make bench``).

    python tools/benchmark.py --out work_dirs/bench/benchmark.json
    python tools/benchmark.py --quick     # ResT-S, its literal form, R-50
    python tools/benchmark.py --models rest_small resnet50 --repeats 5 \\
        --no-memory --threads 1

Float32 on the CPU. Prints a Markdown table; ``--out`` also writes it as
JSON with every raw timing (and the table as Markdown beside it, ``.md``).
What is measured and how: :mod:`mmrest_tools.benchmark`.
"""
import argparse
import os
import os.path as osp
import sys

# Run from a clone, the programs in mmrest_tools/ (beside tools/) are
# found without reinstalling.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.benchmark import QUICK  # noqa: E402
from mmrest_tools.benchmark import BACKBONES, format_table, run, write_json


def parse_args():
    parser = argparse.ArgumentParser(
        description='Speed and training memory of ResT, its literal EMSA '
        'and mmdet backbones (CPU, float32)')
    parser.add_argument(
        '--models',
        nargs='+',
        default=None,
        choices=BACKBONES,
        help='backbones to measure (default: all)')
    parser.add_argument(
        '--quick',
        action='store_true',
        help=f'only {", ".join(QUICK)}, 2 rounds (4 at 224x224)')
    parser.add_argument(
        '--repeats',
        type=int,
        default=5,
        help='timed rounds at 800x1344, after one warm-up (median '
        'reported)')
    parser.add_argument(
        '--repeats-224',
        type=int,
        default=10,
        help='timed rounds at 224x224 (a round takes seconds, not '
        'minutes: more rounds steady the median)')
    parser.add_argument(
        '--threads',
        type=int,
        default=2,
        help='torch.set_num_threads (default 2)')
    parser.add_argument(
        '--no-memory',
        action='store_true',
        help='skip the training-step peak memory')
    parser.add_argument(
        '--memory-models',
        nargs='+',
        default=None,
        choices=BACKBONES,
        help='measure the training memory of these only (default: all '
        'measured backbones)')
    parser.add_argument('--out', help='also write the report as JSON here')
    args = parser.parse_args()
    if args.quick:
        args.models = args.models or list(QUICK)
        args.repeats = min(args.repeats, 2)
        args.repeats_224 = min(args.repeats_224, 4)
    args.models = args.models or list(BACKBONES)
    for name in ('repeats', 'repeats_224'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, '
                         f'got {getattr(args, name)}')
    if args.threads < 1:
        parser.error(f'--threads must be at least 1, got {args.threads}')
    missing = set(args.memory_models or []) - set(args.models)
    if missing:
        parser.error(f'--memory-models {sorted(missing)} are not among '
                     f'--models {args.models}')
    return args


def main():
    args = parse_args()
    report = run(
        args.models,
        args.repeats,
        memory=not args.no_memory,
        threads=args.threads,
        memory_names=args.memory_models,
        repeats_224=args.repeats_224)
    table = format_table(report)
    print('\n' + table)
    if args.out:
        write_json(report, args.out)
        md = os.path.splitext(args.out)[0] + '.md'
        with open(md, 'w') as f:
            f.write(table + '\n')
        print(f'\nwritten: {args.out} and {md}')


if __name__ == '__main__':
    main()
