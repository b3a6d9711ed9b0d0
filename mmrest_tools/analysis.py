# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""FLOPs, parameters and CPU inference time of a detector built from a
config.

mmengine's FLOP counter (fvcore's rules: one multiply-add is one FLOP;
element-wise ops, softmax and the like are not counted) traces the model on
one image of a fixed size in ``mode='tensor'`` (mmdet's ``_forward``: for a
two-stage detector, the RPN, its proposals and the RoI heads). Two
operators ResT uses are not in mmengine's table and are added here:

* ``scaled_dot_product_attention`` (EMSA with one head): ``q @ k^T`` and
  ``attn @ v``, ``2 * B * h * N * M * d``;
* ``baddbmm`` (EMSA's head mixing): as ``bmm``.

mmdet's stock ``tools/analysis_tools/get_flops.py`` lacks both handles, so
it prints less for ResT detectors (docs/benchmarks.md, "FLOPs and
parameters") and lists the attention's modules as
never called.

:func:`detector_inference_time` is the CPU counterpart of mmdet's
``benchmark.py`` (CUDA only): seconds per image of ``mode='predict'`` on a
synthetic image, whole detector and backbone alone.
"""
import statistics
import time
from functools import partial
from typing import Any, Dict, List, Sequence

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import bmm_flop_jit, get_shape
from mmengine.config import Config


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOPs of ``aten::scaled_dot_product_attention``: two products."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, n, d = q
    m = k[-2]
    num = 1
    for b in batch:
        num *= b
    return num * n * m * (d + v[-1])


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOPs of ``aten::baddbmm(bias, a, b)``: the product ``a @ b``."""
    return bmm_flop_jit(inputs[1:3], outputs)


EXTRA_FLOP_HANDLES = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
    'aten::baddbmm': baddbmm_flop_jit,
}


def dummy_detection_batch(model, height: int, width: int):
    """One image of ``height`` x ``width`` (already padded to the size
    divisor) and its data sample, as the data preprocessor would give."""
    from mmdet.structures import DetDataSample
    param = next(model.parameters())
    inputs = torch.rand(1, 3, height, width, device=param.device)
    sample = DetDataSample(
        metainfo=dict(
            img_shape=(height, width),
            ori_shape=(height, width),
            pad_shape=(height, width),
            batch_input_shape=(height, width),
            scale_factor=(1.0, 1.0)))
    return inputs, [sample]


def build_detector_without_weights(cfg: Config, height: int, width: int):
    """``cfg.model`` in eval mode, SyncBN as BN, the backbone without its
    pretrained checkpoint; checks that (height, width) is positive and
    padded as the model's data preprocessor pads."""
    if height < 1 or width < 1:
        raise ValueError(f'shape {height} x {width}: height and width must '
                         'be positive')
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.model import revert_sync_batchnorm
    register_all_modules()
    divisor = cfg.model.get('data_preprocessor', {}).get(
        'pad_size_divisor', 1) or 1
    if height % divisor or width % divisor:
        raise ValueError(
            f'shape {height} x {width} is not a multiple of the model\'s '
            f'pad_size_divisor {divisor}: pass a padded size')
    model_cfg = cfg.model.copy()
    if 'init_cfg' in model_cfg.get('backbone', {}):
        model_cfg.backbone.init_cfg = None
    model = revert_sync_batchnorm(MODELS.build(model_cfg)).eval()
    return model


def detector_complexity(
    cfg: Config, shape: Sequence[int] = (800, 1280)) -> Dict:
    """FLOPs and parameters of ``cfg.model`` on one (H, W) image.

    The backbone is built without its pretrained checkpoint (the numbers do
    not depend on weights).

    Returns:
        dict: ``flops``, ``params``, ``backbone_flops``, ``backbone_params``,
        ``shape`` (H, W) and ``unsupported_ops`` (operators not counted).
    """
    height, width = (int(s) for s in shape)
    model = build_detector_without_weights(cfg, height, width)
    inputs, samples = dummy_detection_batch(model, height, width)
    model.forward = partial(model.forward, data_samples=samples, mode='tensor')
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.set_op_handle(**EXTRA_FLOP_HANDLES)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        flops = analyzer.total()
        backbone_flops = analyzer.total('backbone')
        unsupported = dict(analyzer.unsupported_ops())
    params = parameter_count(model)
    return dict(
        shape=(height, width),
        flops=flops,
        params=params[''],
        backbone_flops=backbone_flops,
        backbone_params=params['backbone'],
        unsupported_ops=unsupported)


def detector_inference_time(cfg: Config,
                            shape: Sequence[int] = (800, 1344),
                            repeats: int = 5,
                            warmup: int = 1,
                            checkpoint: str = None) -> Dict:
    """CPU seconds per image of ``cfg.model`` in ``mode='predict'`` (the
    data preprocessor's output given: one synthetic image of ``shape``,
    padded), and of its backbone alone, eval mode, no autograd.

    Args:
        cfg (Config): A detector config.
        shape (Sequence[int]): Input (H, W), a multiple of the model's
            ``pad_size_divisor``.
        repeats (int): Timed calls of each; the median is reported.
        warmup (int): Untimed calls before.
        checkpoint (str, optional): Weights to load (random otherwise; the
            time of the post-processing depends on how many boxes pass).

    Returns:
        dict: ``shape``, ``threads``, ``detector_s`` and ``backbone_s``
        (medians), ``detector_all`` and ``backbone_all`` (every timing).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f'repeats must be >= 1 and warmup >= 0, got '
                         f'{repeats} and {warmup}')
    height, width = (int(s) for s in shape)
    model = build_detector_without_weights(cfg, height, width)
    if checkpoint:
        from mmengine.runner import load_checkpoint

        from mmrest.checkpoint import mmengine_safe_loading
        with mmengine_safe_loading():
            load_checkpoint(model, checkpoint, map_location='cpu')
    inputs, samples = dummy_detection_batch(model, height, width)
    calls = dict(
        detector=lambda: model(inputs, samples, mode='predict'),
        backbone=lambda: model.backbone(inputs))
    result = dict(shape=(height, width), threads=torch.get_num_threads())
    with torch.no_grad():
        for name, call in calls.items():
            for _ in range(warmup):
                call()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            result[f'{name}_s'] = statistics.median(times)
            result[f'{name}_all'] = times
    return result
