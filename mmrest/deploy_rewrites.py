# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""mmdet's and mmseg's own computations in mmdeploy's ONNX Runtime graphs.

mmdeploy 1.3.1 rewrites the detectors' post-processing in ways that change
the detections of a trained detector (docs/deployment.md):

1. **RPN**: one NMS over the proposals of all FPN levels (mmdet: levels
   never suppress each other), a score threshold (mmdet: none), no
   ``min_bbox_size`` filter.
2. **Box head** (Mask R-CNN's): each RoI decoded with the regression of its
   best class only, that box used for every class (mmdet: each class its
   own box); the RPN's padding (a zero box) taken as a proposal.
3. **RetinaNet, FCOS, ATSS**: per level the priors of the ``nms_pre`` best
   top-class scores (mmdet: the ``nms_pre`` best (prior, class) pairs above
   the threshold), FCOS's and ATSS's multiplied by their centerness before
   (mmdet: after), no ``min_bbox_size`` filter.
4. **Cascade R-CNN**: between stages, class-agnostic box regression only
   (an assertion fails on mmdet's Swin / ConvNeXt cascade recipe, which
   configs/cascade_rcnn follows: each RoI moves by its best class's
   regression); the stages' mask logits averaged (mmdet: their
   probabilities).

Within :func:`mmdet_post_processing` (on by default in
:func:`mmrest.deploy.export_detector` and
:func:`mmrest.deploy.rewritten_outputs`), the functions below replace
mmdeploy's for the ONNX Runtime backend. They compute what mmdet computes,
with the same NMS arithmetic: boxes of different classes (levels, for the
RPN) are shifted apart by the class times the largest coordinate plus one,
the largest over the boxes that enter the NMS, as mmdet's ``batched_nms``
does, and one ONNX ``NonMaxSuppression`` runs over them. Differences remain
at the level of rounding only: the NMS sees the boxes in the network
input's coordinates (mmdet's second stage and dense heads: rescaled to the
original image; IoUs are the same up to rounding), and scores at most
1.2e-38 (float32 ``tiny``: sigmoid logits under -87) are dropped (mmdet's
RPN keeps them, last). Other heads keep mmdeploy's rewrites.

For segmentors, mmdeploy replaces adaptive average pooling (UperNet's
pyramid pooling module) by an ``avg_pool2d`` whose kernel and stride are
the traced map's size over the output size, rounded down: fixed in the
graph, wrong for any map size that is not a multiple of the output size,
and an error for a map smaller than it. Within
:func:`exact_adaptive_pooling` (always on in :mod:`mmrest.deploy`),
:func:`adaptive_avg_pool2d` replaces it: torch's windows, as two averaging
matrices computed from the input's (dynamic) height and width. And mmseg's
``Upsample`` module (Semantic FPN's ``FPNHead``: each scale head doubles its
map) computes its output size with Python's ``int`` from the traced input
size: a constant in the graph, so that at any other input size the map is
upsampled to the traced size and then resized, wrong. Within
:func:`exact_upsampling` (always on in :mod:`mmrest.deploy`),
:func:`upsample__forward` computes the size in the graph, and
:func:`point_head__get_points_test` PointRend's number of points (mmseg's
``min(h * w, subdivision_num_points)``, likewise a Python choice).

And mmdeploy cannot export TOOD's head: its symbolic of mmcv's deformable
convolution (the head's ``deform_sampling``) fails, and the export of
mmdet's autograd function for the geometric mean of two sigmoids fails
within mmdeploy's (``Dangling node reference``). Within
:func:`exportable_tood` (always on in :mod:`mmrest.deploy`),
:func:`deform_sampling` computes mmcv's sampling with plain gathers and
:func:`tood_head__sigmoid_geometric_mean` the function's forward.

Last, torch exports ``GroupNorm`` (the heads of FCOS, ATSS, TOOD, DINO's
neck, Mask2Former's pixel decoder) as ``InstanceNormalization``, which ONNX
Runtime computes 7 to 45 times less accurately than torch over the groups
of detection-sized maps. Within :func:`exact_group_norm` (always on in
:mod:`mmrest.deploy`), :func:`group_norm` reduces one axis at a time, as
accurately as torch. :func:`mmrest_rewrites` turns all of them on.

Outside the ``with`` blocks mmdeploy's own rewrites apply: the switches are
rewriter checkers, read when mmdeploy's ``RewriterContext`` starts.
"""
import contextlib
import importlib.util
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from mmdeploy.core import FUNCTION_REWRITER, SYMBOLIC_REWRITER
from mmdeploy.core.rewriters.rewriter_utils import Checker
from mmdeploy.mmcv.ops.nms import ONNXNMSop
from mmdet.structures.bbox import get_box_tensor
from torch.nn.modules.utils import _pair

#: Scores must exceed this to enter the RPN's NMS (float32's smallest
#: normal number: mmdeploy's NMS, eager and in ONNX Runtime, keeps
#: ``score > threshold`` only for a positive threshold).
MIN_SCORE = torch.finfo(torch.float32).tiny

#: The NMS's limit where :func:`nms_by_class` has none (ONNX's
#: ``NonMaxSuppression`` takes 0 as none; mmdeploy's ``topk`` rewrite
#: takes at most the rows there are).
EVERY = 2**31 - 1

_SWITCH = {
    'mmdet': False,
    'pooling': False,
    'upsample': False,
    'tood': False,
    'norm': False
}


class _Switched(Checker):
    """A rewriter checker that holds while the switch ``key`` is on
    (:func:`mmdet_post_processing`, :func:`exact_adaptive_pooling`,
    :func:`exact_upsampling`, :func:`exportable_tood`,
    :func:`exact_group_norm`)."""

    def __init__(self, key: str):
        self.key = key

    def check(self, env: dict) -> bool:
        return _SWITCH[self.key]


@contextlib.contextmanager
def _switch(key: str, enabled: bool) -> Iterator[None]:
    before = _SWITCH[key]
    _SWITCH[key] = bool(enabled)
    try:
        yield
    finally:
        _SWITCH[key] = before


def mmdet_post_processing(enabled: bool = True):
    """Within the block, mmdeploy rewrites for ONNX Runtime started (its
    ``RewriterContext``, its ``export``) use mmdet's post-processing for the
    RPN, the box head, RetinaNet, FCOS, ATSS and the cascade (see the
    module's docstring).

    Args:
        enabled (bool): False leaves mmdeploy's own rewrites in place.
    """
    return _switch('mmdet', enabled)


def exact_adaptive_pooling(enabled: bool = True):
    """Within the block, mmdeploy rewrites for ONNX Runtime started use
    :func:`adaptive_avg_pool2d` for ``F.adaptive_avg_pool2d`` (and so for
    ``nn.AdaptiveAvgPool2d``) instead of mmdeploy's fixed average pooling.

    Args:
        enabled (bool): False leaves mmdeploy's own rewrite in place.
    """
    return _switch('pooling', enabled)


def exact_upsampling(enabled: bool = True):
    """Within the block, mmdeploy rewrites for ONNX Runtime started use
    :func:`upsample__forward` for mmseg's ``Upsample`` module (its output
    size computed in the graph from the input's) and
    :func:`point_head__get_points_test` for PointRend's subdivision (its
    number of points likewise).

    Args:
        enabled (bool): False leaves mmseg's own forward, whose size the
            trace fixes. Without mmseg (an optional requirement) the
            rewrite stays off: mmdeploy would warn that it finds no
            ``Upsample`` at each export.
    """
    return _switch('upsample', enabled
                   and importlib.util.find_spec('mmseg') is not None)


def exportable_tood(enabled: bool = True):
    """Within the block, mmdeploy rewrites for ONNX Runtime started compute
    TOOD's head with :func:`tood_head__deform_sampling` and
    :func:`tood_head__sigmoid_geometric_mean`, which mmdeploy can export.

    Args:
        enabled (bool): False leaves mmdet's: mmcv's deformable convolution,
            whose export for ONNX Runtime fails in mmdeploy, and an autograd
            function, whose export fails within mmdeploy's
            (``Dangling node reference``).
    """
    return _switch('tood', enabled)


def exact_group_norm(enabled: bool = True):
    """Within the block, mmdeploy rewrites for ONNX Runtime started use
    :func:`group_norm` for ``F.group_norm`` (and so for ``nn.GroupNorm``).

    Args:
        enabled (bool): False leaves torch's export, ONNX's
            ``InstanceNormalization``, which ONNX Runtime computes less
            accurately than torch over large groups (see :func:`group_norm`).
    """
    return _switch('norm', enabled)


@contextlib.contextmanager
def mmrest_rewrites(mmdet_nms: bool = True) -> Iterator[None]:
    """All of mmrest's rewrites: :func:`exact_adaptive_pooling`,
    :func:`exact_upsampling`, :func:`exportable_tood`,
    :func:`exact_group_norm` and, unless ``mmdet_nms`` is False,
    :func:`mmdet_post_processing`.

    Args:
        mmdet_nms (bool): False keeps mmdeploy's post-processing.
    """
    with exact_adaptive_pooling(), exact_upsampling(), exportable_tood(), \
            exact_group_norm(), mmdet_post_processing(mmdet_nms):
        yield


def scaled_size(size, factor: float):
    """``int(size * factor)``, mmseg's ``Upsample`` output size, for an
    int ``size`` or a traced one (a tensor: then computed in the graph, in
    float64 as Python's product, and rounded down, as ``int`` rounds a
    positive number)."""
    if isinstance(size, torch.Tensor):
        return torch.floor(size.to(torch.float64) * factor).to(torch.int64)
    return int(size * factor)


@FUNCTION_REWRITER.register_rewriter(
    'mmseg.models.utils.Upsample.forward',
    backend='onnxruntime',
    extra_checkers=[_Switched('upsample')])
def upsample__forward(self, x: torch.Tensor) -> torch.Tensor:
    """mmseg's ``Upsample.forward`` within :func:`exact_upsampling`: a
    set ``size`` as mmseg, else the input's size times ``scale_factor``
    (:func:`scaled_size`), computed in the graph."""
    if self.size:
        return FUNCTION_REWRITER.get_context().origin_func(self, x)
    size = [scaled_size(t, self.scale_factor) for t in x.shape[-2:]]
    return F.interpolate(x, size, None, self.mode, self.align_corners)


@FUNCTION_REWRITER.register_rewriter(
    'mmseg.models.decode_heads.point_head.PointHead.get_points_test',
    backend='onnxruntime',
    extra_checkers=[_Switched('upsample')])
def point_head__get_points_test(self, seg_logits: torch.Tensor,
                                uncertainty_func, cfg) -> tuple:
    """PointRend's points of one subdivision step (mmseg's
    ``PointHead.get_points_test``) within :func:`exact_upsampling`: the
    ``min(h * w, subdivision_num_points)`` most uncertain places of the
    map and their centres in [0, 1], the count computed in the graph
    (mmseg's ``min`` is a Python choice, which the trace fixes at the
    export size's: every place refined at larger sizes)."""
    uncertainty = uncertainty_func(seg_logits)
    n, _, h, w = uncertainty.shape
    places = h * w
    count = cfg.subdivision_num_points
    if isinstance(places, torch.Tensor):
        count = torch.clamp(places, max=count)
    else:
        count = min(places, count)
    indices = uncertainty.view(n, places).topk(count, dim=1)[1]
    w_step, h_step = 1.0 / w, 1.0 / h
    x = w_step / 2.0 + (indices % w).float() * w_step
    y = h_step / 2.0 + torch.div(
        indices, w, rounding_mode='floor').float() * h_step
    return indices, torch.stack([x, y], -1)


@SYMBOLIC_REWRITER.register_symbolic(
    'layer_norm',
    is_pytorch=True,
    backend='onnxruntime',
    arg_descriptors=['v', 'is', 'v', 'v', 'f', 'i'])
def layer_norm__onnxruntime(g, input, normalized_shape, weight, bias, eps,
                            cudnn_enable):
    """mmdeploy's symbolic of ``layer_norm`` (two ``ReduceMean``), valid at
    every opset: from opset 18 ``ReduceMean`` takes its axes as an input,
    and mmdeploy's, which gives them as an attribute, makes a model that
    ONNX Runtime refuses ("Unrecognized attribute: axes"); below 18 it is
    mmdeploy's own."""
    from mmdeploy.pytorch.symbolics.layer_norm import layer_norm__default
    from mmdeploy.utils import get_ir_config
    from torch.onnx import symbolic_helper
    from torch.onnx.symbolic_opset9 import add, mul, pow, sqrt, sub
    cfg = SYMBOLIC_REWRITER.get_context('layer_norm').cfg
    if get_ir_config(cfg).get('opset_version', 11) < 18:
        return layer_norm__default(g, input, normalized_shape, weight, bias,
                                   eps, cudnn_enable)
    axes = g.op(
        'Constant',
        value_t=torch.tensor(list(range(-len(normalized_shape), 0))))
    centred = sub(g, input, g.op('ReduceMean', input, axes, keepdims_i=1))
    two = symbolic_helper._generate_wrapped_number(g, 2.)
    variance = g.op('ReduceMean', pow(g, centred, two), axes, keepdims_i=1)
    out = g.op(
        'Div', centred,
        sqrt(
            g,
            add(g, variance, symbolic_helper._generate_wrapped_number(g,
                                                                      eps))))
    if not (weight is None or symbolic_helper._is_none(weight)):
        out = mul(g, out, weight)
    if not (bias is None or symbolic_helper._is_none(bias)):
        out = add(g, out, bias)
    return out


def pooling_matrix(size, out: int, like: torch.Tensor) -> torch.Tensor:
    """The ``out`` x ``size`` matrix of adaptive average pooling along one
    axis: row ``i`` averages the entries ``floor(i * size / out)`` to
    ``ceil((i + 1) * size / out) - 1``, torch's windows. ``size`` may be a
    traced size (the graph then computes the matrix for each input); the
    matrix has ``like``'s dtype and device."""
    i = torch.arange(out, device=like.device)
    start = torch.div(i * size, out, rounding_mode='floor')
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode='floor')
    j = torch.arange(size, device=like.device)
    inside = (j[None] >= start[:, None]) & (j[None] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` of an N x C x H x W tensor as
    ``rows @ x @ cols.T`` with :func:`pooling_matrix` for the height and
    the width: the same windows and weights for every H and W (float
    rounding aside), traceable to ONNX with dynamic H and W (opset 11).

    Args:
        x (Tensor): N x C x H x W.
        output_size (int | tuple): The output's height and width (None for
            the input's own, as torch).
    """
    if x.dim() != 4:
        raise ValueError(f'adaptive_avg_pool2d takes an N x C x H x W '
                         f'tensor, got {x.dim()} dimensions')
    out_h, out_w = _pair(output_size)
    out_h = x.shape[2] if out_h is None else int(out_h)
    out_w = x.shape[3] if out_w is None else int(out_w)
    rows = pooling_matrix(x.shape[2], out_h, x)
    cols = pooling_matrix(x.shape[3], out_w, x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


@FUNCTION_REWRITER.register_rewriter(
    'torch.nn.functional.adaptive_avg_pool2d',
    backend='onnxruntime',
    extra_checkers=[_Switched('pooling')])
def adaptive_avg_pool2d__onnxruntime(input: torch.Tensor, output_size):
    """mmdeploy's rewrite of ``F.adaptive_avg_pool2d`` within
    :func:`exact_adaptive_pooling`: :func:`adaptive_avg_pool2d` (global
    pooling stays torch's, ``GlobalAveragePool`` in ONNX)."""
    if tuple(_pair(output_size)) == (1, 1):
        return FUNCTION_REWRITER.get_context().origin_func(input, output_size)
    return adaptive_avg_pool2d(input, output_size)


def group_norm(x: torch.Tensor,
               num_groups: int,
               weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` with each group's mean and (biased) variance reduced
    one axis at a time: each spatial axis from the last, then the group's
    channels, every reduction a mean of equal counts, so the same
    statistics.

    torch exports ``group_norm`` as ONNX's ``InstanceNormalization`` over
    the groups, which ONNX Runtime (1.32, CPU) computes 7 to 45 times less
    accurately than torch's float32 at the sizes detectors deploy at (8
    channels of 200 x 272 with mean 10: 1.3e-5 relative to float64 against
    8.0e-7), and ``ReduceMean`` over all axes at once is no better.
    Reductions along one axis each are as accurate as torch's (7.2e-7
    there; docs/deployment.md, GroupNorm).

    Args:
        x (Tensor): N x C x ... (any number of spatial axes).
        num_groups (int): Groups of ``C / num_groups`` channels.
        weight, bias (Tensor, optional): Per channel, as ``F.group_norm``.
        eps (float): Added to the variance.
    """
    n, c = x.shape[:2]
    if not torch.jit.is_tracing() and c % num_groups:
        raise ValueError(f'group_norm: {c} channels do not split into '
                         f'{num_groups} groups')
    grouped = x.reshape(n, num_groups, -1, *x.shape[2:])

    def mean(t):
        for axis in range(t.dim() - 1, 1, -1):
            t = t.mean(axis, keepdim=True)
        return t

    centred = grouped - mean(grouped)
    out = centred / torch.sqrt(mean(centred * centred) + eps)
    out = out.reshape(x.shape)
    affine = (1, c) + (1, ) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(affine)
    if bias is not None:
        out = out + bias.reshape(affine)
    return out


@FUNCTION_REWRITER.register_rewriter(
    'torch.nn.functional.group_norm',
    backend='onnxruntime',
    extra_checkers=[_Switched('norm')])
def group_norm__onnxruntime(input: torch.Tensor,
                            num_groups: int,
                            weight: Optional[torch.Tensor] = None,
                            bias: Optional[torch.Tensor] = None,
                            eps: float = 1e-5) -> torch.Tensor:
    """mmdeploy's rewrite of ``F.group_norm`` within
    :func:`exact_group_norm`: :func:`group_norm`."""
    return group_norm(input, num_groups, weight, bias, eps)


def deform_sampling(feat: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """mmcv's ``deform_conv2d`` of ``feat`` with a 1 x 1 kernel of ones, one
    group and one deformable group per channel (mmdet's
    ``TOODHead.deform_sampling``): each channel's map sampled bilinearly at
    each pixel moved by its own offset, zero outside the map. Computed as
    mmcv computes it (the place ``y + dy``, ``x + dx``; each of the four
    neighbours weighted by ``(1 - |y - y_i|) (1 - |x - x_i|)``, zero where
    it lies outside), with plain gathers: traceable to ONNX at any opset
    without custom operators.

    Args:
        feat (Tensor): N x C x H x W.
        offset (Tensor): N x 2C x H x W, the offsets ``(dy, dx)`` of channel
            ``c`` at ``2c`` and ``2c + 1``, mmcv's layout.
    """
    n, c, h, w = feat.shape
    if not torch.jit.is_tracing() and offset.shape != (n, 2 * c, h, w):
        raise ValueError(f'deform_sampling takes offsets of shape '
                         f'{(n, 2 * c, h, w)} for features of shape '
                         f'{tuple(feat.shape)}, got {tuple(offset.shape)}')
    ys = offset[:, 0::2] + torch.arange(
        h, dtype=feat.dtype, device=feat.device)[:, None]
    xs = offset[:, 1::2] + torch.arange(
        w, dtype=feat.dtype, device=feat.device)
    flat = feat.flatten(2)
    out, zero = torch.zeros_like(feat), feat.new_zeros(())
    for y in (ys.floor(), ys.floor() + 1):
        for x in (xs.floor(), xs.floor() + 1):
            inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
            index = y.clamp(0, h - 1) * w + x.clamp(0, w - 1)
            value = flat.gather(2, index.long().flatten(2)).view_as(feat)
            weight = (1 - (ys - y).abs()) * (1 - (xs - x).abs())
            out = out + torch.where(inside, weight * value, zero)
    return out


@FUNCTION_REWRITER.register_rewriter(
    'mmdet.models.dense_heads.tood_head.TOODHead.deform_sampling',
    backend='onnxruntime',
    extra_checkers=[_Switched('tood')])
def tood_head__deform_sampling(self, feat: torch.Tensor,
                               offset: torch.Tensor) -> torch.Tensor:
    """mmdet's ``TOODHead.deform_sampling`` within :func:`exportable_tood`:
    :func:`deform_sampling` (mmdeploy's symbolic of mmcv's deformable
    convolution fails on TOOD's integer padding, and the operator it writes
    is not in mmdeploy's ONNX Runtime library)."""
    return deform_sampling(feat, offset)


@FUNCTION_REWRITER.register_rewriter(
    'mmdet.models.dense_heads.tood_head.sigmoid_geometric_mean',
    backend='onnxruntime',
    extra_checkers=[_Switched('tood')])
def tood_head__sigmoid_geometric_mean(x: torch.Tensor,
                                      y: torch.Tensor) -> torch.Tensor:
    """mmdet's ``sigmoid_geometric_mean`` in TOOD's head within
    :func:`exportable_tood`: the forward of mmdet's autograd function
    (``sqrt(sigmoid(x) sigmoid(y))``), without the function, whose export
    fails within mmdeploy's (``Dangling node reference``)."""
    return (x.sigmoid() * y.sigmoid()).sqrt()


def nms_by_class(boxes: torch.Tensor, scores: torch.Tensor,
                 classes: torch.Tensor, valid: torch.Tensor,
                 iou_threshold: float, score_threshold: float,
                 max_num: int) -> tuple:
    """mmdet's ``batched_nms`` on a batch, traceable to ONNX: per image, the
    valid candidates above ``score_threshold`` go through one NMS in which
    boxes of different classes never suppress each other, and the
    ``max_num`` best are kept.

    As mmdet, the boxes of class ``c`` are shifted by ``c * (m + 1)``,
    ``m`` the largest coordinate of the image's valid boxes, for the NMS.
    The output is laid out as mmdeploy's ``multiclass_nms``'s: a row per
    kept box, rows of other images and one padding row zero (score 0).

    Args:
        boxes (Tensor): N x K x 4 candidate boxes (x1, y1, x2, y2).
        scores (Tensor): N x K scores.
        classes (Tensor): N x K class (or level) of each candidate, long.
        valid (Tensor): N x K, False for candidates to leave out.
        iou_threshold (float): Suppress a box whose IoU with a better one
            of its class exceeds this.
        score_threshold (float): Keep only scores above this; positive.
        max_num (int): Boxes kept per image at most; every box where it
            is 0 or below, as mmdet's ``multiclass_nms``.

    Returns:
        tuple[Tensor, Tensor]: ``dets`` (N x M x 5, box and score, by
        decreasing score) and ``labels`` (N x M, the classes; -1 on other
        images' rows), M at most ``max_num``.
    """
    n = boxes.shape[0]
    max_num = max_num if max_num > 0 else EVERY
    valid = valid & (scores > score_threshold)
    highest = torch.where(valid[..., None], boxes,
                          boxes.new_tensor(float('-inf'))).flatten(1).max(1)[0]
    highest = torch.where(
        torch.isfinite(highest), highest, highest.new_zeros(()))
    offsets = classes.to(boxes.dtype) * (highest[:, None] + 1)
    scores = torch.where(valid, scores, scores.new_zeros(()))
    picked = ONNXNMSop.apply(
        boxes + offsets[..., None], scores[:, None, :], max_num,
        torch.tensor([iou_threshold], dtype=torch.float32),
        torch.tensor([score_threshold], dtype=torch.float32))
    image, box = picked[:, 0], picked[:, 2]
    dets = torch.cat([boxes[image, box], scores[image, box][:, None]], 1)
    labels = classes[image, box]
    own = image[None, :] == torch.arange(n, device=image.device)[:, None]
    dets = torch.where(own[..., None], dets[None], dets.new_zeros(()))
    labels = torch.where(own, labels[None], labels.new_full((), -1))
    dets = torch.cat([dets, dets.new_zeros(n, 1, 5)], 1)
    labels = torch.cat([labels, labels.new_zeros(n, 1)], 1)
    order = dets[..., 4].topk(max_num, dim=1)[1]
    rows = torch.arange(n, device=order.device)[:, None]
    return dets[rows, order], labels[rows, order]


def _rewrites(func_name: str):
    """Register the decorated function as mmdeploy's rewrite of
    ``func_name`` for ONNX Runtime, within :func:`mmdet_post_processing`."""
    return FUNCTION_REWRITER.register_rewriter(
        func_name, backend='onnxruntime', extra_checkers=[_Switched('mmdet')])


def _nms_settings(nms_cfg) -> float:
    kind = nms_cfg.get('type', 'nms')
    if kind != 'nms' or nms_cfg.get('class_agnostic', False):
        raise NotImplementedError(
            f'mmdet_post_processing supports nms=dict(type=\'nms\') only '
            f'(class-aware), got {dict(nms_cfg)}; turn it off to use '
            'mmdeploy\'s rewrite')
    return float(nms_cfg['iou_threshold'])


def _size_filter(boxes: torch.Tensor, side: float) -> torch.Tensor:
    """mmdet's ``min_bbox_size`` test: True for boxes wider and higher than
    ``side``, every box when ``side`` is below 0."""
    if side < 0:
        return torch.ones_like(boxes[..., 0], dtype=torch.bool)
    return ((boxes[..., 2] - boxes[..., 0]) > side) & (
        (boxes[..., 3] - boxes[..., 1]) > side)


def _levels(head, cls_scores: List[torch.Tensor],
            bbox_preds: List[torch.Tensor], with_nms: bool) -> Iterator:
    """A dense head's outputs level by level, as mmdet flattens them: the
    score logits (N x places*anchors*channels, channels last), the deltas
    (N x places*anchors x 4) and the anchors (N x places*anchors x 4)."""
    if not with_nms:
        raise NotImplementedError('mmdet_post_processing needs with_nms=True')
    n = cls_scores[0].shape[0]
    priors = head.prior_generator.grid_priors(
        [s.shape[-2:] for s in cls_scores],
        dtype=cls_scores[0].dtype,
        device=cls_scores[0].device)
    for score, delta, prior in zip(cls_scores, bbox_preds, priors):
        yield (score.permute(0, 2, 3, 1).reshape(n, -1),
               delta.permute(0, 2, 3, 1).reshape(n, -1,
                                                 head.bbox_coder.encode_size),
               prior[None].expand(n, -1, -1))


def _dense_nms(head, priors: List[torch.Tensor], deltas: List[torch.Tensor],
               scores: List[torch.Tensor], classes: List[torch.Tensor],
               batch_img_metas: List[dict], cfg, threshold: float) -> tuple:
    """A dense head's end, as mmdet's ``_bbox_post_process``: the
    candidates of all levels decoded and clipped to the image, boxes not
    wider and higher than ``min_bbox_size`` left out, :func:`nms_by_class`
    with ``cfg``'s NMS, its boxes sliced ``[:max_per_img]`` (0 keeps none,
    -k all but the k lowest). A ``Detectron2RetinaHead``'s boxes are
    clipped after the NMS instead (its coder does not clip), and those left
    empty scored 0, which mmdeploy's backend model drops. TOOD's
    ``deltas`` are boxes already, neither decoded nor clipped."""
    img_shape = batch_img_metas[0]['img_shape']
    if _outputs_boxes(head):
        boxes = torch.cat(deltas, 1)
    else:
        boxes = head.bbox_coder.decode(
            torch.cat(priors, 1), torch.cat(deltas, 1), max_shape=img_shape)
    k = cfg.max_per_img
    dets, labels = nms_by_class(
        boxes, torch.cat(scores, 1), torch.cat(classes, 1),
        _size_filter(boxes, cfg.get('min_bbox_size', -1)),
        _nms_settings(cfg.nms), threshold, k)
    if k <= 0:
        dets = torch.where(
            _sliced(dets[..., 4] > 0, k)[..., None], dets, dets.new_zeros(()))
    if _clips_after_nms(head):
        dets = _clipped_and_kept(dets, img_shape)
    return dets, labels


def _clipped_and_kept(dets: torch.Tensor, img_shape) -> torch.Tensor:
    """``dets`` (N x K x 5) with their boxes clipped to ``img_shape`` (h,
    w; ints, or a tensor in the graph) and scored 0 where that leaves them
    without width or height (detectron2's ``detector_postprocess``)."""
    h, w = img_shape[0], img_shape[1]
    zero = dets.new_zeros(())
    xs = torch.minimum(torch.maximum(dets[..., 0::2], zero), zero + w)
    ys = torch.minimum(torch.maximum(dets[..., 1:4:2], zero), zero + h)
    boxes = torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], -1)
    kept = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return torch.cat(
        [boxes, torch.where(kept, dets[..., 4], zero)[..., None]], -1)


def _sliced(valid: torch.Tensor, k: int) -> torch.Tensor:
    """mmdet's slice ``[:k]`` with ``k`` 0 or below of rows sorted by
    decreasing score (N x K, the ``valid`` ones first) as a mask: none at
    0, all but the last -k valid ones below."""
    if k == 0:
        return torch.zeros_like(valid)
    place = torch.arange(valid.shape[1], device=valid.device)
    return place < valid.sum(1, keepdim=True) + k


def _chosen_pairs(score: torch.Tensor, nms_pre: int,
                  threshold: float) -> tuple:
    """One level's (prior, class) pairs as mmdet's
    ``filter_scores_and_topk`` chooses them from their scores (N x pairs):
    those above ``threshold``, the ``nms_pre`` best (mmdet's slice
    ``[:nms_pre]`` of the sorted valid pairs where it is 0 or below); the
    others scored 0. Returns the scores and the pairs' indices."""
    score = torch.where(score > threshold, score, score.new_zeros(()))
    pair = torch.arange(score.shape[1], device=score.device)
    pair = pair[None].expand(score.shape[0], -1)
    if nms_pre > 0:
        return _best(nms_pre, score, pair)
    score, pair = _best(score.shape[1], score, pair)
    kept = _sliced(score > threshold, nms_pre)
    return torch.where(kept, score, score.new_zeros(())), pair


def _best(k: int, *tensors: torch.Tensor) -> tuple:
    """The ``k`` best entries along dim 1 by the first tensor (N x K), as
    mmdet's ``nms_pre`` top-k: each tensor gathered at them; all K where K
    is smaller than ``k`` (mmdeploy's rewrite of ``topk`` takes at most K,
    in the graph too)."""
    best = tensors[0].topk(k, dim=1)[1]
    rows = torch.arange(best.shape[0], device=best.device)[:, None]
    return tuple(t[rows, best] for t in tensors)


@_rewrites('mmdet.models.dense_heads.rpn_head.RPNHead.predict_by_feat')
def rpn_head__predict_by_feat(self,
                              cls_scores: List[torch.Tensor],
                              bbox_preds: List[torch.Tensor],
                              score_factors=None,
                              batch_img_metas: Optional[List[dict]] = None,
                              cfg=None,
                              rescale: bool = False,
                              with_nms: bool = True,
                              **kwargs) -> tuple:
    """The RPN's proposals as mmdet computes them: per level the
    ``nms_pre`` best anchors, decoded and clipped to the image, boxes not
    wider and higher than ``min_bbox_size`` left out, one NMS in which
    levels never suppress each other, the ``max_per_img`` best kept.

    Returns:
        tuple[Tensor, Tensor]: ``dets`` (N x M x 5) and ``labels`` (N x M,
        the levels), as mmdeploy's rewrite returns them.
    """
    cfg = self.test_cfg if cfg is None else cfg
    nms_pre = cfg.get('nms_pre', -1)
    all_scores, all_deltas, all_priors, levels = [], [], [], []
    for level, (score, delta, prior) in enumerate(
            _levels(self, cls_scores, bbox_preds, with_nms)):
        if self.use_sigmoid_cls:
            score = score.sigmoid()
        else:
            score = score.reshape(score.shape[0], -1, 2).softmax(-1)[..., 0]
        if nms_pre > 0:
            score, delta, prior = _best(nms_pre, score, delta, prior)
        all_scores.append(score)
        all_deltas.append(delta)
        all_priors.append(prior)
        levels.append(torch.full_like(score, level, dtype=torch.long))
    return _dense_nms(self, all_priors, all_deltas, all_scores, levels,
                      batch_img_metas, cfg, MIN_SCORE)


def _as_base_dense_head(head) -> bool:
    """Whether ``head`` computes its detections from its outputs as
    mmdet's ``BaseDenseHead`` does (RetinaNet, FCOS, ATSS and most of their
    subclasses), as TOOD's (:func:`_outputs_boxes`) or as mmrest's
    ``Detectron2RetinaHead`` (:func:`_clips_after_nms`)."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    single = type(head)._predict_by_feat_single
    return (single is BaseDenseHead._predict_by_feat_single
            or _outputs_boxes(head)) and (type(head)._bbox_post_process
                                          is BaseDenseHead._bbox_post_process
                                          or _clips_after_nms(head))


def _outputs_boxes(head) -> bool:
    """Whether ``head`` computes its detections as mmdet's TOOD head: its
    outputs are class probabilities and boxes in units of the level's
    stride (no sigmoid, no decoding, no clipping)."""
    from mmdet.models.dense_heads.tood_head import TOODHead
    return type(head)._predict_by_feat_single is \
        TOODHead._predict_by_feat_single


def _clips_after_nms(head) -> bool:
    """Whether ``head`` post-processes its boxes as detectron2's RetinaNet
    (mmrest's ``Detectron2RetinaHead``): clipped to the image after the
    NMS, empty ones dropped."""
    from .models.detectron2_heads import Detectron2RetinaHead
    return type(head)._bbox_post_process is \
        Detectron2RetinaHead._bbox_post_process


@_rewrites('mmdet.models.dense_heads.retina_head.RetinaHead.predict_by_feat')
@_rewrites('mmdet.models.dense_heads.fcos_head.FCOSHead.predict_by_feat')
@_rewrites('mmdet.models.dense_heads.atss_head.ATSSHead.predict_by_feat')
def dense_head__predict_by_feat(self,
                                cls_scores: List[torch.Tensor],
                                bbox_preds: List[torch.Tensor],
                                score_factors: Optional[List[
                                    torch.Tensor]] = None,
                                batch_img_metas: Optional[List[dict]] = None,
                                cfg=None,
                                rescale: bool = False,
                                with_nms: bool = True) -> tuple:
    """RetinaNet's, FCOS's and ATSS's detections as mmdet computes them
    (``BaseDenseHead.predict_by_feat``): per level the ``nms_pre`` best
    (prior, class) pairs scoring above ``score_thr`` (mmdeploy: the priors
    of the best ``nms_pre`` top-class scores, FCOS's and ATSS's already
    multiplied by their centerness), their scores then multiplied by
    their prior's score factor (FCOS's and ATSS's centerness, sigmoid),
    decoded and clipped to the image, boxes not wider and higher than
    ``min_bbox_size`` left out, one class-aware NMS, the ``max_per_img``
    best kept. An ``nms_pre`` of 0 or below is read as mmdet reads it
    (its pairs sorted, then sliced ``[:nms_pre]``): 0 keeps no pair, -k
    all but the k lowest of each level, so -1 (mmdet's default) leaves
    out each level's lowest valid pair. A product of score and factor at
    most 1.2e-38 (float32 ``tiny``) is dropped (mmdet keeps it).

    TOOD's head (ATSS's subclass, whose outputs are class probabilities
    and boxes in units of the stride) as mmdet's: the same choice of
    pairs, without sigmoid, decoding or clipping. Other subclasses that
    compute their detections otherwise keep mmdeploy's rewrite of
    ``BaseDenseHead``, as before.

    Returns:
        tuple[Tensor, Tensor]: ``dets`` (N x M x 5) and ``labels`` (N x M).
    """
    if not _as_base_dense_head(self):
        # BaseDenseHead's as it stands: mmdeploy's rewrite, in its context
        from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
        return BaseDenseHead.predict_by_feat(self, cls_scores, bbox_preds,
                                             score_factors, batch_img_metas,
                                             cfg, rescale, with_nms)
    if not self.use_sigmoid_cls:
        raise NotImplementedError(
            'mmdet_post_processing supports sigmoid class scores only (a '
            'dense head trained with softmax scores); turn it off to use '
            'mmdeploy\'s rewrite')
    cfg = self.test_cfg if cfg is None else cfg
    c = self.cls_out_channels
    nms_pre = cfg.get('nms_pre', -1)
    threshold = max(float(cfg.get('score_thr', 0)), MIN_SCORE)
    boxes_out = _outputs_boxes(self)
    if boxes_out:  # TOOD's: no score factors
        score_factors = None
    factors = [None] * len(cls_scores) if score_factors is None else [
        f.permute(0, 2, 3, 1).reshape(f.shape[0], -1).sigmoid()
        for f in score_factors
    ]
    all_scores, all_labels, all_deltas, all_priors = [], [], [], []
    for level, ((score, delta, prior), factor) in enumerate(
            zip(_levels(self, cls_scores, bbox_preds, with_nms), factors)):
        if boxes_out:  # probabilities, boxes in units of the stride
            delta = delta * self.prior_generator.strides[level][0]
        else:
            score = score.sigmoid()
        score, pair = _chosen_pairs(score, nms_pre, threshold)
        rows = torch.arange(score.shape[0], device=score.device)[:, None]
        if factor is not None:
            score = score * factor[rows, pair // c]
        all_scores.append(score)
        all_labels.append(pair % c)
        all_deltas.append(delta[rows, pair // c])
        all_priors.append(prior[rows, pair // c])
    return _dense_nms(self, all_priors, all_deltas, all_scores, all_labels,
                      batch_img_metas, cfg,
                      threshold if score_factors is None else MIN_SCORE)


@_rewrites(
    'mmdet.models.roi_heads.bbox_heads.bbox_head.BBoxHead.predict_by_feat')
def bbox_head__predict_by_feat(self,
                               rois: torch.Tensor,
                               cls_scores: torch.Tensor,
                               bbox_preds: torch.Tensor,
                               batch_img_metas: List[dict],
                               rcnn_test_cfg=None,
                               rescale: bool = False) -> tuple:
    """The box head's detections as mmdet computes them: every (RoI,
    class) pair scoring above ``score_thr`` with the class's own decoded
    box, one class-aware NMS, the ``max_per_img`` best kept (all where it
    is 0 or below, as mmdet's ``multiclass_nms``). Boxes stay in
    the network input's coordinates (mmdeploy's backend model rescales).
    RoIs of zero width or height are left out: they are the RPN's padding
    (mmdet's RPN has no such proposal unless ``min_bbox_size`` is below 0).

    Args:
        rois (Tensor): N x R x 5 (batch index, box).
        cls_scores (Tensor): N x R x (classes + 1) logits.
        bbox_preds (Tensor): N x R x (4 or 4 x classes) deltas.
        batch_img_metas (list[dict]): ``img_shape`` of the first image
            clips the boxes (as mmdeploy).
        rcnn_test_cfg (ConfigDict): ``score_thr``, ``nms``,
            ``max_per_img``.
        rescale (bool): Ignored, as in mmdeploy's rewrite.

    Returns:
        tuple[Tensor, Tensor]: ``dets`` (N x M x 5) and ``labels`` (N x M).
    """
    if bbox_preds is None:
        raise NotImplementedError(
            'mmdet_post_processing needs box regression (bbox_preds)')
    if self.custom_cls_channels:
        scores = self.loss_cls.get_activation(cls_scores)
    else:
        scores = F.softmax(cls_scores, dim=-1)
    n, r = scores.shape[:2]
    c = self.num_classes
    scores = scores[..., :c]
    boxes = self.bbox_coder.decode(
        rois[..., 1:], bbox_preds, max_shape=batch_img_metas[0]['img_shape'])
    boxes = boxes.reshape(n, r, -1, 4).expand(n, r, c, 4).reshape(n, r * c, 4)
    classes = torch.arange(c, device=scores.device).expand(n, r, c)
    scores = scores.reshape(n, r * c)
    # the RPN's padding rows (zero boxes) are no proposals: mmdet's RPN
    # keeps boxes wider and higher than min_bbox_size (0 by default) only
    real = _size_filter(rois[..., 1:], 0)
    threshold = max(float(rcnn_test_cfg.score_thr), MIN_SCORE)
    return nms_by_class(boxes, scores, classes.reshape(n, r * c),
                        real[..., None].expand(n, r, c).reshape(n, r * c),
                        _nms_settings(rcnn_test_cfg.nms), threshold,
                        rcnn_test_cfg.max_per_img)


def _with_batch_index(boxes: torch.Tensor) -> torch.Tensor:
    """N x R x 4 boxes as N x R x 5 RoIs (image index first)."""
    n, r = boxes.shape[:2]
    index = torch.arange(n, device=boxes.device, dtype=boxes.dtype)
    return torch.cat([index.view(n, 1, 1).expand(n, r, 1), boxes], -1)


@_rewrites(
    'mmdet.models.roi_heads.cascade_roi_head.CascadeRoIHead.predict_bbox')
def cascade_roi_head__predict_bbox(self,
                                   x,
                                   batch_img_metas: List[dict],
                                   rpn_results_list: List[torch.Tensor],
                                   rcnn_test_cfg,
                                   rescale: bool = False,
                                   **kwargs) -> tuple:
    """A cascade's detections as mmdet computes them: between stages each
    RoI moves by the regression of its best foreground class (mmdet's
    ``regress_by_class``; mmdeploy's rewrite asserts class-agnostic
    regression, which mmdet's Swin / ConvNeXt cascade recipe, and so
    configs/cascade_rcnn, does not use), the stages' class logits are
    averaged, and the last stage's box head
    (:func:`bbox_head__predict_by_feat`) decodes and suppresses. Boxes
    are clipped to the first image's ``img_shape``, as mmdeploy's.

    Args:
        x (tuple[Tensor]): The FPN's feature maps.
        batch_img_metas (list[dict]): Image metas (``img_shape``).
        rpn_results_list (list[Tensor]): The RPN's N x R x 5 proposals
            (box, score), as mmdeploy's RPN gives them.
        rcnn_test_cfg (ConfigDict): The last stage's test config.
        rescale (bool): Ignored, as in mmdeploy's rewrite.

    Returns:
        tuple[Tensor, Tensor]: ``dets`` (N x M x 5) and ``labels`` (N x M).
    """
    proposals = rpn_results_list[0]
    n, r = proposals.shape[:2]
    rois = _with_batch_index(proposals[..., :4])
    max_shape = batch_img_metas[0]['img_shape']
    stage_scores = []
    for stage in range(self.num_stages):
        out = self._bbox_forward(stage, x, rois.reshape(n * r, 5), **kwargs)
        cls_score = out['cls_score'].reshape(n, r, -1)
        bbox_pred = out['bbox_pred'].reshape(n, r, -1)
        stage_scores.append(cls_score)
        if stage == self.num_stages - 1:
            break
        # mmdet's regress_by_class, batched: it takes one image's 2-D
        # tensors, which mmdeploy's rewrite of the box coder's decode does
        # not (it expects N x R x 4)
        head = self.bbox_head[stage]
        deltas = bbox_pred
        if not head.reg_class_agnostic:
            scores = head.loss_cls.get_activation(
                cls_score) if head.custom_activation else cls_score
            label = scores[..., :-1].argmax(-1)
            dim = head.bbox_coder.encode_size
            deltas = bbox_pred.reshape(n, r, -1, dim).gather(
                2, label[..., None, None].expand(n, r, 1, dim)).squeeze(2)
        boxes = head.bbox_coder.decode(
            rois[..., 1:], deltas, max_shape=max_shape)
        rois = _with_batch_index(get_box_tensor(boxes))
    return self.bbox_head[-1].predict_by_feat(
        rois=rois,
        cls_scores=sum(stage_scores) / len(stage_scores),
        bbox_preds=bbox_pred,
        batch_img_metas=batch_img_metas,
        rcnn_test_cfg=rcnn_test_cfg,
        rescale=rescale)


@_rewrites(
    'mmdet.models.roi_heads.cascade_roi_head.CascadeRoIHead.predict_mask')
def cascade_roi_head__predict_mask(self,
                                   x,
                                   batch_img_metas: List[dict],
                                   results_list: tuple,
                                   rescale: bool = False) -> tuple:
    """A cascade's masks as mmdet computes them: the mean of the stages'
    mask probabilities (mmdeploy's rewrite: the sigmoid of their mean
    logit), handed to the mask head's rewrite as the logit of that mean.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``dets``, ``labels`` and ``masks``
        (N x M x h x w).
    """
    dets, labels = results_list
    n, m = dets.shape[:2]
    rois = _with_batch_index(dets[..., :4]).reshape(n * m, 5)
    probs = sum(
        self._mask_forward(stage, x, rois)['mask_preds'].sigmoid()
        for stage in range(self.num_stages)) / self.num_stages
    logits = torch.log(probs) - torch.log1p(-probs)  # sigmoid's inverse
    masks = self.mask_head[-1].predict_by_feat(
        logits, results_list, batch_img_metas, self.test_cfg, rescale=rescale)
    return dets, labels, masks.reshape(n, m, *masks.shape[-2:])
