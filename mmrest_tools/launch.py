# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""What ``tools/train.py`` and ``tools/test.py`` do.

Both take mmdet's usual command-line options and hand the work to
mmengine's ``Runner``; they serve detection and segmentation configs
alike (a config with ``default_scope = 'mmseg'`` is tested as mmseg's
``tools/test.py`` does: ``--tta`` with the config's SegTTAModel, ``--show-dir``
through the SegVisualizationHook, ``--out`` a folder of label maps). On top
of mmdet's / mmseg's tools they

* stop a training run at once, before any data is loaded, when the
  backbone's pretrained checkpoint is missing (the error names the path and
  says where to get the file), unless the run loads (``load_from``) or
  resumes a checkpoint that holds the backbone's weights;
* stop a run before anything is built when the data is not where the
  config says (annotation files, image folders, the images a COCO file
  lists) or when the model's heads and the data set disagree on the
  classes (:mod:`mmrest_tools.prerun_checks`);
* run distributed on machines without CUDA (``torchrun`` with
  ``--launcher pytorch``): the gloo backend, DDP without device ids, and
  BatchNorm where the config says SyncBN (with a warning).
"""
import argparse
import datetime
import logging
import os
import os.path as osp
from typing import List, Optional

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log

from mmrest_tools.prerun_checks import (check_classes, check_data_paths,
                                        check_pretrained_files,
                                        skip_pretrained_loaded_over)

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints (default: '
        './work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value (for example '
        'model.backbone.init_cfg=None or train_dataloader.batch_size=4); '
        'lists as key="[a,b]", no spaces')
    parser.add_argument(
        '--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2) or
    # --local_rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def train_parser() -> argparse.ArgumentParser:
    """mmdet's training options."""
    parser = argparse.ArgumentParser(
        description='Train a detector or segmentor with a ResT backbone')
    parser.add_argument('config', help='training config file')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a path from the '
        'latest checkpoint in the work dir')
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        '--amp', action='store_true', help='automatic mixed precision')
    precision.add_argument(
        '--no-amp',
        action='store_true',
        help='train in float32 although the config uses AmpOptimWrapper '
        '(mmengine\'s AMP wrapper needs a GPU: e.g. the ResT v2 3x configs '
        'on a CPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the actual batch size over the config\'s '
        'auto_scale_lr.base_batch_size')
    _common_args(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    """mmdet's (and mmseg's) testing options."""
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector or segmentor with a ResT '
        'backbone')
    parser.add_argument('config', help='test config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out',
        help='also dump the predictions to this pickle file '
        '(detection), or save the predicted label maps in this folder '
        '(segmentation, as mmseg\'s tools/test.py)')
    parser.add_argument(
        '--show', action='store_true', help='show the predictions')
    parser.add_argument(
        '--show-dir',
        help='save images with the predictions drawn, in this folder under '
        'the run\'s timestamped folder in the work dir (detection), or in '
        'its vis_data/vis_image (segmentation, as mmseg\'s tools/test.py)')
    parser.add_argument(
        '--wait-time',
        type=float,
        default=2,
        help='seconds each image is shown with --show')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation: the config\'s tta_model and '
        'tta_pipeline (segmentation: mmseg\'s multi-scale + flip), or else '
        'each image as is and flipped (detection, boxes only)')
    _common_args(parser)
    return parser


def parse_args(parser: argparse.ArgumentParser,
               argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    """The config with the launcher, ``--cfg-options`` and the work dir."""
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'Config file not found: {args.config!r}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def set_precision(cfg: Config,
                  amp: bool = False,
                  no_amp: bool = False,
                  accelerator: Optional[bool] = None) -> None:
    """``--amp`` / ``--no-amp`` applied to ``cfg.optim_wrapper``.

    mmengine's ``AmpOptimWrapper`` asserts a GPU (or NPU / MLU) only after
    the data sets are built; without one this fails at once, naming
    ``--no-amp``. ``accelerator`` defaults to what mmengine detects.
    """
    wrapper = cfg.optim_wrapper
    if amp:
        wrapper.type = 'AmpOptimWrapper'
        wrapper.loss_scale = 'dynamic'
    elif no_amp and wrapper.get('type') == 'AmpOptimWrapper':
        wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)
    if accelerator is None:
        from mmengine.device import get_device
        accelerator = get_device() != 'cpu'
    if wrapper.get('type') == 'AmpOptimWrapper' and not accelerator:
        raise RuntimeError(
            'this config trains with mixed precision (optim_wrapper.type='
            "'AmpOptimWrapper'), which mmengine supports on a GPU only and "
            'no GPU was found: pass --no-amp to train in float32 on the CPU')


def setup_train_cfg(args: argparse.Namespace) -> Config:
    """The training config after the command-line options.

    Raises FileNotFoundError before anything is built when the backbone's
    pretrained checkpoint (and no checkpoint to load or resume holds the
    backbone: :func:`~mmrest_tools.prerun_checks.skip_pretrained_loaded_over`),
    the ``--resume`` checkpoint or the ``load_from`` one is missing, or data
    (:func:`~mmrest_tools.prerun_checks.check_data_paths`); ValueError when
    the heads' classes and the data's disagree
    (:func:`~mmrest_tools.prerun_checks.check_classes`).
    """
    cfg = load_config(args)
    set_precision(cfg, amp=args.amp, no_amp=args.no_amp)
    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr')
        if not scale or 'base_batch_size' not in scale:
            raise RuntimeError(
                f'--auto-scale-lr needs auto_scale_lr = dict('
                f'base_batch_size=...) in the config; {args.config!r} has '
                f'auto_scale_lr={scale!r}')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if '://' not in args.resume and not osp.isfile(args.resume):
            raise FileNotFoundError(
                f'--resume: checkpoint not found: {args.resume!r}')
        cfg.resume = True
        cfg.load_from = args.resume
    load_from = cfg.get('load_from')
    if load_from and '://' not in str(load_from) and \
            not osp.isfile(osp.expanduser(str(load_from))):
        raise FileNotFoundError(
            f'load_from: checkpoint not found: {load_from!r}')
    # mmengine initialises the weights (loading the backbone's ImageNet
    # checkpoint) only after building the datasets: check now, and check
    # that the data is where the config says. A run that loads or resumes
    # a checkpoint holding the backbone needs no ImageNet file.
    for note in skip_pretrained_loaded_over(cfg):
        print_log(note, logger='current')
    check_pretrained_files(cfg.model)
    check_data_paths(cfg, ('train', 'val'))
    check_classes(cfg, ('train', 'val'))
    return cfg


def add_flip_tta(cfg: Config) -> Config:
    """Test with mmdet's DetTTAModel: each image as is and flipped, the
    boxes merged by NMS. Uses the config's ``tta_model`` and
    ``tta_pipeline`` when it has them."""
    roi_head = cfg.model.get('roi_head') or {}
    if roi_head.get('mask_head') is not None:
        raise ValueError(
            '--tta: mmdet\'s DetTTAModel merges boxes only and does not '
            'support instance masks; test Mask R-CNN without --tta')
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(
            type='DetTTAModel',
            tta_cfg=dict(
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:  # dataset wrappers
            dataset = dataset.dataset
        pipeline = [dict(t) for t in dataset.pipeline]
        pack = dict(pipeline[-1])
        pack['meta_keys'] = ('img_id', 'img_path', 'ori_shape', 'img_shape',
                             'scale_factor', 'flip', 'flip_direction')
        pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[
                dict(type='RandomFlip', prob=1.),
                dict(type='RandomFlip', prob=0.)
            ], [pack]])
        cfg.tta_pipeline = pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg


def is_segmentation(cfg: Config) -> bool:
    """An mmseg config (``default_scope = 'mmseg'``, as mmseg's bases set
    it); anything else is tested the mmdet way."""
    return cfg.get('default_scope') == 'mmseg'


def setup_seg_test_cfg(cfg: Config, args: argparse.Namespace) -> Config:
    """What mmseg's ``tools/test.py`` does with ``--show``, ``--show-dir``,
    ``--tta`` and ``--out`` (a folder for the predicted label maps), except
    that ``--show`` / ``--show-dir`` draw every image, not every 50th."""
    if args.show or args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise RuntimeError(
                '--show / --show-dir need a visualization hook in '
                'default_hooks (mmseg\'s SegVisualizationHook)')
        hook['draw'] = True
        hook['interval'] = 1  # every test image (mmseg's default: 50th)
        if args.show:
            hook['show'] = True
            hook['wait_time'] = args.wait_time
        if args.show_dir:
            cfg.visualizer['save_dir'] = args.show_dir
    if args.tta:
        missing = [k for k in ('tta_model', 'tta_pipeline') if not cfg.get(k)]
        if missing:
            raise ValueError(
                f'--tta: the config has no {" and no ".join(missing)} '
                '(mmseg\'s bases give SegTTAModel and the ADE20K '
                'multi-scale + flip pipeline)')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return cfg


def setup_test_cfg(args: argparse.Namespace) -> Config:
    """The testing config after the command-line options: mmdet's way, or
    mmseg's for a segmentation config (:func:`is_segmentation`)."""
    from mmdet.engine.hooks.utils import trigger_visualization_hook
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(
            f'Checkpoint file not found: {args.checkpoint!r}')
    cfg = load_config(args)
    segmentation = is_segmentation(cfg)
    if args.out is not None and not segmentation and \
            not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must name a .pkl or .pickle file, got '
                         f'{args.out!r}')
    check_data_paths(cfg, ('test', ))
    check_classes(cfg, ('test', ))
    cfg.load_from = args.checkpoint
    if segmentation:
        return setup_seg_test_cfg(cfg, args)
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        cfg = add_flip_tta(cfg)
    return cfg


SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')


def replace_sync_bn(node, path: str = 'model') -> List[str]:
    """Replace ``type='SyncBN'`` (and mmcv's ``'MMSyncBN'``) by ``'BN'`` in
    a model config, in place.

    Args:
        node (dict | list | Any): A config node (``cfg.model``).
        path (str): The node's name, for the returned list.

    Returns:
        list[str]: Where it replaced one, e.g. ``model.decode_head.norm_cfg``.
    """
    replaced = []
    if isinstance(node, dict):
        if node.get('type') in SYNC_BN_TYPES:
            node['type'] = 'BN'
            replaced.append(path)
        for key, value in node.items():
            replaced += replace_sync_bn(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            replaced += replace_sync_bn(value, f'{path}[{i}]')
    return replaced


def setup_cpu_distributed(cfg: Config) -> None:
    """Let a distributed run work without CUDA.

    mmengine's pytorch launcher calls ``torch.cuda.set_device``, which a
    CPU-only torch does not have, and its DDP wrapper passes a device id.
    Without CUDA this starts the process group itself on the gloo backend
    (the Runner then uses it) and wraps the model in DDP without device
    ids. torch's SyncBatchNorm cannot synchronise CPU tensors: SyncBN in
    the model config becomes BatchNorm, with a warning (and ``sync_bn`` is
    ignored). Nothing changes where CUDA is available.

    Not distributed (one GPU, the CPU), mmengine's Runner itself turns
    SyncBN layers into BatchNorm and says so in its log.
    """
    if cfg.get('launcher', 'none') == 'none' or torch.cuda.is_available():
        return
    replaced = replace_sync_bn(cfg.get('model'))
    if replaced or cfg.get('sync_bn'):
        print_log(
            'No CUDA: torch\'s SyncBatchNorm cannot synchronise CPU tensors '
            '(it raises "SyncBatchNorm expected input tensor to be on GPU"); '
            f'using BatchNorm instead in {", ".join(replaced) or "the model"}'
            ' (statistics per process, not across processes)' +
            (f' and ignoring sync_bn={cfg.sync_bn!r}'
             if cfg.get('sync_bn') else ''),
            logger='current',
            level=logging.WARNING)
        cfg.sync_bn = None
    if cfg.launcher != 'pytorch':
        raise RuntimeError(
            f'Distributed runs without CUDA support --launcher pytorch '
            f'(torchrun, tools/dist_train.sh) only, got --launcher '
            f'{cfg.launcher}')
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    if dist_cfg.get('backend', 'gloo') != 'gloo':
        print_log(
            f'No CUDA: distributed backend {dist_cfg.backend!r} replaced by '
            f'\'gloo\'',
            logger='current')
    dist_cfg.backend = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False),
            device_ids=None)
    else:
        wrapper.setdefault('device_ids', None)
    if not torch.distributed.is_initialized():
        kwargs = {k: v for k, v in dist_cfg.items() if k != 'backend'}
        if kwargs.get('timeout') is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
        torch.distributed.init_process_group(backend='gloo', **kwargs)


def build_runner(cfg: Config):
    """mmengine's Runner (or the config's ``runner_type``)."""
    from mmdet.utils import setup_cache_size_limit_of_dynamo
    from mmengine.runner import Runner
    setup_cache_size_limit_of_dynamo()
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        from mmdet.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def train(argv: Optional[List[str]] = None) -> None:
    """``tools/train.py``."""
    cfg = setup_train_cfg(parse_args(train_parser(), argv))
    build_runner(cfg).train()


def test(argv: Optional[List[str]] = None) -> dict:
    """``tools/test.py``. Returns the metrics."""
    from mmdet.evaluation import DumpDetResults
    args = parse_args(test_parser(), argv)
    cfg = setup_test_cfg(args)
    runner = build_runner(cfg)
    if args.out is not None and not is_segmentation(cfg):
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    return runner.test()
