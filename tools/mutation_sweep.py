# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Does a test fail when a formula is broken? One mutant at a time of the
named functions, the tests run against each (see
:mod:`mmrest_tools.mutation`), in a throw-away worktree of ``HEAD``:

    python tools/mutation_sweep.py mmrest/backbones/kernels.py \\
        --functions linear,add_residual_mlp_ --tests tests/test_fast_paths.py

Prints one JSON line per mutant as it ends (also to ``--out``), then the
survivors as a Markdown table. ``--survivors-of OUT`` runs again only the
survivors of an earlier sweep's ``--out``, e.g. against slower tests.
"""
import argparse
import os.path as osp
import signal
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmrest_tools.mutation import sweep  # noqa: E402
from mmrest_tools.mutation import (DEFAULT_KINDS, KINDS,
                                   TestsFailWithoutMutant, survivors_markdown,
                                   survivors_of, to_json_line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('path', help='source file, relative to the root')
    parser.add_argument(
        '--functions', required=True, help='comma-separated names')
    parser.add_argument(
        '--tests', required=True, help='comma-separated pytest arguments')
    parser.add_argument('--out', help='also write the JSON lines here')
    parser.add_argument(
        '--timeout-s', type=float, default=600., help='per mutant')
    parser.add_argument(
        '--kinds',
        nargs='+',
        choices=KINDS,
        default=list(DEFAULT_KINDS),
        help='which mutants: operators, numbers, the conditions (logic: '
        'and / or, True / False, a not dropped)')
    parser.add_argument(
        '--survivors-of',
        metavar='JSONL',
        help='run only the mutants that survived in this earlier sweep\'s '
        '--out (e.g. against more tests); the file must be unchanged since')
    args = parser.parse_args(argv)
    only = None
    if args.survivors_of:
        with open(args.survivors_of) as f:
            only = set(survivors_of(f))
    # a kill (SIGTERM) ends the sweep through its cleanup: the worktree goes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    out = open(args.out, 'w') if args.out else None
    try:
        for result in sweep(
                ROOT,
                args.path,
                args.functions.split(','),
                args.tests.split(','),
                args.timeout_s,
                kinds=args.kinds,
                only=only):
            results.append(result)
            print(to_json_line(result), flush=True)
            if out:
                print(to_json_line(result), file=out, flush=True)
    except TestsFailWithoutMutant as err:
        raise SystemExit(f'mutation_sweep: {err}')
    finally:
        if out:
            out.close()
    print(survivors_markdown(results))
    missing = len(only or ()) - len(results)
    if missing > 0:
        print(f'{missing} of the {len(only)} survivors named are not '
              f'mutants of {args.path} at HEAD (moved or changed since their '
              f'sweep; see --functions and --kinds)')


if __name__ == '__main__':
    main()
