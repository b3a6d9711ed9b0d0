# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The command line (``tools/gpu_check.py``)."""
import argparse
import datetime
import os.path as osp
import sys
from typing import Dict

import torch

from .check import GpuCheck
from .measure import _short_error, device_info, versions
from .report import to_markdown
from .settings import SECTIONS, Settings
from .variants import choose_core


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Prepared GPU check of mmrest: equality '
        'under fp32/fp16/bf16, backbone throughput and memory, one AMP '
        'Mask R-CNN training iteration; JSON and Markdown to --out.')
    parser.add_argument(
        '--device',
        default=None,
        help='cuda or cpu (default: cuda when available)')
    parser.add_argument(
        '--out',
        default='work_dirs/gpu_check',
        help='output folder (gpu_check.json, gpu_check.md)')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='tiny sizes, one repeat: a smoke test')
    parser.add_argument(
        '--sections',
        default=','.join(SECTIONS),
        help=f'comma-separated subset of {SECTIONS}')
    parser.add_argument(
        '--deadline-s',
        type=float,
        default=420.0,
        help='no new step starts after this many seconds')
    parser.add_argument(
        '--repeats',
        type=int,
        default=None,
        help='timed calls per throughput figure')
    parser.add_argument(
        '--warmup', type=int, default=None, help='untimed calls before timing')
    parser.add_argument(
        '--mr-iters',
        type=int,
        default=None,
        help='timed Mask R-CNN iterations')
    parser.add_argument(
        '--compile-backend',
        default=None,
        help='torch.compile backend (default inductor; '
        '"off" skips; quick mode: off)')
    parser.add_argument(
        '--compile-budget-s',
        type=float,
        default=150.0,
        help='time limit of the torch.compile child')
    _add_core_arguments(parser)
    parser.add_argument(
        '--force-ops-shim',
        action='store_true',
        help='use the mmcv ops shim even where mmcv._ext '
        'imports (testing)')
    return parser


def _add_core_arguments(parser: argparse.ArgumentParser):
    """The options that choose EMSA's cores."""
    parser.add_argument(
        '--emsa-core',
        default='default',
        help='EMSA core of the sections but variants (kernels.EMSA_CORES; '
        '"default": the library\'s; "auto": runs variants first, then the '
        'fastest that pass, see variants.choose_core)')
    parser.add_argument(
        '--variant-cores',
        default=None,
        help='comma-separated EMSA cores of the variants section '
        '(default: all of kernels.EMSA_CORES; the literal path is always '
        'its reference row)')


def parse_args(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f'unknown sections {unknown}; choose from {SECTIONS}')
    args.sections = sections
    from mmrest.backbones import kernels
    cores = ('default', 'auto') + tuple(kernels.EMSA_CORES)
    if args.emsa_core not in cores:
        parser.error(f'--emsa-core must be one of {cores}, got '
                     f'{args.emsa_core!r}')
    if args.variant_cores is not None:
        names = tuple(c.strip() for c in args.variant_cores.split(',')
                      if c.strip())
        bad = [c for c in names if c not in kernels.EMSA_CORES]
        if bad or not names:
            parser.error(f'--variant-cores: unknown cores {bad}; choose from '
                         f'{kernels.EMSA_CORES}')
        args.variant_cores = names
    if args.emsa_core == 'auto' and 'variants' not in sections:
        parser.error('--emsa-core auto chooses from the variants section: '
                     'add variants to --sections')
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device not in ('cuda', 'cpu'):
        parser.error(f'--device must be cuda or cpu, got {args.device!r}')
    if args.compile_backend is None:
        args.compile_backend = 'off' if args.quick else 'inductor'
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    started = datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec='seconds')
    settings = Settings(args.quick, args.repeats, args.warmup, args.mr_iters)
    if args.variant_cores is not None:
        settings.variant_cores = args.variant_cores
    check = GpuCheck(
        args.device,
        args.out,
        settings,
        deadline_s=args.deadline_s,
        compile_budget_s=args.compile_budget_s)
    meta = check.results['meta']
    meta.update(
        started=started,
        quick=args.quick,
        argv=sys.argv[1:],
        deadline_s=args.deadline_s)
    check.log(f'out: {osp.abspath(args.out)}')
    _prepare_environment(check, args)
    check.save()
    _run_sections(check, args)
    meta['finished'] = datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec='seconds')
    check.save()
    check.log(f'wrote {check.json_path} and {check.md_path}')
    print(to_markdown(check.results), flush=True)
    return check.results


def _prepare_environment(check: GpuCheck, args: argparse.Namespace):
    """The ops shim where mmcv has no compiled ops, and the device and
    versions in the results' ``meta``."""
    meta = check.results['meta']
    # Before anything imports mmcv.ops: stand in for missing compiled ops.
    from mmrest_tools import ops_shim
    try:
        meta['ops_shim'] = ops_shim.install(
            force=True if args.force_ops_shim else None, device=args.device)
    except Exception as e:  # noqa: BLE001
        meta['ops_shim'] = dict(used=False, error=_short_error(e))
    try:
        meta['package_lookup_patch'] = ops_shim.patch_package_lookup()
    except Exception as e:  # noqa: BLE001
        meta['package_lookup_patch'] = f'failed: {_short_error(e)}'
    meta['device'] = device_info(check.device)
    meta['versions'] = versions()
    check.log(f'device: {meta["device"].get("name")}; torch '
              f'{torch.__version__}; ops shim: {meta["ops_shim"]}')


def _run_sections(check: GpuCheck, args: argparse.Namespace):
    """The sections ``--sections`` names, in the order of the check (the
    further throughput models after the variants); with ``--emsa-core
    auto`` the variants first. Every section but variants and compile runs
    with the EMSA cores of ``--emsa-core`` (recorded in ``meta``)."""
    from mmrest.backbones import kernels
    want = set(args.sections)
    meta = check.results['meta']
    if args.emsa_core == 'auto':
        _variants(check, args)
        meta['emsa_core'] = dict(
            choose_core(check.results['sections']['variants'],
                        kernels.emsa_core(check.device),
                        kernels.emsa_core(check.device, autograd=False)),
            requested='auto')
    else:
        fixed = args.emsa_core != 'default'
        meta['emsa_core'] = dict(
            requested=args.emsa_core,
            chosen=args.emsa_core
            if fixed else kernels.emsa_core(check.device),
            inference=dict(
                chosen=args.emsa_core if fixed else kernels.
                emsa_core(check.device, autograd=False)))
    core = meta['emsa_core']['chosen']
    inference = meta['emsa_core']['inference']['chosen']
    check.log(f'EMSA cores of the other sections: {core} with autograd, '
              f'{inference} for inference ({meta["emsa_core"]})')
    with kernels.use_emsa_core(core, inference=inference):
        if 'equality' in want:
            check.run_section('equality', check.equality)
        if 'syncbn' in want:
            if check.device.type == 'cpu':  # torch's refuses CPU tensors
                check.skip_section('syncbn', 'SyncBatchNorm runs on GPUs only')
            else:
                check.run_section('syncbn', check.syncbn)
        if 'throughput' in want:
            check.run_section(
                'throughput',
                lambda sec: check.throughput(sec, check.s.throughput_models))
        if 'maskrcnn' in want:
            check.run_section('maskrcnn', check.maskrcnn)
        # the variants select each row's core themselves
        if 'variants' in want and args.emsa_core != 'auto':
            _variants(check, args)
        if 'throughput' in want and check.s.more_models:
            check.run_section(
                'throughput',
                lambda sec: check.throughput(sec, check.s.more_models))
    if 'compile' in want:
        if args.compile_backend == 'off':
            check.skip_section('compile', '--compile-backend off')
        else:
            check.run_section(
                'compile',
                lambda sec: check.compile(sec, args.compile_backend))


def _variants(check: GpuCheck, args: argparse.Namespace):
    check.run_section('variants',
                      lambda sec: check.variants(sec, args.compile_backend))
