"""Speed and memory table: ResT (fast and literal EMSA) against mmdet's
ResNet-50, Swin-T and PVT-Small. See mmrest/benchmark.py."""
import argparse

from mmrest.benchmark import BACKBONES, HEADER, run, write_json


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--models', nargs='+', default=list(BACKBONES),
                        choices=BACKBONES)
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed runs per figure (median), after 1 '
                        'warm-up')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the training-step peak memory')
    parser.add_argument('--out', help='also write the table as JSON here')
    args = parser.parse_args()
    print(HEADER)
    rows = run(args.models, args.repeats, memory=not args.no_memory)
    if args.out:
        write_json(rows, args.out)
        print(f'written: {args.out}')


if __name__ == '__main__':
    main()
