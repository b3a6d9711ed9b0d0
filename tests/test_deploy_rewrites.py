"""mmrest.deploy_rewrites: the RPN's proposals and the box head's detections
of a two-stage detector exported by mmdeploy for ONNX Runtime are mmdet's.

Each head is fed the same raw outputs (random, so no two scores tie) and
its ``predict_by_feat`` is run three ways: mmdet's own, the rewrite run in
PyTorch within mmdeploy's ``RewriterContext``, and the rewrite exported by
mmdeploy's ``export`` and run in ONNX Runtime. The inputs are made so that
mmdeploy's own rewrite gives other results (the premise: levels that would
suppress each other's proposals, classes with their own boxes), and the
rewrites must give mmdet's boxes and scores, to float32 rounding, in
mmdet's order.
"""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import (ERROR_FACTOR, RETINANET_ANCHORS, export_module,
                      float32_floor)
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.registry import MODELS
from mmengine.config import ConfigDict

from mmrest.deploy import load_deploy_cfg, mmdeploy_torch_shims
from mmrest.deploy_rewrites import mmdet_post_processing, nms_by_class

IMG_SHAPE = (100, 132)  # h, w: not a multiple of the strides
STRIDES = (4, 8, 16, 32, 64)
NUM_CLASSES = 20  # few: the oldest stack's NMS stand-in is pure PyTorch


def rpn_head(use_sigmoid=True):
    from mmdet.utils import register_all_modules
    register_all_modules()
    return MODELS.build(
        dict(
            type='RPNHead',
            in_channels=8,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=use_sigmoid),
            feat_channels=8,
            anchor_generator=dict(
                type='AnchorGenerator',
                scales=[8],
                ratios=[0.5, 1.0, 2.0],
                strides=list(STRIDES)),
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[.0, .0, .0, .0],
                target_stds=[1.0, 1.0, 1.0, 1.0]))).eval()


def rpn_outputs(n=2, channels=1):
    """Raw RPN outputs of ``n`` images: 3 anchors per place (``channels``
    logits each), distinct scores, deltas of spread 0.3 (boxes of a level
    overlap their neighbours at the next level)."""
    gen = torch.Generator().manual_seed(0)
    cls, reg = [], []
    for s in STRIDES:
        h, w = -(-IMG_SHAPE[0] // s), -(-IMG_SHAPE[1] // s)
        cls.append(torch.randn(n, 3 * channels, h, w, generator=gen) * 2)
        reg.append(torch.randn(n, 12, h, w, generator=gen) * 0.3)
    return cls, reg


RPN_CFG = ConfigDict(
    nms_pre=40,
    max_per_img=170,
    nms=dict(type='nms', iou_threshold=0.7),
    min_bbox_size=6)
RCNN_CFG = ConfigDict(
    score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=25)


def metas(n):
    return [
        dict(img_shape=IMG_SHAPE, scale_factor=(1., 1.), ori_shape=IMG_SHAPE)
        for _ in range(n)
    ]


def box_head():
    head = Shared2FCBBoxHead(
        in_channels=8,
        fc_out_channels=16,
        roi_feat_size=7,
        num_classes=NUM_CLASSES,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0., 0., 0., 0.],
            target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_class_agnostic=False)
    return head.eval()


def box_head_outputs(n=2, r=40):
    """RoIs with per-class logits (a few clear winners per RoI) and a box
    regression per class, for ``n`` images; the last RoI is the RPN's
    padding (a zero box) and scores 1 for class 0."""
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(n, r, 2, generator=gen) * 90
    wh = 8 + torch.rand(n, r, 2, generator=gen) * 40
    rois = torch.cat([
        torch.arange(n, dtype=torch.float)[:, None, None].expand(n, r, 1), xy,
        xy + wh
    ], -1)
    logits = torch.randn(n, r, NUM_CLASSES + 1, generator=gen)
    logits[..., :NUM_CLASSES:3] += 4  # 7 classes often above 0.05
    deltas = torch.randn(n, r, 4 * NUM_CLASSES, generator=gen)
    rois[:, -1, 1:] = 0
    logits[:, -1, 0] = 30
    return rois, logits, deltas


def mmdet_box_head(head, rois, logits, deltas, cfg=RCNN_CFG):
    """mmdet's detections, from the RoIs but the padding."""
    with torch.no_grad():
        return head.predict_by_feat(
            tuple(rois[:, :-1]),
            tuple(logits[:, :-1]),
            tuple(deltas[:, :-1]),
            batch_img_metas=metas(len(rois)),
            rcnn_test_cfg=cfg)


def mmdeploys_rewrites():
    """Register mmdeploy's rewrites of mmdet (as its task processor does)."""
    from mmdeploy.codebase import import_codebase
    from mmdeploy.utils import Codebase
    import_codebase(Codebase.MMDET)


def rewritten(call, mmdet_nms=True):
    """``call()`` within mmdeploy's rewrites for ONNX Runtime."""
    from mmdeploy.core import RewriterContext
    mmdeploys_rewrites()
    cfg = load_deploy_cfg('instance-seg')
    with torch.no_grad(), mmdet_post_processing(mmdet_nms), RewriterContext(
            cfg=cfg, backend='onnxruntime', opset=11):
        return call()


def rewritten_box_head(head, rois, logits, deltas, cfg=RCNN_CFG):
    """The box head's detections within the rewrites (see ``rewritten``),
    the batch's images of one shape."""
    return rewritten(lambda: BoxHead(head, cfg)(rois, logits, deltas))


def exported(module, args, tmp_path):
    """``module(*args)`` exported by mmdeploy with a dynamic batch axis:
    a function that runs the file in ONNX Runtime on inputs like ``args``."""
    import onnxruntime
    from mmdeploy.apis.onnx import export
    mmdeploys_rewrites()
    names = [f'x{i}' for i in range(len(args))]
    prefix = str(tmp_path / 'head')
    axes = {k: {0: 'batch'} for k in names}
    axes.update(dets={0: 'batch', 1: 'num'}, labels={0: 'batch', 1: 'num'})
    with torch.no_grad(), mmdeploy_torch_shims(), mmdet_post_processing():
        export(
            module,
            tuple(args),
            prefix,
            backend='onnxruntime',
            context_info={'deploy_cfg': load_deploy_cfg('instance-seg')},
            input_names=names,
            output_names=['dets', 'labels'],
            opset_version=11,
            dynamic_axes=axes)
    session = onnxruntime.InferenceSession(
        prefix + '.onnx', providers=['CPUExecutionProvider'])
    return lambda inputs: tuple(
        torch.from_numpy(o) for o in session.run(None, {
            k: a.numpy()
            for k, a in zip(names, inputs)
        }))


class DenseHead(torch.nn.Module):
    """A dense head's ``predict_by_feat`` as a module to export: its
    inputs the five levels' scores, then their deltas, then (if given)
    their score factors, of a batch."""

    def __init__(self, head, cfg):
        super().__init__()
        self.head, self.cfg = head, cfg

    def forward(self, *outs):
        return self.head.predict_by_feat(
            list(outs[:5]),
            list(outs[5:10]),
            score_factors=list(outs[10:]) or None,
            batch_img_metas=metas(len(outs[0])),
            cfg=self.cfg)


class BoxHead(torch.nn.Module):
    """A box head's ``predict_by_feat`` as a module to export: its inputs
    the batch's RoIs, class logits and box deltas (``box_head_outputs``)."""

    def __init__(self, head, cfg=RCNN_CFG):
        super().__init__()
        self.head, self.cfg = head, cfg

    def forward(self, rois, logits, deltas):
        return self.head.predict_by_feat(
            rois,
            logits,
            deltas,
            batch_img_metas=metas(len(rois)),
            rcnn_test_cfg=self.cfg)


def assert_same_as_mmdet(mine, mmdet, labels=True, what=''):
    """Per image, the rows scored above 0 (mmdeploy's layout) are mmdet's
    instances, in mmdet's order, to float32 rounding."""
    dets, got_labels = mine
    for i, ref in enumerate(mmdet):
        kept = dets[i, :, 4] > 0
        assert int(kept.sum()) == len(ref), \
            f'{what} image {i}: {int(kept.sum())} kept, mmdet {len(ref)}'
        torch.testing.assert_close(
            dets[i, kept, :4], ref.bboxes, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(
            dets[i, kept, 4], ref.scores, rtol=1e-5, atol=1e-7)
        if labels:
            assert torch.equal(got_labels[i, kept], ref.labels), what


def mmdet_rpn(head, cls, reg, **changes):
    cfg = RPN_CFG.copy()
    cfg.update(changes)
    with torch.no_grad():
        return head.predict_by_feat(
            cls, reg, batch_img_metas=metas(len(cls[0])), cfg=cfg)


def test_rpn_proposals_are_mmdets(tmp_path):
    head = rpn_head()
    cls, reg = rpn_outputs()
    ref = mmdet_rpn(head, cls, reg)
    assert 20 < len(ref[0]) < RPN_CFG.max_per_img  # NMS and the size cut act
    rpn = DenseHead(head, RPN_CFG)
    # the premise: mmdeploy's own rewrite keeps other proposals here
    theirs = rewritten(lambda: rpn(*cls, *reg), mmdet_nms=False)
    with pytest.raises(AssertionError, match='kept, mmdet'):
        assert_same_as_mmdet(theirs, ref, labels=False)
    assert_same_as_mmdet(
        rewritten(lambda: rpn(*cls, *reg)), ref, labels=False, what='eager')
    run = exported(rpn, cls + reg, tmp_path)
    assert_same_as_mmdet(run(cls + reg), ref, labels=False, what='ONNX')
    assert_same_as_mmdet(  # the second image alone: the batch is dynamic
        run([x[1:] for x in cls + reg]),
        ref[1:],
        labels=False,
        what='ONNX')


@pytest.mark.parametrize('nms_pre', [-1, 0, 1])
def test_rpn_without_size_filter_and_nms_pre_at_its_bounds(nms_pre):
    """``min_bbox_size`` below 0, and ``nms_pre`` off (-1 or 0, as mmdet
    reads them) or at 1 (the best anchor of each level), as mmdet
    allows."""
    head = rpn_head()
    cls, reg = rpn_outputs(n=1)
    cfg = RPN_CFG.copy()
    cfg.update(min_bbox_size=-1, nms_pre=nms_pre, max_per_img=2000)
    with torch.no_grad():
        ref = head.predict_by_feat(cls, reg, batch_img_metas=metas(1), cfg=cfg)
    mine = rewritten(lambda: head.predict_by_feat(
        cls, reg, batch_img_metas=metas(1), cfg=cfg))
    if nms_pre == 1:
        assert 1 < len(ref[0]) <= len(STRIDES)
    else:
        assert len(ref[0]) > 100
    assert_same_as_mmdet(mine, ref, labels=False)


def test_rpn_with_softmax_scores():
    """An RPN trained with a softmax (``use_sigmoid=False``): two logits
    per anchor, the first the object's; two images, so that the pairs
    are taken within each image."""
    head = rpn_head(use_sigmoid=False)
    assert head.cls_out_channels == 2
    cls, reg = rpn_outputs(channels=2)
    ref = mmdet_rpn(head, cls, reg)
    assert 20 < len(ref[1]) < RPN_CFG.max_per_img
    mine = rewritten(lambda: DenseHead(head, RPN_CFG)(*cls, *reg))
    assert_same_as_mmdet(mine, ref, labels=False)


def retina_head(use_sigmoid=True, type='RetinaHead', clip_border=True):
    from mmdet.utils import register_all_modules

    import mmrest.models  # noqa: F401  (registers Detectron2RetinaHead)
    register_all_modules()
    softmax = dict(loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False))
    return MODELS.build(
        dict(
            **({} if use_sigmoid else softmax),
            type=type,
            num_classes=NUM_CLASSES,
            in_channels=8,
            stacked_convs=1,
            feat_channels=8,
            anchor_generator=RETINANET_ANCHORS,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[.0, .0, .0, .0],
                target_stds=[1.0, 1.0, 1.0, 1.0],
                clip_border=clip_border))).eval()


def retina_outputs(n=2):
    """Raw RetinaNet outputs: 9 anchors x NUM_CLASSES per place, about a
    third of the pairs above the threshold (more than ``nms_pre`` on every
    level), several classes per anchor."""
    gen = torch.Generator().manual_seed(2)
    cls, reg = [], []
    for s in (8, 16, 32, 64, 128):
        h, w = -(-IMG_SHAPE[0] // s), -(-IMG_SHAPE[1] // s)
        cls.append(
            torch.randn(n, 9 * NUM_CLASSES, h, w, generator=gen) * 2 - 4)
        reg.append(torch.randn(n, 36, h, w, generator=gen) * 0.3)
    return cls, reg


RETINA_CFG = ConfigDict(
    nms_pre=60,
    min_bbox_size=0,
    score_thr=0.05,
    nms=dict(type='nms', iou_threshold=0.5),
    max_per_img=100)


def test_retinanet_detections_are_mmdets(tmp_path):
    head = retina_head()
    head.test_cfg = RETINA_CFG  # what mmdeploy's own rewrite reads
    cls, reg = retina_outputs()
    with torch.no_grad():
        ref = head.predict_by_feat(
            cls, reg, batch_img_metas=metas(2), cfg=RETINA_CFG)
    assert len(ref[0]) == RETINA_CFG.max_per_img
    assert len(ref[0].labels.unique()) > 10
    retina = DenseHead(head, RETINA_CFG)
    # the premise: mmdeploy's choice of anchors keeps other detections
    theirs = rewritten(lambda: retina(*cls, *reg), mmdet_nms=False)
    with pytest.raises(AssertionError):
        assert_same_as_mmdet(theirs, ref)
    assert_same_as_mmdet(
        rewritten(lambda: retina(*cls, *reg)), ref, what='eager')
    run = exported(retina, cls + reg, tmp_path)
    assert_same_as_mmdet(run(cls + reg), ref, what='ONNX')
    assert_same_as_mmdet(run([x[1:] for x in cls + reg]), ref[1:], what='ONNX')


def test_detectron2_retinanet_detections_are_its_own(tmp_path):
    """mmrest's ``Detectron2RetinaHead`` (the authors' converted RetinaNets,
    configs/retinanet/*_d2.py: its coder does not clip, no size filter)
    clips its boxes after the NMS and drops those left empty: so do the
    rewrite and its export (they fell back to mmdeploy's rewrite before
    stop 63, whose boxes were not clipped at all). The premise: boxes
    beyond the image and boxes left empty among the NMS's."""
    head = retina_head(type='Detectron2RetinaHead', clip_border=False)
    cfg = ConfigDict(RETINA_CFG, min_bbox_size=-1)
    head.test_cfg = cfg
    cls, reg = retina_outputs()
    reg = [r * 4 for r in reg]  # boxes far beyond the anchors
    with torch.no_grad():
        ref = head.predict_by_feat(cls, reg, batch_img_metas=metas(2), cfg=cfg)
        plain = retina_head(clip_border=False)
        plain.load_state_dict(head.state_dict())
        unclipped = plain.predict_by_feat(
            cls, reg, batch_img_metas=metas(2), cfg=cfg)
    for mine, theirs in zip(ref, unclipped):
        assert len(theirs) == cfg.max_per_img > len(mine) > 20
        beyond = (theirs.bboxes[:, :2] < 0).any(1) | \
            (theirs.bboxes[:, 2] > IMG_SHAPE[1]) | \
            (theirs.bboxes[:, 3] > IMG_SHAPE[0])
        assert beyond.sum() > len(theirs) - len(mine)
    retina = DenseHead(head, cfg)
    assert_same_as_mmdet(
        rewritten(lambda: retina(*cls, *reg)), ref, what='eager')
    run = exported(retina, cls + reg, tmp_path)
    assert_same_as_mmdet(run(cls + reg), ref, what='ONNX')
    assert_same_as_mmdet(run([x[1:] for x in cls + reg]), ref[1:], what='ONNX')


def sparse_retina_outputs():
    """RetinaNet outputs of one image where 3 (anchor, class) pairs per
    level score 0.27 to 0.95 and every other pair exactly 0 (a logit of
    -200), each of the 15 pairs a class of its own (no NMS between
    them)."""
    gen = torch.Generator().manual_seed(3)
    cls, reg = retina_outputs(n=1)
    classes = torch.randperm(NUM_CLASSES, generator=gen)
    for level, score in enumerate(cls):
        score.fill_(-200.)
        h, w = score.shape[-2:]
        for i in range(3):
            anchor = int(torch.randint(9, (), generator=gen))
            y, x = (int(torch.randint(k, (), generator=gen)) for k in (h, w))
            score[0, anchor * NUM_CLASSES + classes[3 * level + i], y, x] = (
                torch.rand((), generator=gen) * 4 - 1)
    return cls, reg


@pytest.mark.parametrize('nms_pre,kept', [(None, 10), (-2, 5), (0, 0), (1, 5),
                                          (2, 10), (4, 15)])
def test_retinanet_nms_pre_as_mmdet_reads_it(nms_pre, kept, tmp_path):
    """mmdet sorts each level's pairs above ``score_thr`` and slices them
    ``[:nms_pre]``: at -1 (its default, here also without ``score_thr``,
    0 by default) it leaves out each level's lowest, at -2 the two
    lowest, at 0 every pair, at 1 all but the best; the rewrite, eager
    and exported, keeps the same."""
    head = retina_head()
    cls, reg = sparse_retina_outputs()
    cfg = ConfigDict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=50)
    if nms_pre is not None:
        cfg.update(nms_pre=nms_pre, score_thr=0.05)
    with torch.no_grad():
        ref = head.predict_by_feat(cls, reg, batch_img_metas=metas(1), cfg=cfg)
    assert len(ref[0]) == kept

    retina = DenseHead(head, cfg)
    assert_same_as_mmdet(rewritten(lambda: retina(*cls, *reg)), ref)
    run = exported(retina, cls + reg, tmp_path)
    assert_same_as_mmdet(run(cls + reg), ref, what='ONNX')


@pytest.mark.parametrize('max_per_img', [-3, -1, 0, 1])
def test_retinanet_max_per_img_as_mmdet_reads_it(max_per_img, tmp_path):
    """mmdet slices RetinaNet's detections after its NMS ``[:max_per_img]``
    as the RPN's: 0 keeps none, -k all but the k lowest of each image
    (images with different numbers of detections), 1 the best; the
    rewrite, eager and exported, keeps the same."""
    head = retina_head()
    cls, reg = retina_outputs()
    cfg = ConfigDict(RETINA_CFG, max_per_img=max_per_img)
    with torch.no_grad():
        ref = head.predict_by_feat(cls, reg, batch_img_metas=metas(2), cfg=cfg)
        every = head.predict_by_feat(
            cls,
            reg,
            batch_img_metas=metas(2),
            cfg=ConfigDict(RETINA_CFG, max_per_img=10**6))
    assert [len(r) for r in ref] == [len(e[:max_per_img]) for e in every]
    assert len(every[0]) != len(every[1])
    retina = DenseHead(head, cfg)
    assert_same_as_mmdet(
        rewritten(lambda: retina(*cls, *reg)), ref, what='eager')
    run = exported(retina, cls + reg, tmp_path)
    assert_same_as_mmdet(run(cls + reg), ref, what='ONNX')


def test_retinanet_refuses_softmax_scores():
    """Softmax scores (a RetinaHead trained with cross-entropy) are refused
    by name, not computed as sigmoid scores."""
    head = retina_head(use_sigmoid=False)
    cls, reg = retina_outputs(n=1)
    with pytest.raises(NotImplementedError, match='sigmoid class scores'):
        rewritten(lambda: head.predict_by_feat(
            cls, reg, batch_img_metas=metas(1), cfg=RETINA_CFG))


#: ATSS's one anchor a place and its box coder (mmdet's atss_r50_fpn)
ATSS_PRIORS = dict(
    anchor_generator=dict(
        type='AnchorGenerator',
        ratios=[1.0],
        octave_base_scale=8,
        scales_per_octave=1,
        strides=[8, 16, 32, 64, 128]),
    bbox_coder=dict(
        type='DeltaXYWHBBoxCoder',
        target_means=[.0, .0, .0, .0],
        target_stds=[0.1, 0.1, 0.2, 0.2]))


def centerness_head(kind):
    """FCOS's head (points, distances) or ATSS's (one anchor a place,
    deltas), both with centerness, 8 channels."""
    from mmdet.utils import register_all_modules
    register_all_modules()
    common = dict(
        num_classes=NUM_CLASSES,
        in_channels=8,
        stacked_convs=1,
        feat_channels=8,
        norm_cfg=None)
    if kind == 'fcos':
        return MODELS.build(
            dict(type='FCOSHead', strides=[8, 16, 32, 64, 128],
                 **common)).eval()
    return MODELS.build(dict(type='ATSSHead', **ATSS_PRIORS, **common)).eval()


def centerness_outputs(kind, n=2):
    """Raw outputs of ``centerness_head(kind)``: one prior a place, about a
    third of the (prior, class) pairs above the threshold, FCOS's
    distances 0 to 4 strides, ATSS's deltas of spread 0.3, and the
    centerness logits spread as their scores'."""
    gen = torch.Generator().manual_seed(4)
    cls, reg, ctr = [], [], []
    for s in (8, 16, 32, 64, 128):
        h, w = -(-IMG_SHAPE[0] // s), -(-IMG_SHAPE[1] // s)
        cls.append(torch.randn(n, NUM_CLASSES, h, w, generator=gen) * 2 - 1.5)
        if kind == 'fcos':
            reg.append(torch.rand(n, 4, h, w, generator=gen) * 4 * s)
        else:
            reg.append(torch.randn(n, 4, h, w, generator=gen) * 0.3)
        ctr.append(torch.randn(n, 1, h, w, generator=gen) * 2)
    return cls, reg, ctr


# RetinaNet's, with fewer pairs a level and more detections
DENSE_CFG = ConfigDict(
    RETINA_CFG,
    nms_pre=30,
    nms=dict(type='nms', iou_threshold=0.6),
    max_per_img=300)


@pytest.mark.parametrize('kind', ['fcos', 'atss'])
def test_centerness_heads_detections_are_mmdets(kind, tmp_path):
    """FCOS's and ATSS's detections (mmdet: the pairs chosen by their class
    scores, then multiplied by their prior's centerness) are mmdet's,
    eager and in ONNX Runtime, where mmdeploy's own rewrite (the priors
    chosen by the product's best class) gives others."""
    head = centerness_head(kind)
    head.test_cfg = DENSE_CFG  # what mmdeploy's own rewrite reads
    cls, reg, ctr = centerness_outputs(kind)
    with torch.no_grad():
        ref = head.predict_by_feat(
            cls, reg, ctr, batch_img_metas=metas(2), cfg=DENSE_CFG)
    # (none cut by max_per_img: products under score_thr are kept)
    assert 50 < len(ref[0]) < DENSE_CFG.max_per_img
    assert (ref[0].scores < DENSE_CFG.score_thr).any()
    assert len(ref[0].labels.unique()) > 10
    dense = DenseHead(head, DENSE_CFG)
    outs = cls + reg + ctr
    # the premise: mmdeploy's choice of priors keeps other detections
    theirs = rewritten(lambda: dense(*outs), mmdet_nms=False)
    with pytest.raises(AssertionError):
        assert_same_as_mmdet(theirs, ref)
    assert_same_as_mmdet(rewritten(lambda: dense(*outs)), ref, what='eager')
    run = exported(dense, outs, tmp_path)
    assert_same_as_mmdet(run(outs), ref, what='ONNX')
    assert_same_as_mmdet(run([x[1:] for x in outs]), ref[1:], what='ONNX')


def test_tood_detections_are_mmdets(tmp_path):
    """TOOD's head, an ATSS head whose outputs are class probabilities and
    boxes in units of the level's stride (its own
    ``_predict_by_feat_single``): its detections are mmdet's, eager and in
    ONNX Runtime, where mmdeploy's rewrite of ``BaseDenseHead`` (which it
    kept before stop 63) takes the sigmoid of the probabilities and decodes
    the boxes as deltas."""
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead

    from mmrest.deploy_rewrites import _as_base_dense_head, _outputs_boxes
    head = MODELS.build(
        dict(
            type='TOODHead',
            num_classes=NUM_CLASSES,
            in_channels=8,
            stacked_convs=1,
            feat_channels=32,  # its GroupNorm's 32 groups
            anchor_type='anchor_free',
            **ATSS_PRIORS)).eval()
    head.test_cfg = DENSE_CFG
    assert _as_base_dense_head(head) and _outputs_boxes(head)
    assert not _outputs_boxes(centerness_head('atss'))
    # the premise: TOOD inherits ATSS's predict_by_feat
    assert type(head).predict_by_feat is BaseDenseHead.predict_by_feat
    gen = torch.Generator().manual_seed(5)
    probs, boxes = [], []
    for s in (8, 16, 32, 64, 128):
        h, w = -(-IMG_SHAPE[0] // s), -(-IMG_SHAPE[1] // s)
        probs.append(torch.rand(2, NUM_CLASSES, h, w, generator=gen))
        corner = torch.rand(2, 2, h, w, generator=gen) * 100 / s
        side = torch.rand(2, 2, h, w, generator=gen) * 40 / s
        boxes.append(torch.cat([corner, corner + side], 1))
    with torch.no_grad():
        ref = head.predict_by_feat(
            probs, boxes, batch_img_metas=metas(2), cfg=DENSE_CFG)
    assert 50 < len(ref[0]) <= DENSE_CFG.max_per_img
    assert len(ref[0].labels.unique()) > 10
    dense = DenseHead(head, DENSE_CFG)
    outs = probs + boxes
    theirs = rewritten(lambda: dense(*outs), mmdet_nms=False)
    with pytest.raises(AssertionError):  # the premise
        assert_same_as_mmdet(theirs, ref)
    assert_same_as_mmdet(rewritten(lambda: dense(*outs)), ref, what='eager')
    run = exported(dense, outs, tmp_path)
    assert_same_as_mmdet(run(outs), ref, what='ONNX')
    assert_same_as_mmdet(run([x[1:] for x in outs]), ref[1:], what='ONNX')


def bilinear_at(plane, y: float, x: float) -> float:
    """``plane`` (a list of rows) sampled at ``(y, x)`` as mmcv's deformable
    convolution samples: zero unless -1 < y < h and -1 < x < w, else its
    four neighbours weighted bilinearly, those outside the plane zero."""
    h, w = len(plane), len(plane[0])
    if not (-1 < y < h and -1 < x < w):
        return 0.
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.
    for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yi < h and 0 <= xi < w:
                total += wy * wx * plane[yi][xi]
    return total


def sampling_case(dtype=torch.float64, shape=(2, 3, 5, 7), seed=0):
    """Features and TOOD-like offsets (dy, dx per channel): random, up to 4
    pixels, and places on and around the borders and on the grid."""
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(shape, generator=gen, dtype=dtype)
    offset = (torch.rand(n, 2 * c, h, w, generator=gen, dtype=dtype) - .5) * 8
    offset[0, 0:2, 0, 0] = torch.tensor([-1., -1.])  # exactly (-1, -1)
    offset[0, 2:4, 0, 0] = torch.tensor([-.5, -.25])  # one neighbour inside
    offset[1, 0:2, h - 1, w - 1] = torch.tensor([.5, 1.])  # x = w: outside
    offset[1, 2:4, 2, 3] = torch.tensor([2., -3.])  # on the grid
    offset[1, 4:6, 1, 1] = torch.tensor([-1.75, 1e-3])  # y just above -1
    return feat, offset


def test_deform_sampling_is_mmcvs(tmp_path):
    """TOOD's deformable sampling as :func:`deform_sampling` computes it
    (plain gathers, the graph's) is the bilinear sampling that mmcv's
    deformable convolution computes with TOOD's arguments (a 1 x 1 kernel
    of ones, one group and one deformable group per channel), in float64:
    against that sampling written out place by place and, where mmcv's
    compiled operator exists, the operator itself; and exported alone with
    dynamic sizes, as eager at another size."""
    from mmrest.deploy_rewrites import deform_sampling
    feat, offset = sampling_case()
    n, c, h, w = feat.shape
    got = deform_sampling(feat, offset)
    expected = torch.tensor([[[[
        bilinear_at(feat[b, k].tolist(), i + offset[b, 2 * k, i, j].item(),
                    j + offset[b, 2 * k + 1, i, j].item()) for j in range(w)
    ] for i in range(h)] for k in range(c)] for b in range(n)],
                            dtype=torch.float64)
    assert (expected == 0).float().mean() < 0.5  # most places inside
    assert expected[0, 0, 0, 0] == 0 and expected[1, 0, h - 1, w - 1] == 0
    assert expected[1, 1, 2, 3] == feat[1, 1, 4, 0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)
    try:
        from mmcv.ops import deform_conv2d
        ones = feat.new_ones(c, 1, 1, 1)
        mmcv = deform_conv2d(feat, offset, ones, 1, 0, 1, c, c)
    except (ImportError, NotImplementedError):  # mmcv without its ops
        mmcv = None
    if mmcv is not None:
        torch.testing.assert_close(mmcv, expected, rtol=0, atol=1e-14)

    class Sampling(torch.nn.Module):

        def forward(self, feat, offset):
            return deform_sampling(feat, offset)

    import onnxruntime
    small = sampling_case(torch.float32, (2, 3, 4, 6), seed=1)
    path = str(tmp_path / 'sampling.onnx')
    axes = {k: {0: 'n', 2: 'h', 3: 'w'} for k in ('feat', 'offset')}
    with torch.no_grad(), mmdeploy_torch_shims():
        torch.onnx.export(
            Sampling(),
            tuple(small),
            path,
            input_names=['feat', 'offset'],
            opset_version=11,
            dynamic_axes=axes)
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    feat32, offset32 = feat.float(), offset.float()
    out = session.run(None, dict(feat=feat32.numpy(),
                                 offset=offset32.numpy()))[0]
    # relative to the largest value; the floor: sums of 4 products
    size = expected.abs().max()
    err = (torch.from_numpy(out).double() - expected).abs().max() / size
    err_eager = (deform_sampling(feat32, offset32).double() -
                 expected).abs().max() / size
    bound = ERROR_FACTOR * err_eager + float32_floor(terms=4)
    assert err <= bound, f'ONNX off by {err:.3g}, eager {err_eager:.3g}'


def test_deform_sampling_names_wrong_offsets():
    from mmrest.deploy_rewrites import deform_sampling
    with pytest.raises(ValueError, match=r'offsets of shape \(1, 4, 3, 3\)'):
        deform_sampling(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))


@pytest.mark.parametrize('shape', [(2, 12, 5, 7), (2, 12, 9), (3, 12)])
def test_group_norm_is_torchs(shape):
    """:func:`group_norm` (statistics one axis at a time) is
    ``F.group_norm`` in float64, with and without the affine parameters, for
    any number of spatial axes; a channel count that does not split into
    the groups is named."""
    from mmrest.deploy_rewrites import group_norm
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
    weight, bias = torch.randn(2, 12, generator=gen, dtype=torch.float64)
    for args in ((None, None), (weight, bias)):
        torch.testing.assert_close(
            group_norm(x, 4, *args, eps=1e-3),
            torch.nn.functional.group_norm(x, 4, *args, eps=1e-3),
            rtol=0,
            atol=1e-13)
    with pytest.raises(ValueError, match='12 channels do not split into 5'):
        group_norm(x, 5)
    # torch's default epsilon, also where mmdeploy's rewrite is called
    group_norm_of_torch = torch.nn.functional.group_norm
    ref = group_norm_of_torch(x, 4)
    torch.testing.assert_close(group_norm(x, 4), ref, rtol=0, atol=1e-13)
    from mmdeploy.core import RewriterContext

    from mmrest.deploy_rewrites import exact_group_norm
    mmdeploys_rewrites()
    with exact_group_norm(), RewriterContext(
            cfg=load_deploy_cfg('detection'), backend='onnxruntime', opset=11):
        assert torch.nn.functional.group_norm is not group_norm_of_torch
        got = torch.nn.functional.group_norm(x, 4)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)


def test_mmrest_rewrites_switches_all_and_only_within():
    from mmrest import deploy_rewrites as rewrites
    with rewrites.mmrest_rewrites():
        assert all(rewrites._SWITCH.values()), rewrites._SWITCH
    with rewrites.mmrest_rewrites(False):
        on = {k for k, v in rewrites._SWITCH.items() if v}
        assert on == set(rewrites._SWITCH) - {'mmdet'}, rewrites._SWITCH
    assert not any(rewrites._SWITCH.values()), rewrites._SWITCH


def test_group_norm_in_onnxruntime_is_as_accurate_as_torch(tmp_path):
    """A ``GroupNorm`` of detection size (8 channels of 100 x 136 a group,
    mean 10) exported by mmdeploy within mmrest's rewrites has no
    ``InstanceNormalization`` (torch's export) and is as close to float64
    in ONNX Runtime as torch's float32; torch's export is not (the
    premise)."""
    import onnx

    from mmrest.deploy_rewrites import exact_group_norm
    mmdeploys_rewrites()
    gen = torch.Generator().manual_seed(0)
    norm = torch.nn.GroupNorm(8, 64).eval()
    with torch.no_grad():
        norm.weight.normal_(generator=gen)
        norm.bias.normal_(generator=gen)
    x = torch.randn(1, 64, 100, 136, generator=gen) * .5 + 10
    with torch.no_grad():
        exact = norm.double()(x.double())
        eager = norm.float()(x).double()
    size = exact.norm()
    err_eager = ((eager - exact).norm() / size).item()
    errors = {}
    for exact_norm in (True, False):
        prefix = str(tmp_path / f'norm_{exact_norm}')
        run = export_module(norm, x[..., :40, :48], prefix, ['y'],
                            exact_group_norm(exact_norm))
        ops = {n.op_type for n in onnx.load(prefix + '.onnx').graph.node}
        assert ('InstanceNormalization' in ops) != exact_norm, ops
        got, = run(x)
        errors[exact_norm] = ((got.double() - exact).norm() / size).item()
    bound = ERROR_FACTOR * err_eager + float32_floor(terms=8)
    assert errors[True] <= bound, (errors, err_eager)
    assert errors[False] > bound, (errors, err_eager)  # the premise


def test_box_head_detections_are_mmdets(tmp_path):
    head = box_head()
    rois, logits, deltas = box_head_outputs()
    ref = mmdet_box_head(head, rois, logits, deltas)
    assert len(ref[0]) == RCNN_CFG.max_per_img  # enough candidates
    assert len(ref[0].labels.unique()) > 4
    # the premise: one box per RoI (mmdeploy's) changes the boxes
    theirs = rewritten(
        lambda: BoxHead(head)(rois, logits, deltas), mmdet_nms=False)
    with pytest.raises(AssertionError):
        assert_same_as_mmdet(theirs, ref)
    assert_same_as_mmdet(
        rewritten_box_head(head, rois, logits, deltas), ref, what='eager')
    outs = [rois, logits, deltas]
    run = exported(BoxHead(head), outs, tmp_path)
    assert_same_as_mmdet(run(outs), ref, what='ONNX')
    assert_same_as_mmdet(run([x[1:] for x in outs]), ref[1:], what='ONNX')
    # nothing above the threshold: no detection (only the padding row)
    background = logits.clone()
    background[..., NUM_CLASSES] = 30.
    none = mmdet_box_head(head, rois, background, deltas)
    assert [len(r) for r in none] == [0, 0]
    assert_same_as_mmdet(
        rewritten_box_head(head, rois, background, deltas), none, what='eager')
    assert_same_as_mmdet(run([rois, background, deltas]), none, what='ONNX')


@pytest.mark.parametrize('max_per_img', [-1, 0])
def test_box_head_keeps_every_detection_without_max_per_img(
        max_per_img, tmp_path):
    """mmdet's ``multiclass_nms`` keeps every box after the NMS where
    ``max_per_img`` is 0 or below (ONNX's NMS would keep none at 0)."""
    head = box_head()
    rois, logits, deltas = box_head_outputs()
    cfg = RCNN_CFG.copy()
    cfg.update(max_per_img=max_per_img)
    ref = mmdet_box_head(head, rois, logits, deltas, cfg)
    assert len(ref[0]) > 4 * RCNN_CFG.max_per_img
    assert_same_as_mmdet(
        rewritten_box_head(head, rois, logits, deltas, cfg), ref, what='eager')
    outs = [rois, logits, deltas]
    assert_same_as_mmdet(
        exported(BoxHead(head, cfg), outs, tmp_path)(outs), ref, what='ONNX')


@pytest.mark.parametrize('max_per_img', [-3, -1, 0, 1])
def test_rpn_max_per_img_as_mmdet_reads_it(max_per_img, tmp_path):
    """mmdet slices the RPN's proposals after its NMS ``[:max_per_img]``:
    0 keeps none, -k all but the k lowest of each image, 1 the best."""
    head = rpn_head()
    cls, reg = rpn_outputs()
    cfg = RPN_CFG.copy()
    cfg.update(max_per_img=max_per_img)
    with torch.no_grad():
        ref = head.predict_by_feat(cls, reg, batch_img_metas=metas(2), cfg=cfg)
        every = mmdet_rpn(head, cls, reg, max_per_img=10**6)
    assert [len(r) for r in ref] == [len(e[:max_per_img]) for e in every]
    assert len(every[0]) != len(every[1])

    rpn = DenseHead(head, cfg)
    assert_same_as_mmdet(
        rewritten(lambda: rpn(*cls, *reg)), ref, labels=False, what='eager')
    run = exported(rpn, cls + reg, tmp_path)
    assert_same_as_mmdet(run(cls + reg), ref, labels=False, what='ONNX')


def test_class_agnostic_box_head():
    head = box_head()
    head.reg_class_agnostic = True
    rois, logits, deltas = box_head_outputs(n=1)
    deltas = deltas[..., :4].contiguous()
    ref = mmdet_box_head(head, rois, logits, deltas)
    assert_same_as_mmdet(rewritten_box_head(head, rois, logits, deltas), ref)


def test_box_head_keeps_rois_under_a_pixel():
    """Only the RPN's padding (zero width and height) is left out: a RoI
    half a pixel wide and high is a proposal of mmdet's RPN (its
    ``min_bbox_size`` is 0 by default) and gives its detection."""
    head = box_head()
    rois, logits, deltas = box_head_outputs(n=1)
    rois[0, 0, 3:] = rois[0, 0, 1:3] + 0.5
    logits[0, 0, 5] = 30.
    ref = mmdet_box_head(head, rois, logits, deltas)
    assert 5 in ref[0].labels[ref[0].scores > 0.99].tolist()
    assert_same_as_mmdet(rewritten_box_head(head, rois, logits, deltas), ref)


def test_nms_by_class_keeps_classes_apart():
    """By hand: two identical boxes of different classes both survive, one
    of the same class is suppressed; invalid and low scores never enter;
    the second image's rows are its own."""
    box = [10., 10., 50., 50.]
    boxes = torch.tensor([[box, box, box, [60., 60., 90., 90.]]] * 2)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.01]])
    classes = torch.tensor([[0, 1, 0, 2], [0, 0, 0, 0]])
    valid = torch.tensor([[True, True, True, False], [True] * 4])
    dets, labels = rewritten(
        lambda: nms_by_class(boxes, scores, classes, valid, 0.5, 0.05, 10))
    got = [[(round(float(d[4]), 2), int(c)) for d, c in zip(ds, cs)
            if d[4] > 0] for ds, cs in zip(dets, labels)]
    assert got == [[(0.9, 0), (0.8, 1)], [(0.9, 0)]]
    # the rows scored 0: the padding row (class 0), other images' (-1)
    assert [
        sorted(cs[ds[:, 4] == 0].tolist()) for ds, cs in zip(dets, labels)
    ] == [[-1, 0], [-1, -1, 0]]


def test_nms_by_class_shifts_classes_past_the_largest_coordinate():
    """By hand, mmdet's shift: class ``c`` moves by ``c * (m + 1)``, ``m``
    the largest coordinate (10 here), so a class-1 box at the origin stays
    apart from a class-0 box at the far corner even when both are 1 x 1 (a
    shift of ``m - 1`` would lay one on the other)."""
    boxes = torch.tensor([[[9., 9., 10., 10.], [0., 0., 1., 1.]]])
    dets, labels = rewritten(lambda: nms_by_class(
        boxes, torch.tensor([[.9, .8]]), torch.tensor([[0, 1]]),
        torch.ones(1, 2, dtype=torch.bool), 0.5, 0.05, 10))
    kept = dets[0, :, 4] > 0
    torch.testing.assert_close(dets[0, kept, :4], boxes[0])
    assert labels[0, kept].tolist() == [0, 1]


@pytest.mark.parametrize('nms', [
    dict(type='soft_nms', iou_threshold=0.5),
    dict(type='nms', iou_threshold=0.5, class_agnostic=True)
])
def test_other_nms_is_refused(nms):
    head = box_head()
    rois, logits, deltas = box_head_outputs(n=1)
    cfg = RCNN_CFG.copy()
    cfg.nms = nms
    with pytest.raises(NotImplementedError, match=re.escape(str(nms))):
        rewritten_box_head(head, rois, logits, deltas, cfg)


def test_switch_is_scoped():
    """Off by default and after the block, even when the block fails."""
    head = box_head()
    rois, logits, deltas = box_head_outputs(n=1)

    def call():
        return head.predict_by_feat(
            rois,
            logits,
            deltas,
            batch_img_metas=metas(1),
            rcnn_test_cfg=RCNN_CFG)

    from mmdeploy.core import RewriterContext
    cfg = load_deploy_cfg('instance-seg')

    def plain():
        mmdeploys_rewrites()
        with torch.no_grad(), RewriterContext(
                cfg=cfg, backend='onnxruntime', opset=11):
            return call()

    before = plain()
    with pytest.raises(RuntimeError):
        with mmdet_post_processing():
            raise RuntimeError
    after = plain()
    mine = rewritten(call)
    assert torch.equal(before[0], after[0])
    assert not np.array_equal(before[0].numpy(), mine[0].numpy())


CASCADE_CONFIG = (
    Path(__file__).resolve().parents[1] / 'configs' / 'cascade_rcnn' /
    'cascade-mask-rcnn_rest-small_fpn_4conv1fc-giou_ms-crop-3x_coco.py')


class RoIOutputs:
    """Stand-ins for a cascade's per-stage box and mask branches: outputs
    that are smooth random functions of each RoI's box (random Fourier
    features), so that mmdet, which sees each image's proposals, and the
    rewrite, which sees them batched and padded, get the same outputs for
    the same box, and refined RoIs get other outputs than their first."""

    def __init__(self, stages, num_classes, mask_size=6):
        gen = torch.Generator().manual_seed(2)
        self.proj = torch.randn(4, 16, generator=gen) / 30
        self.cls = [
            torch.randn(32, num_classes + 1, generator=gen) * 3
            for _ in range(stages)
        ]
        self.reg = [
            torch.randn(32, 4 * num_classes, generator=gen) * 0.3
            for _ in range(stages)
        ]
        self.mask = [
            torch.randn(32, num_classes * mask_size**2, generator=gen) * 2
            for _ in range(stages)
        ]
        self.shape = (num_classes, mask_size, mask_size)

    def features(self, rois):
        z = rois[:, 1:] @ self.proj
        return torch.cat([torch.sin(z), torch.cos(z)], 1)

    def bbox_forward(self, stage, x, rois, **kwargs):
        f = self.features(rois)
        return dict(
            cls_score=f @ self.cls[stage], bbox_pred=f @ self.reg[stage])

    def mask_forward(self, stage, x, rois, **kwargs):
        f = self.features(rois)
        return dict(mask_preds=(f @ self.mask[stage]).view(-1, *self.shape))


def cascade_head():
    """configs/cascade_rcnn's RoI head (3 stages, class-specific box
    regression) with NUM_CLASSES classes and stand-in branches."""
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(str(CASCADE_CONFIG)).model
    head_cfg = cfg.roi_head
    for h in head_cfg.bbox_head:
        h.num_classes = NUM_CLASSES
    head_cfg.mask_head.num_classes = NUM_CLASSES
    head = MODELS.build(
        dict(head_cfg, train_cfg=None, test_cfg=cfg.test_cfg.rcnn)).eval()
    assert not any(h.reg_class_agnostic for h in head.bbox_head)
    outputs = RoIOutputs(head.num_stages, NUM_CLASSES)
    head._bbox_forward = outputs.bbox_forward
    head._mask_forward = outputs.mask_forward
    return head, outputs


def test_cascade_detections_are_mmdets(tmp_path):
    """A cascade with class-specific regression (configs/cascade_rcnn):
    mmdeploy's rewrite refuses it (the premise); mmrest's gives mmdet's
    detections eager and in ONNX Runtime, the RPN's padding left out."""
    from mmengine.structures import InstanceData
    head, _ = cascade_head()
    rois, _, _ = box_head_outputs()  # the last RoI of each image: padding
    proposals = torch.cat([rois[..., 1:], torch.ones_like(rois[..., :1])], -1)
    with torch.no_grad():
        ref = head.predict_bbox(
            None,
            metas(2), [InstanceData(bboxes=p[:-1, :4]) for p in proposals],
            rcnn_test_cfg=RCNN_CFG)
    assert all(len(r) > 5 for r in ref)
    assert len(ref[0].labels.unique()) > 2

    def call(proposals):
        return head.predict_bbox(
            None, metas(len(proposals)), [proposals], rcnn_test_cfg=RCNN_CFG)

    with pytest.raises(AssertionError):  # mmdeploy's: class-agnostic only
        rewritten(lambda: call(proposals), mmdet_nms=False)
    assert_same_as_mmdet(rewritten(lambda: call(proposals)), ref, what='eager')
    assert_same_as_mmdet(  # one image, one image's metas
        rewritten(lambda: call(proposals[1:])),
        ref[1:],
        what='eager')

    class Head(torch.nn.Module):

        def forward(self, proposals):
            return call(proposals)

    run = exported(Head(), [proposals], tmp_path)
    assert_same_as_mmdet(run([proposals]), ref, what='ONNX')
    assert_same_as_mmdet(run([proposals[1:]]), ref[1:], what='ONNX')


def test_cascade_masks_are_mmdets():
    """The cascade's mask probabilities are the mean of the stages'
    sigmoids (mmdet's), not the sigmoid of the mean logit (mmdeploy's)."""
    head, outputs = cascade_head()
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 7, 2, generator=gen) * 60
    dets = torch.cat([
        xy, xy + 10 + torch.rand(2, 7, 2, generator=gen) * 30,
        torch.rand(2, 7, 1, generator=gen)
    ], -1)
    labels = torch.randint(NUM_CLASSES, (2, 7), generator=gen)
    rois = torch.cat(
        [torch.arange(2.).view(2, 1, 1).expand(2, 7, 1), dets[..., :4]],
        -1).view(-1, 5)
    rows = torch.arange(14)
    stages = [
        outputs.mask_forward(s, None, rois)['mask_preds'][rows,
                                                          labels.view(-1)]
        for s in range(head.num_stages)
    ]
    mmdet = (sum(s.sigmoid() for s in stages) / len(stages)).view(2, 7, 6, 6)

    def call():
        return head.predict_mask(None, metas(2), (dets, labels))

    masks = rewritten(call)[2]
    torch.testing.assert_close(masks, mmdet, rtol=0, atol=1e-6)
    theirs = rewritten(call, mmdet_nms=False)[2]
    assert (theirs - mmdet).abs().max() > 1e-2
