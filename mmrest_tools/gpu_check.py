# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The prepared GPU check: equality, speed and memory on CUDA.

One run (``tools/gpu_check.py``, under 8 minutes on one GPU, synthetic data
only) measures, and writes to ``--out`` as ``gpu_check.json`` and
``gpu_check.md`` after every step (a run cut short keeps what it did):

``equality``
    ResT-Small (and ResT v2-Tiny, where mmrest has ``ResTV2``) with random
    weights and random BatchNorm statistics, on a 2x3x224x288 batch and a
    1x3x97x131 image, in four modes (eval without autograd, eval and train
    with autograd, train with ``with_cp=True``). Float32: the fast path and
    the literal path (:func:`mmrest.testing.to_literal`) against the literal
    path in float64 on the device; error = the largest absolute difference
    of an output over that output's largest magnitude (the worst of the
    four stages), and for the gradients of all parameters (loss: a fixed
    random weighting of the outputs) the relative L2 distance. fp16 and
    bf16 autocast: each path against its own float32 result, with the
    autocast criterion of docs/precision_and_export.md,
    ``err_fast <= 1.5 * err_literal + 1e-3``, and
    finite gradients. Then three fp16 training steps with a GradScaler as
    mmengine's ``AmpOptimWrapper`` (loss scale 2**16, dynamic): finite
    gradients and no skipped step.
``throughput``
    Backbones in eval mode without autograd, ResT lite/small/base/large
    (fast and literal), ResT v2-Tiny, mmdet's Swin-T and ResNet-50 as in
    mmdet's Mask R-CNN configs: images/s at 224x224 batch 64 and ms at
    800x1344 batch 1, in float32 and under fp16 autocast (median of
    CUDA-event timings after warm-up); and the training step at 2x3x800x1344
    (train mode, forward and backward), float32 and fp16 autocast: the
    median of 5 timed steps after 2 warm-ups, each between two
    synchronisations (:func:`time_steps`), and its peak memory
    (``max_memory_allocated`` minus what was allocated before the steps).
``maskrcnn``
    One AMP training iteration (fp16 autocast, GradScaler, AdamW and the
    config's gradient clipping) of Mask R-CNN ResT-Small
    (``configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py``), ResT v2-T
    (``mask-rcnn_restv2-tiny_fpn_1x_coco.py``) and mmdet's Mask R-CNN
    Swin-T, at 1333x800, batch 2, synthetic boxes and masks through the
    model's data preprocessor and ``loss``: median time of the timed
    iterations after two warm-ups (:func:`time_steps`), and peak memory.
``variants``
    ResT-Small with each formulation of EMSA's multi-head core
    (``kernels.use_emsa_core``) beside its literal path, ResT v2-Tiny and
    Swin-T: training step at 2x3x800x1344 under fp16 and bf16 autocast,
    inference, memory and each core's errors (see :meth:`GpuCheck.variants`).

``torch.backends.cudnn.benchmark`` is set explicitly in each timing section
(``CUDNN_BENCHMARK``: on for the backbones, off for Mask R-CNN as mmdet's
default), recorded in the section's settings and printed.
``compile``
    ``torch.compile`` of ResT-Small (eval, fp16 autocast, 224x224 batch 64)
    in a child process with a time limit: compile time, speed, difference
    from eager.

Every section and every row is independent: an error is recorded (text in
the JSON and the table) and the run goes on. After ``--deadline-s``
seconds no new step starts. ``--device cpu --quick`` runs every section's
code at tiny sizes (the test suite does).

Where mmcv has no compiled ops (``mmcv-lite``), :mod:`mmrest_tools.ops_shim`
stands in for the three that Mask R-CNN needs; the JSON's ``meta.ops_shim``
says whether it was used.
"""
import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import os.path as osp
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

SECTIONS = ('equality', 'syncbn', 'throughput', 'maskrcnn', 'variants',
            'compile')
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REST_MASKRCNN_CONFIG = osp.join(REPO_ROOT, 'configs', 'mask_rcnn',
                                'mask-rcnn_rest-small_fpn_1x_coco.py')
SWIN_MASKRCNN_CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
RESTV2_MASKRCNN_CONFIG = osp.join(REPO_ROOT, 'configs', 'mask_rcnn',
                                  'mask-rcnn_restv2-tiny_fpn_1x_coco.py')
MASKRCNN_MODELS = (('mask_rcnn_rest_small', REST_MASKRCNN_CONFIG),
                   ('mask_rcnn_restv2_tiny', RESTV2_MASKRCNN_CONFIG),
                   ('mask_rcnn_swin_t', SWIN_MASKRCNN_CONFIG))
# backbones of the throughput table, the main comparison first
THROUGHPUT_MAIN = ('rest_small', 'rest_small_literal', 'restv2_tiny',
                   'swin_t', 'resnet50')
THROUGHPUT_MORE = ('rest_lite', 'rest_lite_literal', 'rest_base',
                   'rest_base_literal', 'rest_large', 'rest_large_literal')
_REST_DROP_PATH = dict(lite=0.1, small=0.1, base=0.2, large=0.2, tiny=0.1)
# cuDNN autotuning of each section (torch.backends.cudnn.benchmark, set
# explicitly and recorded): on for the backbone timings (fixed input sizes);
# off for Mask R-CNN, mmdet's default (env_cfg) for its varying sizes.
CUDNN_BENCHMARK = dict(throughput=True, variants=True, maskrcnn=False)
# ResT-Small's structure (1, 2, 4, 8 heads; sr 8, 4, 2, 1) at a fraction of
# its width and depth: every code path in seconds (quick mode)
QUICK_REST_ARCH = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                       num_heads=[1, 2, 4, 8], sr_ratios=[8, 4, 2, 1],
                       mlp_ratios=[4, 4, 4, 4])
FP32_FLOOR = 100 * torch.finfo(torch.float32).eps  # the fp32 criterion's floor
AMP_FACTOR, AMP_FLOOR = 1.5, 1e-3  # the autocast criterion


class Settings:
    """Sizes and counts of one run (full, or ``quick`` for a CPU smoke test).
    """

    def __init__(self, quick: bool, repeats: Optional[int] = None,
                 warmup: Optional[int] = None,
                 mr_iters: Optional[int] = None):
        self.quick = quick
        if quick:
            self.eq_arch = QUICK_REST_ARCH
            self.eq_shapes = [(1, 3, 33, 47)]
            self.eq_modes = ('eval_nograd', 'train_grad_cp')
            self.eq_amp = (torch.float16, )
            self.amp_steps_shape = (1, 3, 33, 47)
            self.amp_steps = 1
            self.small = (1, 3, 64, 64)  # stands for 224x224 batch 64
            self.large = (1, 3, 64, 96)  # stands for 800x1344 batch 1
            self.train = (2, 3, 64, 96)  # stands for 800x1344 batch 2
            self.mr_image = (96, 128)  # H, W; stands for 800 x 1333
            self.mr_batch = 1
            self.mr_warmup = 0
            self.throughput_models = THROUGHPUT_MAIN
            self.more_models = ()
            # CPUs without fp16 arithmetic emulate it (minutes): the speed,
            # memory and Mask R-CNN code runs in float32 in quick mode
            self.amp = None
        else:
            self.eq_arch = 'small'
            self.eq_shapes = [(2, 3, 224, 288), (1, 3, 97, 131)]
            self.eq_modes = ('eval_nograd', 'eval_grad', 'train_grad',
                             'train_grad_cp')
            self.eq_amp = (torch.float16, torch.bfloat16)
            self.amp_steps_shape = (2, 3, 224, 288)
            self.amp_steps = 3
            self.amp = torch.float16
            self.small = (64, 3, 224, 224)
            self.large = (1, 3, 800, 1344)
            self.train = (2, 3, 800, 1344)
            self.mr_image = (800, 1333)
            self.mr_batch = 2
            self.mr_warmup = 2
            self.throughput_models = THROUGHPUT_MAIN
            self.more_models = THROUGHPUT_MORE
        self.repeats = repeats if repeats is not None else (1 if quick
                                                            else 10)
        self.warmup = warmup if warmup is not None else (0 if quick else 3)
        self.mr_iters = mr_iters if mr_iters is not None else (1 if quick
                                                               else 5)
        # training steps (backbones): untimed warm-ups, then the median of
        # the timed steps, each between two synchronisations
        self.train_warmup = 1 if quick else 2
        self.train_repeats = 2 if quick else 5
        # EMSA cores of the variants section (kernels.EMSA_CORES; the
        # compiled one is skipped with --compile-backend off)
        from mmrest.backbones import kernels
        self.variant_cores = tuple(kernels.EMSA_CORES)
        self.amp_name = str(self.amp).replace('torch.', '') if self.amp \
            else 'float32 (quick mode)'


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def _short_error(e: BaseException, limit: int = 300) -> str:
    text = f'{type(e).__name__}: {e}'.strip().replace('\n', ' ')
    return text if len(text) <= limit else text[:limit] + '...'


def _mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else n / 2**20


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    """'float16', 'bfloat16'; None (no autocast) is 'float32'."""
    return 'float32' if dtype is None else str(dtype).replace('torch.', '')


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int,
               warmup: int) -> List[float]:
    """Milliseconds per call of ``fn``: CUDA events on the GPU (one
    synchronisation at the end), wall clock elsewhere, after ``warmup``
    untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == 'cuda':
        events = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in events]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def time_steps(step: Callable[[], object], device: torch.device,
               repeats: int, warmup: int,
               clock: Callable[[], float] = time.perf_counter,
               sync: Optional[Callable[[torch.device], None]] = None
               ) -> List[float]:
    """Milliseconds of each of ``repeats`` calls of ``step`` (a training
    step: forward, backward, maybe an optimizer step) after ``warmup``
    untimed ones (cuDNN autotuning, the caching allocator's first
    allocations, lazy initialisations).

    Each timed call lies between two synchronisations of the device (the
    kernels queued before it are done when the clock starts, its own when
    it stops), so a step's figure is its whole time whatever it
    synchronises inside. Report the median of the list.

    Args:
        step (callable): One step.
        device (torch.device): Where it runs.
        repeats (int): Timed calls (at least 1).
        warmup (int): Untimed calls before them.
        clock (callable): Seconds (tests pass a fake clock).
        sync (callable, optional): Waits for ``device``; defaults to
            ``torch.cuda.synchronize`` on CUDA, nothing elsewhere.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f'time_steps needs repeats >= 1 and warmup >= 0, '
                         f'got {repeats} and {warmup}')
    sync = sync or _sync
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t = clock()
        step()
        sync(device)
        times.append((clock() - t) * 1e3)
    return times


def set_cudnn_benchmark(section: str) -> bool:
    """Sets ``torch.backends.cudnn.benchmark`` as ``CUDNN_BENCHMARK`` says
    for ``section`` and returns it (each section records it)."""
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK[section]
    return torch.backends.cudnn.benchmark


def output_error(outs: Sequence[torch.Tensor],
                 refs: Sequence[torch.Tensor]) -> float:
    """The worst, over the outputs, of max |out - ref| / max |ref|."""
    worst = 0.0
    for o, r in zip(outs, refs):
        o, r = o.double(), r.double()
        scale = float(r.abs().max())
        diff = float((o - r).abs().max())
        if not math.isfinite(diff):
            return float('inf')
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def grad_error(grads: Dict[str, torch.Tensor],
               refs: Dict[str, torch.Tensor]) -> float:
    """||g - g_ref|| / ||g_ref|| over all parameters' gradients at once."""
    num = den = 0.0
    for name, r in refs.items():
        g = grads.get(name)
        if g is None:
            return float('inf')
        num += float(((g.double() - r.double())**2).sum())
        den += float((r.double()**2).sum())
    if not math.isfinite(num):
        return float('inf')
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def randomize_norms(model: nn.Module, seed: int = 0):
    """Random affine parameters and running statistics of every BatchNorm,
    and random affine parameters of every LayerNorm / GroupNorm, so that the
    folded and the separate normalisations are really compared."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
                              nn.GroupNorm)):
                if getattr(m, 'weight', None) is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(
                        m.weight.shape, generator=gen))
                if getattr(m, 'bias', None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape,
                                                   generator=gen))


def versions() -> Dict[str, Optional[str]]:
    found = {}
    for name in ('numpy', 'torchvision', 'mmengine', 'mmcv', 'mmdet'):
        try:
            mod = __import__(name)
            found[name] = getattr(mod, '__version__', '?')
        except Exception as e:  # noqa: BLE001
            found[name] = f'not importable ({_short_error(e, 80)})'
    return found


def device_info(device: torch.device) -> Dict:
    info = dict(type=device.type, torch=torch.__version__,
                cuda=torch.version.cuda, python=platform.python_version(),
                machine=platform.machine(), cpu_threads=torch.get_num_threads())
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, capability=f'{p.major}.{p.minor}',
                    total_memory_MiB=p.total_memory / 2**20,
                    multiprocessors=p.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
    else:
        info['name'] = platform.processor() or 'cpu'
    return info


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
def build_rest(arch, v2: bool = False, **kwargs) -> nn.Module:
    """``mmrest.ResT`` (``'lite'``, ..., or an arch dict) or, for
    ``'v2_tiny'`` etc. (or ``v2=True``), ``mmrest.ResTV2``, initialised, in
    eval mode; ``arch=None`` with ``v2``: the narrow quick-mode arch."""
    import mmrest
    if v2 or (isinstance(arch, str) and arch.startswith('v2_')):
        if not hasattr(mmrest, 'ResTV2'):
            raise ImportError('mmrest has no ResTV2')
        arch = QUICK_REST_ARCH if arch is None else arch
        model = mmrest.ResTV2(
            arch=arch[3:] if isinstance(arch, str) else arch, **kwargs)
    else:
        model = mmrest.ResT(arch=arch, **kwargs)
    model.init_weights()
    return model.eval()


def build_backbone(name: str, quick: bool = False) -> nn.Module:
    """A backbone of the throughput table by name, in eval mode.

    ``rest_{arch}`` and ``rest_{arch}_literal`` (ResT with the drop-path
    rate of its detection config), ``restv2_tiny`` (ResT v2), ``swin_t``
    and ``resnet50`` (mmdet's, as in mmdet's Mask R-CNN configs, without
    pretrained weights).
    ``quick``: narrow versions (the same code at a fraction of the cost).
    """
    if name.startswith(('rest_', 'restv2_')):
        arch = name.split('_')[1]
        if name.startswith('restv2_'):
            model = build_rest(None if quick else 'v2_' + arch, v2=True,
                               drop_path_rate=_REST_DROP_PATH[arch])
        else:
            model = build_rest(QUICK_REST_ARCH if quick else arch,
                               drop_path_rate=_REST_DROP_PATH[arch])
        if name.endswith('_literal'):
            from mmrest.testing import to_literal
            model = to_literal(model, copy_model=False)
        return model.eval()
    import mmrest  # noqa: F401  (registers mmrest in mmdet)
    if name == 'swin_t':
        from mmdet.models.backbones import SwinTransformer
        narrow = dict(embed_dims=32, depths=[1, 1, 1, 1],
                      num_heads=[1, 2, 4, 8]) if quick else {}
        model = SwinTransformer(**{
            **dict(embed_dims=96, depths=[2, 2, 6, 2],
                   num_heads=[3, 6, 12, 24]), **narrow},
            window_size=7, mlp_ratio=4, qkv_bias=True, qk_scale=None,
            drop_rate=0., attn_drop_rate=0., drop_path_rate=0.2,
            patch_norm=True, out_indices=(0, 1, 2, 3), with_cp=False,
            convert_weights=False)
    elif name == 'resnet50':
        from mmdet.models.backbones import ResNet
        model = ResNet(
            depth=18 if quick else 50, num_stages=4, out_indices=(0, 1, 2, 3),
            frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True),
            norm_eval=True, style='pytorch')
    else:
        raise KeyError(f'unknown backbone {name!r}')
    model.init_weights()
    model.eval()
    return model


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------
class DeadlinePassed(RuntimeError):
    """The run's time is up: the step was not started."""


class GpuCheck:
    """Runs the sections and records their results.

    Args:
        device (str): ``'cuda'`` or ``'cpu'``.
        out_dir (str): Where ``gpu_check.json`` and ``gpu_check.md`` go.
        settings (Settings): Sizes and counts.
        deadline_s (float): No new step starts after this many seconds.
        compile_budget_s (float): Time limit of the compile child process.
        log (callable): Progress printer.
    """

    def __init__(self, device: str, out_dir: str, settings: Settings,
                 deadline_s: float = 420.0, compile_budget_s: float = 150.0,
                 log: Optional[Callable[[str], None]] = None):
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError('--device cuda, but torch sees no CUDA device')
        self.out_dir = out_dir
        self.s = settings
        self.deadline_s = deadline_s
        self.compile_budget_s = compile_budget_s
        self.t0 = time.monotonic()
        self._log = log or self._print
        self.results: Dict = dict(meta={}, sections={})
        os.makedirs(out_dir, exist_ok=True)

    # -- bookkeeping -------------------------------------------------------
    def _print(self, msg: str):
        now = datetime.datetime.now(datetime.timezone.utc).strftime(
            '%H:%M:%S')
        print(f'[gpu_check {now} +{self.elapsed():6.1f}s] {msg}', flush=True)

    def log(self, msg: str):
        self._log(msg)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.deadline_s - self.elapsed()

    def check_deadline(self, what: str, need_s: float = 0.0):
        if self.remaining() < need_s:
            raise DeadlinePassed(
                f'not started: {what} (deadline {self.deadline_s:.0f} s, '
                f'{self.elapsed():.0f} s elapsed)')

    @property
    def json_path(self) -> str:
        return osp.join(self.out_dir, 'gpu_check.json')

    @property
    def md_path(self) -> str:
        return osp.join(self.out_dir, 'gpu_check.md')

    def save(self):
        self.results['meta']['elapsed_s'] = self.elapsed()
        for path, text in ((self.json_path,
                            json.dumps(self.results, indent=1, default=str)),
                           (self.md_path, to_markdown(self.results))):
            tmp = path + '.tmp'
            with open(tmp, 'w') as f:
                f.write(text)
            os.replace(tmp, path)

    def _row(self, sec: Dict, row: Dict) -> Dict:
        sec['rows'].append(row)
        self.save()
        return row

    def _guarded_row(self, sec: Dict, base: Dict, fn: Callable[[], Dict],
                     need_s: float = 0.0):
        """Run ``fn`` for one row; its error or a passed deadline is
        recorded in the row and the section goes on."""
        row = dict(base)
        t = time.monotonic()
        try:
            self.check_deadline(' '.join(str(v) for v in base.values()),
                                need_s)
            row.update(fn())
        except DeadlinePassed as e:
            row['skipped'] = str(e)
        except Exception as e:  # noqa: BLE001 (recorded, the run goes on)
            row['error'] = _short_error(e)
            row['traceback'] = traceback.format_exc(limit=8)
            self.log(f'  error: {row["error"]}')
            self._free()
        row['seconds'] = time.monotonic() - t
        return self._row(sec, row)

    def _free(self):
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def run_section(self, name: str, fn: Callable[[Dict], None]):
        sec = self.results['sections'].setdefault(
            name, dict(status='running', rows=[]))
        sec['status'] = 'running'
        self.save()
        t = time.monotonic()
        self.log(f'section {name}: start ({self.remaining():.0f} s left)')
        try:
            self.check_deadline(f'section {name}')
            fn(sec)
            bad = [r for r in sec['rows'] if 'error' in r]
            skipped = [r for r in sec['rows'] if str(
                r.get('skipped', '')).startswith('not started')]
            sec['status'] = ('errors in some rows' if bad else
                             'partly skipped (deadline)' if skipped else 'ok')
        except DeadlinePassed as e:
            sec['status'] = 'skipped'
            sec['error'] = str(e)
        except Exception as e:  # noqa: BLE001 (recorded, the run goes on)
            sec['status'] = 'error'
            sec['error'] = _short_error(e)
            sec['traceback'] = traceback.format_exc(limit=12)
            self.log(f'section {name}: error: {sec["error"]}')
            self._free()
        sec['seconds'] = sec.get('seconds', 0.0) + time.monotonic() - t
        self.log(f'section {name}: {sec["status"]} '
                 f'({time.monotonic() - t:.1f} s)')
        self.save()

    # -- SyncBN ------------------------------------------------------------
    def syncbn(self, sec: Dict):
        """``norm_cfg=dict(type='SyncBN')`` in a one-process group: a
        training step (torch's SyncBatchNorm path on the device) and eval
        outputs equal to the same weights with plain BatchNorm."""
        import torch.distributed as dist
        from mmrest import ResT
        dev = self.device
        own_group = not dist.is_initialized()
        if own_group:
            dist.init_process_group(
                'nccl' if dev.type == 'cuda' else 'gloo',
                init_method='tcp://127.0.0.1:29533', rank=0, world_size=1)
        try:
            torch.manual_seed(0)
            sync = ResT(arch='lite', norm_cfg=dict(type='SyncBN'))
            sync.init_weights()
            plain = ResT(arch='lite')
            plain.load_state_dict(sync.state_dict())
            sync, plain = sync.to(dev).train(), plain.to(dev).train()
            x = torch.randn(2, 3, 224, 288, device=dev)
            outs = sync(x)
            sum(o.float().mean() for o in outs).backward()
            finite = all(torch.isfinite(p.grad).all().item()
                         for p in sync.parameters() if p.grad is not None)
            ref = plain(x)
            train_err = output_error(outs, ref)
            sync.eval(), plain.eval()
            with torch.no_grad():
                eval_err = output_error(sync(x), plain(x))
            kinds = sorted({type(m).__name__ for m in sync.modules()
                            if 'Norm' in type(m).__name__})
            self._row(sec, dict(
                kind='syncbn', model='rest_lite', norms=kinds,
                grads_finite=finite, train_err_vs_bn=train_err,
                eval_err_vs_bn=eval_err))
        finally:
            if own_group:
                dist.destroy_process_group()

    # -- a. equality -------------------------------------------------------
    def equality(self, sec: Dict):
        from mmrest.testing import to_literal
        import mmrest
        dev = self.device
        sec['criteria'] = dict(
            fp32=f'err_fast <= 4 * err_literal + {FP32_FLOOR:.2e} '
            '(100 float32 eps), both against the literal path in float64',
            amp=f'err_fast <= {AMP_FACTOR} * err_literal + {AMP_FLOOR} '
            '(outputs, each path against its own float32 result) and '
            'finite gradients')
        archs = [self.s.eq_arch]
        if self.s.quick:
            sec['note'] = 'quick mode: ResT-Small narrowed, no ResT v2'
        elif hasattr(mmrest, 'ResTV2'):
            archs.append('v2_tiny')
        else:
            sec['note'] = 'mmrest has no ResTV2: restv2_tiny not checked'
        tf32 = (torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        sec['tf32'] = 'off (matmul and cuDNN) in this section'
        try:
            for arch in archs:
                name = ('restv2_tiny' if arch == 'v2_tiny' else
                        'rest_small' if arch == 'small' else
                        'rest_small_narrow_quick')
                base = build_rest(arch)
                randomize_norms(base)
                state = copy.deepcopy(base.state_dict())
                for shape in self.s.eq_shapes:
                    for mode in self.s.eq_modes:
                        self.log(f'  equality {name} {shape} {mode}')
                        self._equality_case(sec, name, arch, state, shape,
                                            mode, to_literal)
                for path in ('fast', 'literal'):
                    self.log(f'  fp16 GradScaler steps {name} {path}')
                    self._guarded_row(
                        sec,
                        dict(kind='amp_steps', model=name, path=path,
                             input='x'.join(map(str,
                                                self.s.amp_steps_shape))),
                        lambda: self._amp_steps(arch, state, path,
                                                to_literal))
        finally:
            (torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32) = tf32

    def _equality_case(self, sec, name, arch, state, shape, mode, to_literal):
        dev = self.device
        train = mode.startswith('train')
        grad = mode != 'eval_nograd'
        cp = mode.endswith('_cp')
        shape_s = 'x'.join(map(str, shape))
        built = {}

        def build():
            fast = build_rest(arch, with_cp=cp) if cp else build_rest(arch)
            fast.load_state_dict(state)
            fast.to(dev)
            try:
                lit = to_literal(fast)
                ref = to_literal(fast).double()
                built['reference'] = 'literal path in float64'
            except Exception as e:  # noqa: BLE001
                lit = None
                ref = copy.deepcopy(fast).double()
                built['reference'] = ('fast path in float64 (to_literal: '
                                      f'{_short_error(e, 120)})')
            for m in (fast, lit, ref):
                if m is not None:
                    m.train(train)
            built.update(fast=fast, lit=lit, ref=ref)
            gen = torch.Generator().manual_seed(1)
            built['x'] = torch.randn(*shape, generator=gen,
                                     dtype=torch.float64).to(dev)
            return {}

        def run(model, dtype, amp):
            model.zero_grad(set_to_none=True)
            x = built['x'].to(dtype)
            with torch.set_grad_enabled(grad), _autocast(dev, amp):
                outs = model(x)
            outs = [o.double() for o in outs]
            grads = {}
            if grad:
                if 'w' not in built:
                    gen = torch.Generator().manual_seed(2)
                    built['w'] = [
                        (torch.randn(o.shape, generator=gen,
                                     dtype=torch.float64) /
                         math.sqrt(o.numel())).to(dev) for o in outs
                    ]
                loss = sum((o * w).sum() for o, w in zip(outs, built['w']))
                loss.backward()
                grads = {
                    n: p.grad.detach().double().clone()
                    for n, p in model.named_parameters()
                    if p.grad is not None
                }
                model.zero_grad(set_to_none=True)
            return [o.detach() for o in outs], grads

        def fp32_row():
            build()
            ref_o, ref_g = run(built['ref'], torch.float64, None)
            built['ref_o'], built['ref_g'] = ref_o, ref_g
            fo, fg = run(built['fast'], torch.float32, None)
            built['fast32'] = (fo, fg)
            row = dict(reference=built['reference'],
                       err_fast=output_error(fo, ref_o))
            if grad:
                row['grad_err_fast'] = grad_error(fg, ref_g)
            if built['lit'] is not None:
                lo, lg = run(built['lit'], torch.float32, None)
                built['lit32'] = (lo, lg)
                row['err_literal'] = output_error(lo, ref_o)
                if grad:
                    row['grad_err_literal'] = grad_error(lg, ref_g)
                row['ratio'] = row['err_fast'] / max(row['err_literal'],
                                                     1e-300)
                row['pass'] = bool(
                    row['err_fast'] <= 4 * row['err_literal'] + FP32_FLOOR and
                    (not grad or row['grad_err_fast'] <=
                     4 * row['grad_err_literal'] + FP32_FLOOR))
            return row

        base = dict(kind='equality', model=name, input=shape_s, mode=mode)
        self._guarded_row(sec, dict(base, dtype='float32'), fp32_row)
        for amp in self.s.eq_amp:
            dname = str(amp).replace('torch.', '')

            def amp_row(amp=amp):
                if 'fast32' not in built:
                    raise RuntimeError('no float32 result to compare with '
                                       '(the float32 row failed)')
                fo, fg = run(built['fast'], torch.float32, amp)
                f32o, f32g = built['fast32']
                row = dict(err_fast=output_error(fo, f32o))
                finite = all(bool(torch.isfinite(g).all())
                             for g in fg.values())
                if grad:
                    row['grad_err_fast'] = grad_error(fg, f32g)
                    row['grads_finite_fast'] = finite
                if built.get('lit32') is not None:
                    lo, lg = run(built['lit'], torch.float32, amp)
                    l32o, l32g = built['lit32']
                    row['err_literal'] = output_error(lo, l32o)
                    if grad:
                        row['grad_err_literal'] = grad_error(lg, l32g)
                        row['grads_finite_literal'] = all(
                            bool(torch.isfinite(g).all())
                            for g in lg.values())
                    row['ratio'] = row['err_fast'] / max(
                        row['err_literal'], 1e-300)
                    row['pass'] = bool(
                        row['err_fast'] <=
                        AMP_FACTOR * row['err_literal'] + AMP_FLOOR and
                        (not grad or finite))
                return row

            self._guarded_row(sec, dict(base, dtype=dname), amp_row)
        built.clear()
        self._free()

    def _amp_steps(self, arch, state, path, to_literal) -> Dict:
        """Three fp16 autocast training steps with a GradScaler, as
        mmengine's ``AmpOptimWrapper(loss_scale='dynamic')``."""
        dev = self.device
        model = build_rest(arch)
        model.load_state_dict(state)
        if path == 'literal':
            model = to_literal(model, copy_model=False)
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                weight_decay=0.05)
        from mmrest.utils.torch_compat import grad_scaler
        scaler = grad_scaler(dev.type)
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(*self.s.amp_steps_shape, generator=gen).to(dev)
        steps = []
        for _ in range(self.s.amp_steps):
            opt.zero_grad(set_to_none=True)
            with _autocast(dev, torch.float16):
                outs = model(x)
                loss = sum((o.float()**2).mean() for o in outs)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nonfinite = [
                n for n, p in model.named_parameters()
                if p.grad is not None and not bool(torch.isfinite(p.grad).all())
            ]
            before = float(scaler.get_scale())
            scaler.step(opt)
            scaler.update()
            after = float(scaler.get_scale())
            steps.append(dict(loss=float(loss), scale_before=before,
                              scale_after=after, skipped=after < before,
                              nonfinite_grads=len(nonfinite),
                              nonfinite_examples=nonfinite[:3]))
        skipped = sum(s['skipped'] for s in steps)
        nonfinite = sum(s['nonfinite_grads'] for s in steps)
        ok = skipped == 0 and nonfinite == 0 and all(
            math.isfinite(s['loss']) for s in steps)
        return {
            'steps': steps, 'skipped_steps': skipped,
            'nonfinite_grads': nonfinite,
            'scale': f'{steps[0]["scale_before"]:g} -> '
                     f'{steps[-1]["scale_after"]:g}',
            'pass': bool(ok)}

    # -- b. throughput -----------------------------------------------------
    def throughput(self, sec: Dict, names: Sequence[str]):
        bench = set_cudnn_benchmark('throughput')
        self.log(f'  torch.backends.cudnn.benchmark = {bench}')
        sec['settings'] = dict(
            cudnn_benchmark=bench,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            repeats=self.s.repeats, warmup=self.s.warmup,
            small='x'.join(map(str, self.s.small)),
            large='x'.join(map(str, self.s.large)),
            train='x'.join(map(str, self.s.train)),
            train_warmup=self.s.train_warmup,
            train_repeats=self.s.train_repeats)
        sec['settings']['amp'] = self.s.amp_name
        for name in names:
            self.log(f'  throughput {name}')
            self._guarded_row(sec, dict(kind='throughput', model=name),
                              lambda: self._throughput_one(name),
                              need_s=10.0)

    def _throughput_one(self, name: str) -> Dict:
        dev = self.device
        model = build_backbone(name, quick=self.s.quick).to(dev)
        row = dict(params_M=sum(p.numel() for p in model.parameters()) / 1e6)
        gen = torch.Generator().manual_seed(4)
        for key, shape in (('small', self.s.small), ('large', self.s.large)):
            x = torch.rand(*shape, generator=gen).to(dev)
            for amp in ('fp32', 'fp16'):
                tag = f'{key}_{amp}'
                amp = self.s.amp if amp == 'fp16' else None
                try:
                    with torch.no_grad(), _autocast(dev, amp):
                        ms = time_calls(lambda: model(x), dev,
                                        self.s.repeats, self.s.warmup)
                    med = statistics.median(ms)
                    row[f'{tag}_ms'] = med
                    row[f'{tag}_img_s'] = shape[0] * 1e3 / med
                    row[f'{tag}_all_ms'] = ms
                except Exception as e:  # noqa: BLE001
                    row[f'{tag}_error'] = _short_error(e)
                    self._free()
            del x
        x = torch.rand(*self.s.train, generator=gen).to(dev)
        for amp in ('fp32', 'amp'):
            tag = f'train_{amp}'
            amp = self.s.amp if amp == 'amp' else None
            try:
                row.update({
                    f'{tag}_{k}': v
                    for k, v in self._train_step_memory(model, x, amp).items()
                })
            except Exception as e:  # noqa: BLE001
                row[f'{tag}_error'] = _short_error(e)
                self._free()
        del model, x
        self._free()
        return row

    def _train_step_memory(self, model, x, amp) -> Dict:
        """A backbone's training step (train mode, forward, a loss of all
        outputs, backward; under ``amp`` autocast): the median of
        ``train_repeats`` timed steps after ``train_warmup`` untimed ones
        (:func:`time_steps`), each step's milliseconds, and the peak memory
        of a step (``max_memory_allocated`` over the timed steps minus
        what was allocated before them: parameters and input, no
        gradients; CUDA only)."""
        dev = self.device

        def step():
            model.zero_grad(set_to_none=True)
            with _autocast(dev, amp):
                outs = model(x)
                loss = sum(o.float().mean() for o in outs)
            loss.backward()

        model.train()
        try:
            for _ in range(self.s.train_warmup):
                step()
            model.zero_grad(set_to_none=True)
            if dev.type == 'cuda':
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                before = torch.cuda.memory_allocated(dev)
            times = time_steps(step, dev, self.s.train_repeats, 0)
            out = dict(step_ms=statistics.median(times), step_all_ms=times)
            if dev.type == 'cuda':
                peak = torch.cuda.max_memory_allocated(dev)
                out.update(peak_MiB=_mib(peak),
                           step_peak_MiB=_mib(peak - before))
            else:
                out.update(peak_MiB=None, step_peak_MiB=None)
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()
        return out

    # -- c. Mask R-CNN -----------------------------------------------------
    def maskrcnn(self, sec: Dict):
        bench = set_cudnn_benchmark('maskrcnn')  # mmdet's env_cfg default
        self.log(f'  torch.backends.cudnn.benchmark = {bench}')
        sec['settings'] = dict(
            image='x'.join(map(str, self.s.mr_image)), batch=self.s.mr_batch,
            warmup=self.s.mr_warmup, timed_iters=self.s.mr_iters,
            amp=f'{self.s.amp_name} autocast, GradScaler(init_scale=2**16, '
            'dynamic), AdamW lr 1e-4 wd 0.05, the config\'s clip_grad',
            cudnn_benchmark=bench)
        for name, cfg in MASKRCNN_MODELS:
            self.log(f'  Mask R-CNN {name}')
            self._guarded_row(sec, dict(kind='maskrcnn', model=name),
                              lambda: self._maskrcnn_one(cfg), need_s=20.0)

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
            direct = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                              path.split('::', 1)[1])
            self.log(f'  {path} via mmengine failed ({_short_error(e, 120)})'
                     f'; reading {direct}')
            return Config.fromfile(direct), direct

    def _maskrcnn_one(self, cfg_path: str) -> Dict:
        dev = self.device
        import mmrest  # noqa: F401
        from mmengine.registry import init_default_scope
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
            else:
                cfg.model.backbone.update(embed_dims=32, depths=[1, 1, 1, 1],
                                          num_heads=[1, 2, 4, 8])  # as
                # build_backbone's quick Swin
                cfg.model.neck.in_channels = [32, 64, 128, 256]
        model = MODELS.build(cfg.model)
        model.init_weights()
        model.to(dev).train()
        clip = (cfg.get('optim_wrapper', {}) or {}).get('clip_grad')
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                betas=(0.9, 0.999), weight_decay=0.05)
        from mmrest.utils.torch_compat import grad_scaler
        scaler = grad_scaler(dev.type)
        data = synthetic_det_batch(self.s.mr_batch, *self.s.mr_image)
        iters = []

        def step():
            opt.zero_grad(set_to_none=True)
            with _autocast(dev, self.s.amp):
                d = model.data_preprocessor(data, True)
                losses = model(**d, mode='loss')
                loss, _ = model.parse_losses(losses)
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.grad is not None],
                    **clip)
            before = float(scaler.get_scale())
            scaler.step(opt)
            scaler.update()
            iters.append(dict(loss=float(loss), skipped=float(
                scaler.get_scale()) < before))

        for _ in range(self.s.mr_warmup):
            step()
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(dev)
        # warm-ups above; the timed iterations each between two
        # synchronisations (their float() reads wait for the device too)
        times = [None] * self.s.mr_warmup + time_steps(
            step, dev, self.s.mr_iters, 0)
        iters = [dict(i, ms=ms) for ms, i in zip(times, iters)]
        timed = iters[self.s.mr_warmup:]
        row = dict(
            config=used, params_M=sum(p.numel()
                                      for p in model.parameters()) / 1e6,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            iter_ms=statistics.median(i['ms'] for i in timed),
            iters=iters, skipped_steps=sum(i['skipped'] for i in iters),
            loss_last=iters[-1]['loss'], clip_grad=clip,
            loss_scale=float(scaler.get_scale()))
        if dev.type == 'cuda':
            row.update(
                peak_MiB=_mib(torch.cuda.max_memory_allocated(dev)),
                peak_reserved_MiB=_mib(torch.cuda.max_memory_reserved(dev)))
        else:
            row.update(peak_MiB=None)
        del model, opt, scaler
        self._free()
        return row

    # -- variants of EMSA's multi-head core ----------------------------------
    def variants(self, sec: Dict, compile_backend: str):
        """ResT-Small with each formulation of EMSA's multi-head core
        (``kernels.use_emsa_core``), beside its literal path, ResT v2-Tiny
        and Swin-T, all with the same settings: the backbone training step
        at ``train`` (2x3x800x1344) under fp16 and bf16 autocast (median
        after warm-ups, peak memory), inference at ``small`` and
        ``large`` in float32 and fp16 autocast, and each core's errors
        (random norm parameters and statistics, as in ``equality``):
        float32 outputs and gradients (eval mode, autograd) against the
        literal path in float64, fp16 / bf16 outputs against the same
        model's float32 ones beside the literal path's (the autocast
        criterion). The next GPU session picks the fastest core that passes.
        """
        from mmrest.backbones import kernels
        bench = set_cudnn_benchmark('variants')
        self.log(f'  torch.backends.cudnn.benchmark = {bench}')
        amps = (None, ) if self.s.amp is None else (torch.float16,
                                                    torch.bfloat16)
        sec['settings'] = dict(
            cudnn_benchmark=bench,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            train='x'.join(map(str, self.s.train)),
            small='x'.join(map(str, self.s.small)),
            large='x'.join(map(str, self.s.large)),
            eq_input='x'.join(map(str, self.s.eq_shapes[-1])),
            train_amp=[_dtype_name(a) for a in amps],
            amp=self.s.amp_name, warmup=self.s.warmup,
            repeats=self.s.repeats, train_warmup=self.s.train_warmup,
            train_repeats=self.s.train_repeats,
            compile_backend=compile_backend,
            criteria=dict(
                fp32=f'err <= 4 * err_literal + {FP32_FLOOR:.2e}',
                amp=f'err <= {AMP_FACTOR} * err_literal + {AMP_FLOOR}'))
        state = dict(model=build_backbone('rest_small', self.s.quick))
        randomize_norms(state['model'])  # as the equality section
        state['weights'] = copy.deepcopy(state['model'].state_dict())
        # the compiled core last: its compilations may take the deadline
        cores = sorted(self.s.variant_cores,
                       key=lambda c: c == 'literal_compiled')
        rows = [('rest_small_literal', None)]
        rows += [('rest_small', c) for c in cores if c != 'literal_compiled']
        rows += [('restv2_tiny', None), ('swin_t', None)]
        rows += [('rest_small', c) for c in cores if c == 'literal_compiled']
        self.log('  variants: which SDPA backends take the mixed queries')
        self._guarded_row(sec, dict(kind='sdpa_backends'),
                          self._sdpa_backends)
        for name, core in rows:
            self.log(f'  variants {name} {core or ""}')
            base = dict(kind='variant', model=name, core=core)
            if core == 'literal_compiled' and compile_backend == 'off':
                self._row(sec, dict(base, skipped='--compile-backend off'))
                continue
            self._guarded_row(
                sec, base, lambda: self._variant_one(
                    name, core, amps, state, compile_backend),
                need_s=60.0 if core == 'literal_compiled' else 10.0)
        del state
        self._free()

    def _sdpa_backends(self) -> Dict:
        """Which ``F.scaled_dot_product_attention`` backends run (forward
        and backward, in the autocast dtype) the mixed-query attention of
        ResT-Small's stages 2 to 4 (C = 128, 256, 512 channels; h = 2, 4,
        8 heads; keys shared by the heads, an expanded tensor), with values
        of one head (d = C / h channels, ``'sdpa'``) and zero-padded to C
        (``'sdpa_padded'``): 'ok' or the error."""
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
        dev = self.device
        dtype = self.s.amp or torch.float32
        gen = torch.Generator().manual_seed(10)
        res = {}
        for C, h in ((128, 2), (256, 4), (512, 8)):
            for values in ('d', 'C'):
                for backend in ('FLASH_ATTENTION', 'EFFICIENT_ATTENTION',
                                'CUDNN_ATTENTION', 'MATH'):
                    key = f'C{C}_h{h}_v{values}_{backend.lower()}'
                    be = getattr(SDPBackend, backend, None)
                    if be is None:
                        res[key] = 'no such backend in this torch'
                        continue
                    q = torch.randn(1, h, 64, C, generator=gen).to(
                        dev, dtype).requires_grad_()
                    k = torch.randn(1, 1, 48, C, generator=gen).to(
                        dev, dtype).requires_grad_()
                    v = torch.randn(1, h, 48, C // h if values == 'd' else C,
                                    generator=gen).to(dev, dtype)
                    v.requires_grad_()
                    try:
                        with sdpa_kernel(be):
                            out = F.scaled_dot_product_attention(
                                q, k.expand(1, h, 48, C), v, scale=1.0)
                            out.float().sum().backward()
                        res[key] = 'ok'
                    except Exception as e:  # noqa: BLE001 (recorded)
                        res[key] = _short_error(e, 120)
        return dict(backends=res)

    def _variant_one(self, name: str, core: Optional[str], amps,
                     state: Dict, compile_backend: str) -> Dict:
        from mmrest.backbones import kernels
        dev = self.device
        if name.startswith('rest_small'):
            model = build_backbone(name, self.s.quick)
            model.load_state_dict(state['weights'])
        else:
            model = build_backbone(name, self.s.quick)
        model.to(dev)
        row = dict(params_M=sum(p.numel() for p in model.parameters()) / 1e6)
        ctx = contextlib.nullcontext()
        if core is not None:
            kernels.LITERAL_COMPILE_BACKEND = compile_backend
            ctx = kernels.use_emsa_core(core)
        with ctx:
            if name.startswith('rest_small'):
                row.update(self._variant_errors(model, state, amps))
                lit = state.get('literal_errors')
                if name.endswith('_literal'):
                    state['literal_errors'] = dict(row)
                elif lit:
                    row['pass'] = bool(
                        row['err_fp32'] <= 4 * lit['err_fp32'] + FP32_FLOOR
                        and row['grad_err_fp32'] <=
                        4 * lit['grad_err_fp32'] + FP32_FLOOR and all(
                            row[f'err_{a}'] <= AMP_FACTOR * lit[f'err_{a}']
                            + AMP_FLOOR for a in map(_dtype_name, amps)
                            if a != 'float32') and row['grads_finite'])
            gen = torch.Generator().manual_seed(7)
            x = torch.rand(*self.s.train, generator=gen).to(dev)
            for amp in amps:
                tag = f'train_{_dtype_name(amp)}'
                try:
                    res = self._train_step_memory(model, x, amp)
                    row.update({f'{tag}_{k}': v for k, v in res.items()})
                except Exception as e:  # noqa: BLE001
                    row[f'{tag}_error'] = _short_error(e)
                    self._free()
            del x
            for key, shape in (('small', self.s.small),
                               ('large', self.s.large)):
                x = torch.rand(*shape, generator=gen).to(dev)
                for amp in (None, self.s.amp) if self.s.amp else (None, ):
                    tag = f'{key}_{"fp32" if amp is None else "fp16"}'
                    try:
                        with torch.no_grad(), _autocast(dev, amp):
                            ms = time_calls(lambda: model(x), dev,
                                            self.s.repeats, self.s.warmup)
                        row[f'{tag}_ms'] = statistics.median(ms)
                        row[f'{tag}_img_s'] = shape[0] * 1e3 / row[
                            f'{tag}_ms']
                    except Exception as e:  # noqa: BLE001
                        row[f'{tag}_error'] = _short_error(e)
                        self._free()
                del x
        del model
        self._free()
        return row

    def _variant_errors(self, model: nn.Module, state: Dict, amps) -> Dict:
        """Errors of ``model`` (ResT-Small, the weights in ``state``), eval
        mode with autograd: float32 outputs and gradients against the
        literal path in float64 (computed once), each autocast dtype's
        outputs against the model's own float32 ones."""
        from mmrest.testing import to_literal
        dev = self.device
        if 'x' not in state:
            gen = torch.Generator().manual_seed(8)
            state['x'] = torch.randn(*self.s.eq_shapes[-1], generator=gen,
                                     dtype=torch.float64).to(dev)
            ref = to_literal(state['model']).double().to(dev).eval()
            state['ref'] = self._outs_grads(ref, state['x'], None, state)
            del ref
        model.eval()
        x32 = state['x'].float()
        outs, grads = self._outs_grads(model, x32, None, state)
        ref_o, ref_g = state['ref']
        row = dict(err_fp32=output_error(outs, ref_o),
                   grad_err_fp32=grad_error(grads, ref_g),
                   grads_finite=True)
        for amp in amps:
            if amp is None:
                continue
            o, g = self._outs_grads(model, x32, amp, state)
            row[f'err_{_dtype_name(amp)}'] = output_error(o, outs)
            row['grads_finite'] = row['grads_finite'] and all(
                bool(torch.isfinite(t).all()) for t in g.values())
        return row

    @staticmethod
    def _outs_grads(model, x, amp, state):
        """Outputs (float64) and parameter gradients of a fixed random
        weighting of the outputs (``state['w']``, made on first use)."""
        model.zero_grad(set_to_none=True)
        with _autocast(x.device, amp):
            outs = [o.double() for o in model(x)]
        if 'w' not in state:
            gen = torch.Generator().manual_seed(9)
            state['w'] = [(torch.randn(o.shape, generator=gen,
                                       dtype=torch.float64) /
                           math.sqrt(o.numel())).to(x.device) for o in outs]
        sum((o * w).sum() for o, w in zip(outs, state['w'])).backward()
        grads = {n: p.grad.detach().double().clone()
                 for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return [o.detach() for o in outs], grads

    # -- compile -----------------------------------------------------------
    def compile(self, sec: Dict, backend: str):
        budget = min(self.compile_budget_s, self.remaining() - 5)
        sec['settings'] = dict(backend=backend, budget_s=budget)
        if budget < 30:
            raise DeadlinePassed(
                f'not started: torch.compile ({budget:.0f} s left < 30 s)')
        self._guarded_row(sec, dict(kind='compile', model='rest_small'),
                          lambda: self._compile_child(backend, budget))

    def _compile_child(self, backend: str, budget: float) -> Dict:
        self._free()
        args = dict(device=str(self.device),
                    shape=list(self.s.small), repeats=self.s.repeats,
                    warmup=self.s.warmup, backend=backend)
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [REPO_ROOT] + [p for p in env.get('PYTHONPATH', '').split(
                os.pathsep) if p])
        code = ('import json, sys; from mmrest_tools.gpu_check import '
                'compile_worker; compile_worker(json.loads(sys.argv[1]))')
        proc = subprocess.Popen([sys.executable, '-c', code, json.dumps(args)],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return dict(error=f'timed out after {budget:.0f} s',
                        log_tail=out[-1500:])
        for line in out.splitlines()[::-1]:
            if line.startswith('COMPILE_RESULT '):
                return json.loads(line[len('COMPILE_RESULT '):])
        return dict(error=f'child exited {proc.returncode} without a result',
                    log_tail=out[-1500:])


def compile_worker(args: Dict):
    """Child process of the compile section: ResT-Small eval under fp16
    autocast, eager and ``torch.compile``; prints one ``COMPILE_RESULT``
    JSON line."""
    dev = torch.device(args['device'])
    torch.backends.cudnn.benchmark = True
    model = build_rest('small').to(dev)
    x = torch.rand(*args['shape'], generator=torch.Generator().manual_seed(5)
                   ).to(dev)
    res = dict(backend=args['backend'])
    amp = torch.float16
    eager = None
    try:
        with torch.no_grad(), _autocast(dev, amp):
            eager = [o.float() for o in model(x)]
            ms = time_calls(lambda: model(x), dev, args['repeats'],
                            args['warmup'])
        res['eager_ms'] = statistics.median(ms)
    except Exception as e:  # noqa: BLE001 (compile is still tried)
        res['eager_error'] = _short_error(e)
    try:
        compiled = torch.compile(model, backend=args['backend'])
        t = time.perf_counter()
        with torch.no_grad(), _autocast(dev, amp):
            outs = [o.float() for o in compiled(x)]
            _sync(dev)
            res['compile_s'] = time.perf_counter() - t
            ms = time_calls(lambda: compiled(x), dev, args['repeats'],
                            args['warmup'])
        res['compiled_ms'] = statistics.median(ms)
        res['img_s'] = args['shape'][0] * 1e3 / res['compiled_ms']
        if eager is not None:
            res['speedup'] = res['eager_ms'] / res['compiled_ms']
            res['err_vs_eager'] = output_error(outs, eager)
    except Exception as e:  # noqa: BLE001
        res['error'] = 'torch.compile: ' + _short_error(e)
    if 'eager_error' in res and 'error' not in res:
        res['error'] = 'eager: ' + res['eager_error']
    print('COMPILE_RESULT ' + json.dumps(res), flush=True)


# --------------------------------------------------------------------------
# Synthetic detection data
# --------------------------------------------------------------------------
def synthetic_det_batch(batch: int, height: int, width: int,
                        objects: int = 4, seed: int = 0) -> Dict:
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
        inputs.append(torch.from_numpy(
            rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        boxes, masks = [], []
        for _ in range(objects):
            w = rng.uniform(0.1, 0.4) * width
            h = rng.uniform(0.1, 0.4) * height
            x1 = rng.uniform(0, width - w)
            y1 = rng.uniform(0, height - h)
            boxes.append([x1, y1, x1 + w, y1 + h])
            cx, cy = x1 + w / 2, y1 + h / 2
            masks.append((((xx - cx) / (w / 2))**2 +
                          ((yy - cy) / (h / 2))**2 <= 1).astype(np.uint8))
        sample = DetDataSample(metainfo=dict(
            img_id=i, img_path=f'synthetic_{i}.jpg', ori_shape=(height, width),
            img_shape=(height, width), scale_factor=(1.0, 1.0), flip=False,
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


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------
def _fmt(v, spec: str = '.3g') -> str:
    if v is None:
        return '-'
    if isinstance(v, bool):
        return 'yes' if v else '**NO**'
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _status(row: Dict) -> Optional[str]:
    if 'error' in row:
        return f'error: {row["error"][:160]}'
    if 'skipped' in row:
        return ('skipped (deadline)' if str(row['skipped']).startswith(
            'not started') else f'skipped: {row["skipped"]}')
    return None


def _md_equality(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``equality`` section: the equality rows and the GradScaler steps."""
    lines: List[str] = []
    if sec.get('criteria'):
        lines.append('Criteria: fp32 ' + sec['criteria']['fp32'] +
                     '; autocast ' + sec['criteria']['amp'] + '.')
    lines += ['', '| model | input | mode | dtype | out err fast | '
              'out err literal | ratio | grad err fast | '
              'grad err literal | pass |', '|' + '---|' * 10]
    for r in rows:
        if r.get('kind') != 'equality':
            continue
        st = _status(r)
        cells = [r['model'], r['input'], r['mode'], r['dtype']]
        if st:
            cells += [st, '', '', '', '', '']
        else:
            cells += [_fmt(r.get('err_fast')),
                      _fmt(r.get('err_literal')),
                      _fmt(r.get('ratio'), '.2f'),
                      _fmt(r.get('grad_err_fast')),
                      _fmt(r.get('grad_err_literal')),
                      _fmt(r.get('pass'))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    steps = [r for r in rows if r.get('kind') == 'amp_steps']
    if steps:
        n = len(steps[0].get('steps', [])) or '?'
        lines += ['', f'| fp16 + GradScaler, {n} steps | input | '
                  'loss scale | skipped steps | non-finite grads | '
                  'pass |', '|' + '---|' * 6]
        for r in steps:
            st = _status(r)
            cells = [f'{r["model"]} {r["path"]}', r['input']]
            cells += ([st, '', '', ''] if st else [
                _fmt(r.get('scale')), _fmt(r.get('skipped_steps')),
                _fmt(r.get('nonfinite_grads')), _fmt(r.get('pass'))
            ])
            lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _md_throughput(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``throughput`` section: backbone speed and memory."""
    lines: List[str] = []
    st = sec.get('settings', {})
    small, large = st.get('small', '?'), st.get('large', '?')
    amp = st.get('amp', 'float16')
    amp = 'fp16' if amp == 'float16' else amp
    lines += [
        f'cudnn.benchmark {st.get("cudnn_benchmark")}. Eval, no autograd, '
        f'median of {st.get("repeats")} CUDA-event timings after '
        f'{st.get("warmup")} warm-ups; train step at '
        f'{st.get("train", large)} (train mode, forward + backward): '
        f'median of {st.get("train_repeats", 1)} timed steps after '
        f'{st.get("train_warmup", 0)} warm-ups, each between two '
        'synchronisations, and the peak memory above what was allocated '
        'before the steps.', '',
        f'| backbone | params (M) | {small} fp32 img/s | {small} {amp} '
        f'img/s | {large} fp32 ms | {large} {amp} ms | train step '
        f'fp32 ms | train step {amp} ms | train step '
        f'fp32 MiB | train step {amp} MiB |', '|' + '---|' * 10]
    for r in rows:
        st_ = _status(r)
        cells = [r['model']]
        if st_:
            cells += [st_] + [''] * 8
        else:
            def cell(key, spec):
                err = r.get('_'.join(key.split('_')[:2]) + '_error')
                if key in r:
                    return _fmt(r[key], spec)
                return f'error: {err[:80]}' if err else '-'
            cells += [
                _fmt(r.get('params_M'), '.1f'),
                cell('small_fp32_img_s', '.0f'),
                cell('small_fp16_img_s', '.0f'),
                cell('large_fp32_ms', '.1f'),
                cell('large_fp16_ms', '.1f'),
                cell('train_fp32_step_ms', '.1f'),
                cell('train_amp_step_ms', '.1f'),
                cell('train_fp32_step_peak_MiB', '.0f'),
                cell('train_amp_step_peak_MiB', '.0f')
            ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _md_maskrcnn(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``maskrcnn`` section: the Mask R-CNN training iteration."""
    lines: List[str] = []
    st = sec.get('settings', {})
    lines += [
        f'One training iteration at {st.get("image")}, batch '
        f'{st.get("batch")}: {st.get("amp")}; median of '
        f'{st.get("timed_iters")} timed iterations after '
        f'{st.get("warmup")} warm-ups.', '',
        '| model | params (M) | iteration ms | peak MiB | '
        'skipped steps | last loss |', '|' + '---|' * 6]
    for r in rows:
        st_ = _status(r)
        cells = [r['model']]
        cells += ([st_, '', '', '', ''] if st_ else [
            _fmt(r.get('params_M'), '.1f'),
            _fmt(r.get('iter_ms'), '.0f'),
            _fmt(r.get('peak_MiB'), '.0f'),
            _fmt(r.get('skipped_steps')),
            _fmt(r.get('loss_last'), '.3f')
        ])
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _md_syncbn(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``syncbn`` section: SyncBatchNorm against BatchNorm."""
    lines: List[str] = []
    lines += ['', '| model | norms | grads finite | train err vs BN '
              '| eval err vs BN |', '|' + '---|' * 5]
    for r in rows:
        st_ = _status(r)
        cells = [r['model']]
        cells += ([st_, '', '', ''] if st_ else [
            ', '.join(r.get('norms', [])), str(r.get('grads_finite')),
            _fmt(r.get('train_err_vs_bn')),
            _fmt(r.get('eval_err_vs_bn'))])
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _md_compile(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``compile`` section: torch.compile against eager."""
    lines: List[str] = []
    lines += ['', '| model | backend | compile s | eager ms | '
              'compiled ms | speed-up | err vs eager |',
              '|' + '---|' * 7]
    for r in rows:
        st_ = _status(r)
        cells = [r['model'], str(sec.get('settings', {}).get(
            'backend'))]
        cells += ([st_, '', '', '', ''] if st_ else [
            _fmt(r.get('compile_s'), '.0f'),
            _fmt(r.get('eager_ms'), '.1f'),
            _fmt(r.get('compiled_ms'), '.1f'),
            _fmt(r.get('speedup'), '.2f'),
            _fmt(r.get('err_vs_eager'))
        ])
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _md_variants(sec: Dict, rows: List[Dict]) -> List[str]:
    """Markdown lines of the ``variants`` section: EMSA's cores against the
    literal path, ResT v2-Tiny and Swin-T."""
    st = sec.get('settings', {})
    amps = st.get('train_amp', ['float16', 'bfloat16'])
    lines = [
        f'cudnn.benchmark {st.get("cudnn_benchmark")}; training step at '
        f'{st.get("train")} (train mode, forward + backward): median of '
        f'{st.get("train_repeats")} after {st.get("train_warmup")} '
        f'warm-ups, each between two synchronisations; inference: median '
        f'of {st.get("repeats")} after {st.get("warmup")}; errors on '
        f'{st.get("eq_input")}, eval mode with autograd: fp32 against the '
        'literal path in float64, autocast against the same model in '
        f'float32; pass: fp32 {st.get("criteria", {}).get("fp32")}, '
        f'autocast {st.get("criteria", {}).get("amp")} (err_literal: the '
        'rest_small_literal row).', '',
        '| ' + ' | '.join(
            ['model', 'EMSA core', 'fp32 err', 'fp32 grad err']
            + [f'{a} err' for a in amps if a != 'float32'] + ['pass']
            + [f'train {a} ms' for a in amps]
            + [f'train {a} MiB' for a in amps]
            + [f'{st.get("small")} fp32 img/s',
               f'{st.get("small")} fp16 img/s',
               f'{st.get("large")} fp32 ms', f'{st.get("large")} fp16 ms'])
        + ' |']
    ncols = lines[-1].count('|') - 1
    lines.append('|' + '---|' * ncols)
    for r in rows:
        if r.get('kind') != 'variant':
            continue
        cells = [r['model'], str(r.get('core') or '-')]
        st_ = _status(r)
        if st_:
            cells += [st_] + [''] * (ncols - 3)
        else:
            cells += [_fmt(r.get('err_fp32')), _fmt(r.get('grad_err_fp32'))]
            cells += [_fmt(r.get(f'err_{a}')) for a in amps
                      if a != 'float32']
            cells.append(_fmt(r.get('pass')))
            cells += [_fmt(r.get(f'train_{a}_step_ms'), '.1f')
                      if f'train_{a}_step_ms' in r else
                      'error: ' + r.get(f'train_{a}_error', '-')[:80]
                      for a in amps]
            cells += [_fmt(r.get(f'train_{a}_step_peak_MiB'), '.0f')
                      for a in amps]
            cells += [_fmt(r.get('small_fp32_img_s'), '.0f'),
                      _fmt(r.get('small_fp16_img_s'), '.0f'),
                      _fmt(r.get('large_fp32_ms'), '.1f'),
                      _fmt(r.get('large_fp16_ms'), '.1f')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    for r in rows:
        if r.get('kind') == 'sdpa_backends':
            lines += ['', 'SDPA backends for the mixed-query attention '
                      '(forward and backward; values of d or C channels): '
                      + (_status(r) or ', '.join(
                          f'{k}: {v}' for k, v in r.get(
                              'backends', {}).items()))]
    return lines


_SECTION_MARKDOWN = {
    'variants': _md_variants,
    'equality': _md_equality,
    'throughput': _md_throughput,
    'maskrcnn': _md_maskrcnn,
    'syncbn': _md_syncbn,
    'compile': _md_compile,
}


def to_markdown(results: Dict) -> str:
    """The tables of a result dict (``gpu_check.json``)."""
    meta = results.get('meta', {})
    dev = meta.get('device', {})
    lines = [
        f'## GPU check: {dev.get("name", "?")}', '',
        f'torch {dev.get("torch")}, CUDA {dev.get("cuda")}, cuDNN '
        f'{dev.get("cudnn")}, Python {dev.get("python")}; '
        + ', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())
        + f'; started {meta.get("started")}, {_fmt(meta.get("elapsed_s"), ".0f")} s'
        + (' (quick mode)' if meta.get('quick') else ''),
    ]
    shim = meta.get('ops_shim') or {}
    if shim:
        lines.append(
            f'mmcv ops shim: {"used, " + str(shim.get("backend")) if shim.get("used") else "not used"}'
            f' ({shim.get("reason", "")})'[:300])
    secs = results.get('sections', {})
    for name, sec in secs.items():
        lines += ['', f'### {name}: {sec.get("status")}'
                  + (f' ({sec["error"]})' if sec.get('error') else '')]
        if sec.get('note'):
            lines.append(f'{sec["note"]}')
        rows = sec.get('rows', [])
        lines += _SECTION_MARKDOWN.get(name, lambda sec, rows: [])(sec, rows)
    return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Prepared GPU check of mmrest: equality '
        'under fp32/fp16/bf16, backbone throughput and memory, one AMP '
        'Mask R-CNN training iteration; JSON and Markdown to --out.')
    parser.add_argument('--device', default=None,
                        help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--out', default='work_dirs/gpu_check',
                        help='output folder (gpu_check.json, gpu_check.md)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes, one repeat: a smoke test')
    parser.add_argument('--sections', default=','.join(SECTIONS),
                        help=f'comma-separated subset of {SECTIONS}')
    parser.add_argument('--deadline-s', type=float, default=420.0,
                        help='no new step starts after this many seconds')
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed calls per throughput figure')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed calls before timing')
    parser.add_argument('--mr-iters', type=int, default=None,
                        help='timed Mask R-CNN iterations')
    parser.add_argument('--compile-backend', default=None,
                        help='torch.compile backend (default inductor; '
                        '"off" skips; quick mode: off)')
    parser.add_argument('--compile-budget-s', type=float, default=150.0,
                        help='time limit of the torch.compile child')
    parser.add_argument('--force-ops-shim', action='store_true',
                        help='use the mmcv ops shim even where mmcv._ext '
                        'imports (testing)')
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f'unknown sections {unknown}; choose from {SECTIONS}')
    args.sections = sections
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device not in ('cuda', 'cpu'):
        parser.error(f'--device must be cuda or cpu, got {args.device!r}')
    if args.compile_backend is None:
        args.compile_backend = 'off' if args.quick else 'inductor'
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds')
    check = GpuCheck(args.device, args.out,
                     Settings(args.quick, args.repeats, args.warmup,
                              args.mr_iters),
                     deadline_s=args.deadline_s,
                     compile_budget_s=args.compile_budget_s)
    meta = check.results['meta']
    meta.update(started=started, quick=args.quick, argv=sys.argv[1:],
                deadline_s=args.deadline_s)
    check.log(f'out: {osp.abspath(args.out)}')
    # Before anything imports mmcv.ops: stand in for missing compiled ops.
    from mmrest_tools import ops_shim
    try:
        meta['ops_shim'] = ops_shim.install(
            force=True if args.force_ops_shim else None,
            device=args.device)
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
    check.save()
    want = set(args.sections)
    if 'equality' in want:
        check.run_section('equality', check.equality)
    if 'syncbn' in want:
        check.run_section('syncbn', check.syncbn)
    if 'throughput' in want:
        check.run_section(
            'throughput',
            lambda sec: check.throughput(sec, check.s.throughput_models))
    if 'maskrcnn' in want:
        check.run_section('maskrcnn', check.maskrcnn)
    if 'variants' in want:
        check.run_section(
            'variants', lambda sec: check.variants(sec, args.compile_backend))
    if 'throughput' in want and check.s.more_models:
        check.run_section(
            'throughput',
            lambda sec: check.throughput(sec, check.s.more_models))
    if 'compile' in want:
        if args.compile_backend == 'off':
            check.results['sections']['compile'] = dict(
                status='skipped', error='--compile-backend off', rows=[])
        else:
            check.run_section(
                'compile', lambda sec: check.compile(sec,
                                                     args.compile_backend))
    meta['finished'] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds')
    check.save()
    check.log(f'wrote {check.json_path} and {check.md_path}')
    print(to_markdown(check.results), flush=True)
    return check.results
