# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""FLOPs and parameters of a detector built from a config.

mmengine's FLOP counter (fvcore's rules: one multiply-add is one FLOP;
element-wise ops, softmax and the like are not counted) traces the model on
one image of a fixed size in ``mode='tensor'`` (mmdet's ``_forward``: for a
two-stage detector, the RPN, its proposals and the RoI heads). Two
operators ResT uses are not in mmengine's table and are added here:

* ``scaled_dot_product_attention`` (EMSA with one head): ``q @ k^T`` and
  ``attn @ v``, ``2 * B * h * N * M * d``;
* ``baddbmm`` (EMSA's head mixing): as ``bmm``.
"""
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


def detector_complexity(cfg: Config,
                        shape: Sequence[int] = (800, 1280)) -> Dict:
    """FLOPs and parameters of ``cfg.model`` on one (H, W) image.

    The backbone is built without its pretrained checkpoint (the numbers do
    not depend on weights).

    Returns:
        dict: ``flops``, ``params``, ``backbone_flops``, ``backbone_params``,
        ``shape`` (H, W) and ``unsupported_ops`` (operators not counted).
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.model import revert_sync_batchnorm
    register_all_modules()
    height, width = (int(s) for s in shape)
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
    inputs, samples = dummy_detection_batch(model, height, width)
    model.forward = partial(model.forward, data_samples=samples,
                            mode='tensor')
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
