# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Section ``maskrcnn``: one AMP training iteration of whole Mask R-CNN
detectors on synthetic data."""
import functools
import os.path as osp
import statistics
import tempfile
from typing import Dict

import torch

from ..compared import QUICK_REST_ARCH, QUICK_SWIN_ARCH
from .measure import (_autocast, _mib, _short_error, set_cudnn_benchmark,
                      time_steps)
from .settings import MASKRCNN_MODELS


class MaskRCNNSection:
    """The ``maskrcnn`` section of :class:`~.GpuCheck`."""

    def maskrcnn(self, sec: Dict):
        from mmrest.backbones.kernels import emsa_core
        bench = set_cudnn_benchmark('maskrcnn')  # mmdet's env_cfg default
        self.log(f'  torch.backends.cudnn.benchmark = {bench}')
        sec['settings'] = dict(
            image='x'.join(map(str, self.s.mr_image)),
            batch=self.s.mr_batch,
            warmup=self.s.mr_warmup,
            timed_iters=self.s.mr_iters,
            amp=f'{self.s.amp_name} autocast, GradScaler(init_scale=2**16, '
            'dynamic), the config\'s optimizer (with its paramwise_cfg) '
            'and clip_grad',
            cudnn_benchmark=bench,
            emsa_core=emsa_core(self.device))
        for name, cfg in MASKRCNN_MODELS:
            self.log(f'  Mask R-CNN {name}')
            self._guarded_row(
                sec,
                dict(kind='maskrcnn', model=name),
                lambda: self._maskrcnn_one(cfg),
                need_s=20.0)

    def _load_det_config(self, path: str):
        from mmengine.config import Config
        if not path.startswith('mmdet::'):
            return Config.fromfile(path), path
        try:  # through mmengine's package lookup, as users write it
            with tempfile.TemporaryDirectory() as tmp:
                f = osp.join(tmp, 'cfg.py')
                with open(f, 'w') as fh:
                    fh.write(f'_base_ = {path!r}\n')
                return Config.fromfile(f), path
        except Exception as e:  # noqa: BLE001
            import mmdet
            direct = osp.join(
                osp.dirname(mmdet.__file__), '.mim', 'configs',
                path.split('::', 1)[1])
            self.log(f'  {path} via mmengine failed ({_short_error(e, 120)})'
                     f'; reading {direct}')
            return Config.fromfile(direct), direct

    def _maskrcnn_one(self, cfg_path: str) -> Dict:
        dev = self.device
        model, cfg, used = self._build_detector(cfg_path)
        model.to(dev).train()
        clip = (cfg.get('optim_wrapper', {}) or {}).get('clip_grad')
        opt = config_optimizer(model, cfg)
        from mmrest.utils.torch_compat import grad_scaler

        # no autocast (quick mode): no scaling either
        scaler = grad_scaler(dev.type, enabled=self.s.amp is not None)
        data = synthetic_det_batch(self.s.mr_batch, *self.s.mr_image)
        iters = []
        step = functools.partial(self._amp_train_iteration, model, opt, scaler,
                                 clip, data, iters)
        for _ in range(self.s.mr_warmup):
            step()
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(dev)
        # warm-ups above; the timed iterations each between two
        # synchronisations (their float() reads wait for the device too)
        times = [None] * self.s.mr_warmup + time_steps(step, dev,
                                                       self.s.mr_iters, 0)
        iters = [dict(i, ms=ms) for ms, i in zip(times, iters)]
        timed = iters[self.s.mr_warmup:]
        row = dict(
            config=used,
            params_M=sum(p.numel() for p in model.parameters()) / 1e6,
            optimizer=_describe(opt),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            iter_ms=statistics.median(i['ms'] for i in timed),
            iters=iters,
            skipped_steps=sum(i['skipped'] for i in iters),
            loss_last=iters[-1]['loss'],
            clip_grad=clip,
            loss_scale=float(scaler.get_scale()))
        if dev.type == 'cuda':
            row.update(
                peak_MiB=_mib(torch.cuda.max_memory_allocated(dev)),
                peak_reserved_MiB=_mib(torch.cuda.max_memory_reserved(dev)))
        else:
            row.update(peak_MiB=None)
        del model, opt, scaler, step
        self._free()
        return row

    def _build_detector(self, cfg_path: str):
        """The config's detector without pretrained weights (narrowed in
        quick mode), initialised; with the config and the path read."""
        from mmengine.registry import init_default_scope

        import mmrest  # noqa: F401
        cfg, used = self._load_det_config(cfg_path)
        init_default_scope('mmdet')
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
        cfg.model.backbone.init_cfg = None
        if cfg.model.backbone.get('type') == 'SwinTransformer':
            cfg.model.backbone.convert_weights = False
        if self.s.quick:  # narrow backbones, fewer RoIs: seconds on a CPU
            cfg.model.train_cfg.rpn_proposal.max_per_img = 100
            cfg.model.train_cfg.rcnn.sampler.num = 64
            if cfg.model.backbone.type in ('ResT', 'ResTV2'):
                cfg.model.backbone.arch = QUICK_REST_ARCH
                cfg.model.neck.in_channels = self.s.eq_arch['embed_dims']
            else:  # Swin-T
                cfg.model.backbone.update(QUICK_SWIN_ARCH)
                cfg.model.neck.in_channels = [
                    QUICK_SWIN_ARCH['embed_dims'] * 2**i for i in range(4)
                ]
        model = MODELS.build(cfg.model)
        model.init_weights()
        return model, cfg, used

    def _amp_train_iteration(self, model, opt, scaler, clip, data, iters):
        """One training iteration as mmengine's ``AmpOptimWrapper``:
        autocast forward, scaled backward, the config's gradient clipping
        on the unscaled gradients, the scaler's step; its loss and whether
        the step was skipped are appended to ``iters``."""
        opt.zero_grad(set_to_none=True)
        with _autocast(self.device, self.s.amp):
            d = model.data_preprocessor(data, True)
            losses = model(**d, mode='loss')
            loss, _ = model.parse_losses(losses)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.grad is not None], **clip)
        before = float(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
        iters.append(
            dict(loss=float(loss), skipped=float(scaler.get_scale()) < before))


def config_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim_wrapper`` as mmengine builds it for
    training: its type and settings, and the parameter groups of its
    ``paramwise_cfg`` (mmengine's constructor gives each parameter its own
    group, so the step launches per parameter as in a user's training). The
    wrapper's own parts (AMP, clipping) are left to the iteration."""
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    wrapper = {
        k: v
        for k, v in dict(cfg.optim_wrapper).items()
        if k in ('optimizer', 'paramwise_cfg', 'constructor')
    }
    # the constructor logs three lines a parameter: kept out of the output
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        return build_optim_wrapper(model, dict(wrapper,
                                               type='OptimWrapper')).optimizer
    finally:
        logger.setLevel(level)


def _describe(opt: torch.optim.Optimizer) -> Dict:
    """The optimizer's type, settings of its first group and group count."""
    first = opt.param_groups[0]
    return dict(
        type=type(opt).__name__,
        groups=len(opt.param_groups),
        **{k: first[k]
           for k in ('lr', 'betas', 'weight_decay') if k in first})


def synthetic_det_batch(batch: int,
                        height: int,
                        width: int,
                        objects: int = 4,
                        seed: int = 0) -> Dict:
    """A batch as mmdet's ``PackDetInputs`` makes it: uint8 images
    (3 x H x W) and ``DetDataSample`` s with boxes, labels and
    ``BitmapMasks`` (ellipses inside the boxes)."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    yy, xx = np.mgrid[:height, :width]
    for i in range(batch):
        inputs.append(
            torch.from_numpy(
                rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        boxes, masks = [], []
        for _ in range(objects):
            w = rng.uniform(0.1, 0.4) * width
            h = rng.uniform(0.1, 0.4) * height
            x1 = rng.uniform(0, width - w)
            y1 = rng.uniform(0, height - h)
            boxes.append([x1, y1, x1 + w, y1 + h])
            cx, cy = x1 + w / 2, y1 + h / 2
            masks.append((((xx - cx) / (w / 2))**2 + ((yy - cy) / (h / 2))**2
                          <= 1).astype(np.uint8))
        sample = DetDataSample(
            metainfo=dict(
                img_id=i,
                img_path=f'synthetic_{i}.jpg',
                ori_shape=(height, width),
                img_shape=(height, width),
                scale_factor=(1.0, 1.0),
                flip=False,
                flip_direction=None))
        gt = InstanceData()
        gt.bboxes = torch.tensor(boxes, dtype=torch.float32)
        gt.labels = torch.from_numpy(rng.integers(0, 80, objects)).long()
        gt.masks = BitmapMasks(np.stack(masks), height, width)
        sample.gt_instances = gt
        sample.ignored_instances = InstanceData(
            bboxes=torch.zeros(0, 4), labels=torch.zeros(0).long())
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)
