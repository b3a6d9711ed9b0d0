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
    the literal path (:func:`mmrest.backbones.to_literal`) against the literal
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
    from eager. Then its fp16 training step at four batch sizes of Mask
    R-CNN's 1x pipeline in turn (2x3x800x1344, 800x1216, 736x1344,
    800x1088), eager and compiled with automatic dynamic shapes (as
    mmengine's ``compile=True``): the graphs compiled and which are
    symbolic, the first pass's seconds, the gradients against eager's, the
    median step per size after warm-up, and graphs compiled while timed.

``--emsa-core`` names the formulation of EMSA's multi-head core that every
section but ``variants`` and ``compile`` runs with (``default``: the
library's); ``auto`` runs ``variants`` first and then, of the cores that
pass, the fastest training step with no more peak memory than the default
for calls with autograd, and the fastest inference for calls without
(:func:`~.variants.choose_core`), recorded in ``meta.emsa_core``.

Every section and every row is independent: an error is recorded (text in
the JSON and the table) and the run goes on. After ``--deadline-s``
seconds no new step starts. ``--device cpu --quick`` runs every section's
code at tiny sizes (the test suite does).

Where mmcv has no compiled ops (``mmcv-lite``), :mod:`mmrest_tools.ops_shim`
stands in for the three that Mask R-CNN needs; the JSON's ``meta.ops_shim``
says whether it was used.

The package, one module per concern: :mod:`.settings` (sections, models,
criteria, sizes), :mod:`.measure` (timing and error measures), the
backbones of :mod:`mmrest_tools.compared` (shared with the CPU benchmark),
:mod:`.base` (running sections and saving rows), one module
per section (:mod:`.equality`, :mod:`.syncbn`, :mod:`.throughput`,
:mod:`.maskrcnn`, :mod:`.variants`, :mod:`.torch_compile`), :mod:`.check`
(:class:`GpuCheck`, all of them together), :mod:`.report` (Markdown) and
:mod:`.cli`.
"""
from ..compared import build_backbone, build_rest
from .base import CheckRunner, DeadlinePassed
from .check import GpuCheck
from .cli import main, parse_args
from .maskrcnn import synthetic_det_batch
from .measure import (backbone_step, device_info, grad_error, output_error,
                      randomize_norms, set_cudnn_benchmark, time_calls,
                      time_steps, versions)
from .report import to_markdown
from .settings import (AMP_FACTOR, AMP_FLOOR, CUDNN_BENCHMARK, FP32_FLOOR,
                       MASKRCNN_MODELS, QUICK_REST_ARCH, REPO_ROOT, SECTIONS,
                       THROUGHPUT_MAIN, THROUGHPUT_MORE, Settings)
from .torch_compile import compile_worker
from .variants import choose_core

__all__ = [
    'AMP_FACTOR', 'AMP_FLOOR', 'CUDNN_BENCHMARK', 'FP32_FLOOR',
    'MASKRCNN_MODELS', 'QUICK_REST_ARCH', 'REPO_ROOT', 'SECTIONS',
    'THROUGHPUT_MAIN', 'THROUGHPUT_MORE', 'CheckRunner', 'DeadlinePassed',
    'GpuCheck', 'Settings', 'backbone_step', 'build_backbone', 'build_rest',
    'choose_core', 'compile_worker', 'device_info', 'grad_error', 'main',
    'output_error', 'parse_args', 'randomize_norms', 'set_cudnn_benchmark',
    'synthetic_det_batch', 'time_calls', 'time_steps', 'to_markdown',
    'versions'
]
