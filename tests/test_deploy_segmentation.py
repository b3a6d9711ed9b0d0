"""mmrest.deploy for segmentors: UperNet with a ResT backbone exported by
mmdeploy 1.3.1 for ONNX Runtime computes mmseg's logits at any input size.

mmdeploy replaces UperNet's adaptive average pooling (its pyramid pooling
module) by an ``avg_pool2d`` fixed at the traced size, which is wrong for
most sizes and fails for a stage-4 map smaller than 6 x 6;
``mmrest.deploy_rewrites.adaptive_avg_pool2d`` computes torch's windows
from the dynamic size. Its windows are checked against torch's in float64
and by hand; the exported segmentor against the float64 eager segmentor
(the rule of ``tests/_helpers.py``: the graph's error of the size of the
eager float32 segmentor's own), at sizes whose stage-4 maps are smaller
than, not multiples of, and multiples of the pyramid's 6. Semantic FPN
(mmseg's FPN neck and ``FPNHead``) likewise: its scale heads' ``Upsample``
sizes, which mmseg computes with Python's ``int`` and the trace would fix,
are computed in the graph (``mmrest.deploy_rewrites.upsample__forward``).
"""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import (ERROR_FACTOR, assert_float32_close, assert_float64_equal,
                      export_module, float32_floor, load_tool, relative_error)

from mmrest.backbones import kernels
from mmrest.deploy import (build_detector, compare_maps, export_detector,
                           graph_matches, load_deploy_cfg, make_input,
                           onnx_outputs, rewritten_logits, rewritten_outputs,
                           seg_graph_report, synthetic_image)
from mmrest.deploy_rewrites import (_SWITCH, adaptive_avg_pool2d,
                                    exact_adaptive_pooling, exact_upsampling,
                                    pooling_matrix, scaled_size)

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
# UperNet + ResT-Lite with 64-channel heads and 5 classes (the demo's);
# its test pipeline resizes to 96 x 96 (keeping the ratio): a 128 x 160
# image becomes a 77 x 96 input, a 3 x 3 stage-4 map.
SEG_CONFIG = str(CONFIGS / 'demo' /
                 'rest-lite_upernet_1xb8-1900it_shapes-96x96.py')
# Network inputs (h, w) and their stage-4 maps (stride 32): 3 x 3, 7 x 5,
# 6 x 6, 4 x 9.
SIZES = [(77, 96), (224, 160), (192, 192), (128, 288)]
# Layers between the image and the logits: ResT-Lite's 4 patch
# embeddings and 8 blocks, the PPM (2), the FPN (2), the fusion and the
# classifier (2); see _helpers.float32_floor.
DEPTH = 18


def test_pooling_matrix_by_hand():
    """5 entries into 3: torch's windows [0, 2), [1, 4), [3, 5); 2 into 3:
    [0, 1), [0, 2), [1, 2)."""
    x = torch.zeros(())
    torch.testing.assert_close(
        pooling_matrix(5, 3, x),
        torch.tensor([[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
                      [0, 0, 0, 1 / 2, 1 / 2]]))
    torch.testing.assert_close(
        pooling_matrix(2, 3, x), torch.tensor([[1., 0.], [.5, .5], [0., 1.]]))


@pytest.mark.parametrize('out', [1, 2, 3, 6, (2, 5), (None, 3), (4, None)])
def test_adaptive_avg_pool2d_is_torchs(out):
    """Every map size from 1 to 19 each way, float64: torch's values."""
    gen = torch.Generator().manual_seed(0)
    for h in range(1, 20):
        for w in (1, 2, 5, 6, 7, 13, 19):
            x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
            torch.testing.assert_close(
                adaptive_avg_pool2d(x, out),
                F.adaptive_avg_pool2d(x, out),
                rtol=0,
                atol=1e-13,
                msg=lambda m: f'{h} x {w} -> {out}: {m}')


def test_adaptive_avg_pool2d_takes_4d_only():
    with pytest.raises(ValueError, match='N x C x H x W.*got 3'):
        adaptive_avg_pool2d(torch.zeros(3, 4, 4), 2)


class Pyramid(torch.nn.Module):
    """UperNet's pooling: the map pooled to 1, 2, 3 and 6 (modules)."""

    def __init__(self):
        super().__init__()
        self.pools = torch.nn.ModuleList(
            torch.nn.AdaptiveAvgPool2d(s) for s in (1, 2, 3, 6))

    def forward(self, x):
        return tuple(pool(x) for pool in self.pools)


def export_pyramid(tmp_path, exact: bool):
    """``Pyramid`` exported by mmdeploy at a 16 x 16 map with dynamic
    sizes; a function running it in ONNX Runtime."""
    return export_module(Pyramid(), torch.randn(1, 4, 16, 16),
                         str(tmp_path / f'pyramid{int(exact)}'),
                         ['p1', 'p2', 'p3', 'p6'],
                         exact_adaptive_pooling(exact))


def test_exported_pooling_is_torchs_at_every_size(tmp_path):
    """Traced at 16 x 16, run at sizes below, between and at multiples of
    the output sizes: torch's pooling; the global pooling stays torch's
    one ``GlobalAveragePool`` node. Premise: mmdeploy's own rewrite, traced
    at the same size, pools 16 x 16 to 8 x 8 instead of 6 x 6."""
    import onnx
    run = export_pyramid(tmp_path, exact=True)
    ops = [node.op_type for node in onnx.load(run.args[0]).graph.node]
    assert ops.count('GlobalAveragePool') == 1, ops
    gen = torch.Generator().manual_seed(1)
    for h, w in [(16, 16), (1, 1), (3, 5), (7, 13), (12, 18), (25, 40)]:
        x = torch.randn(2, 4, h, w, generator=gen)
        for got, size in zip(run(x), (1, 2, 3, 6)):
            torch.testing.assert_close(
                got,
                F.adaptive_avg_pool2d(x, size),
                rtol=0,
                atol=1e-6,
                msg=lambda m: f'{h} x {w} -> {size}: {m}')
    mmdeploys = export_pyramid(tmp_path, exact=False)
    assert mmdeploys(torch.randn(1, 4, 16, 16))[3].shape[-2:] == (8, 8)


def _last(type, **kwargs):
    """A decode head on ResT-Lite's stage 4 (512 channels)."""
    return dict(type=type, in_channels=512, in_index=3, **kwargs)


#: Decode heads users pair with a backbone in mmseg, on ResT-Lite with 64
#: channels (their configs' other settings as mmseg's bases), each another
#: way of resizing or pooling in the exported graph: ``(heads, neck)``;
#: two heads make a cascade (``CascadeEncoderDecoder``, as OCRNet).
OTHER_HEADS = dict(
    # Semantic FPN (mmseg's fpn_r50): the scale heads' Upsample
    fpn=([
        dict(
            type='FPNHead',
            in_channels=[64] * 4,
            in_index=[0, 1, 2, 3],
            feature_strides=[4, 8, 16, 32])
    ], dict(type='FPN', in_channels=[64, 128, 256, 512], num_outs=4)),
    fcn=([_last('FCNHead', num_convs=2, concat_input=True)], None),
    # PSPNet: adaptive pooling to 1, 2, 3 and 6
    psp=([_last('PSPHead', pool_scales=(1, 2, 3, 6))], None),
    # DeepLabV3: global pooling, resized to the map
    aspp=([_last('ASPPHead', dilations=(1, 12, 24, 36))], None),
    # DeepLabV3+: the decoder resized to stage 1's map
    aspp_plus=([
        _last(
            'DepthwiseSeparableASPPHead',
            dilations=(1, 12, 24, 36),
            c1_in_channels=64,
            c1_channels=16)
    ], None),
    # SegFormer's all-MLP head: every stage resized to stage 1's map
    segformer=([
        dict(
            type='SegformerHead',
            in_channels=[64, 128, 256, 512],
            in_index=[0, 1, 2, 3])
    ], None),
    # SETR's progressive upsampling: Upsample again
    setr_up=([_last('SETRUPHead', num_convs=2, up_scale=2,
                    kernel_size=3)], None),
    # EMANet: mmdeploy's own rewrite of its EM attention
    ema=([_last('EMAHead', ema_channels=64, num_bases=8, num_stages=3)], None),
    # OCRNet: a cascade, mmdeploy's rewrite of its predict
    ocr=([
        _last('FCNHead', num_convs=1, concat_input=False),
        _last('OCRHead', ocr_channels=32)
    ], None),
)


def segmentor(deploy_cfg='segmentation', head='upernet'):
    """The demo's UperNet, or a segmentor of ``OTHER_HEADS`` on the same
    ResT-Lite (64 channels, no auxiliary head)."""
    from mmengine.config import Config, ConfigDict
    cfg = Config.fromfile(SEG_CONFIG)
    if head != 'upernet':
        model = cfg.model
        heads, neck = OTHER_HEADS[head]
        heads = [
            ConfigDict(
                h,
                channels=64,
                num_classes=model.decode_head.num_classes,
                norm_cfg=model.decode_head.norm_cfg,
                align_corners=False) for h in heads
        ]
        if neck is not None:
            model.neck = ConfigDict(neck, out_channels=64)
        if len(heads) > 1:
            model.type = 'CascadeEncoderDecoder'
            model.num_stages = len(heads)
        model.decode_head = heads if len(heads) > 1 else heads[0]
        model.auxiliary_head = None
    return build_detector(cfg, deploy_cfg)


def inputs_at(size, n=1, seed=0):
    """A normalised-looking batch of ``n`` network inputs of ``size``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=gen)


def mmseg_logits(model, inputs):
    """mmseg's own logits at the input's size (``encode_decode``), eager."""
    metas = [dict(img_shape=tuple(inputs.shape[-2:]))] * len(inputs)
    with torch.no_grad():
        return model.encode_decode(inputs, metas)


@pytest.mark.parametrize('head', ['upernet', *OTHER_HEADS])
def test_exported_segmentor_computes_mmsegs_logits(head, tmp_path):
    """Exported once (logits, ``with_argmax=False``), the graph gives the
    float64 eager segmentor's logits at every size of ``SIZES`` (a batch of
    two at the last) as closely as the float32 eager segmentor does with
    the backbone's literal computation, the formulas the export writes out
    (ResT's InstanceNorm over the softmax amplifies its rounding: 1e-4
    here, against 3e-6 for the fast path); UperNet and the heads of
    ``OTHER_HEADS``."""
    cfg = load_deploy_cfg('segmentation')
    cfg.codebase_config.with_argmax = False
    processor, model = segmentor(cfg, head)
    heads = model.decode_head if head == 'ocr' else [model.decode_head]
    expected = ['UPerHead'] if head == 'upernet' else [
        h['type'] for h in OTHER_HEADS[head][0]
    ]
    assert [type(h).__name__ for h in heads] == expected
    onnx_file = export_detector(processor, model, synthetic_image((128, 160)),
                                str(tmp_path), cfg)
    # named as mmdeploy names it: the deploy config's save_file
    assert onnx_file == str(tmp_path / 'end2end.onnx')
    assert_logits_at_every_size(model, onnx_file, 5, DEPTH)


def assert_logits_at_every_size(model, onnx_file, classes, depth):
    """The graph's logits at every size of ``SIZES`` (a batch of two at the
    last) against the float64 segmentor's, as close as the float32 one's
    with the backbone's literal computation (``depth`` layers)."""
    exact_model = copy.deepcopy(model).double()
    for i, size in enumerate(SIZES):
        inputs = inputs_at(size, n=2 if i == len(SIZES) - 1 else 1, seed=i)
        got, = onnx_outputs(onnx_file, inputs)
        exact = mmseg_logits(exact_model, inputs.double())
        assert got.shape == exact.shape == (len(inputs), classes, *size)
        with kernels.literal():  # the authors' float32 computation
            literal = mmseg_logits(model, inputs)
        assert_float32_close(
            got, literal, exact, depth=depth, name=f'logits at {size}')


# ResT v2-T's 4 patch embeddings and 11 blocks, and UperNet's 6 layers
V2_DEPTH = 21


def test_exported_restv2_upernet_computes_mmsegs_logits(tmp_path):
    """The ADE20K UperNet on ResT v2-T (the family of the authors' released
    segmentors; 512 channels, 150 classes), tested whole-image, exported
    once: the float64 segmentor's logits at every size of ``SIZES`` as
    closely as the float32 one's (the ResT-Lite UperNet above has ResT
    v1's attention, not v2's upsampling branch)."""
    from mmengine.config import Config
    cfg = Config.fromfile(
        str(CONFIGS / 'upernet' /
            'restv2-tiny_upernet_8xb2-160k_ade20k-512x512.py'))
    cfg.model.test_cfg = dict(mode='whole')
    deploy_cfg = load_deploy_cfg('segmentation-logits')
    torch.manual_seed(0)
    processor, model = build_detector(cfg, deploy_cfg)
    assert type(model.backbone).__name__ == 'ResTV2'
    onnx_file = export_detector(processor, model, synthetic_image((128, 160)),
                                str(tmp_path), deploy_cfg)
    assert_logits_at_every_size(model, onnx_file, 150, V2_DEPTH)


def test_mmdeploys_pooling_is_not_mmsegs():
    """The premise: with mmdeploy's own rewrite of the pooling, the
    rewritten segmentor's logits at a 256 x 256 input (an 8 x 8 stage-4
    map) are far from mmseg's, and at 77 x 96 (3 x 3) it fails; with
    mmrest's (``rewritten_outputs``, ``rewritten_logits``) they are
    mmseg's."""
    from mmdeploy.core import RewriterContext
    cfg = load_deploy_cfg('segmentation')
    cfg.codebase_config.with_argmax = False
    processor, model = segmentor(cfg)
    data, _ = make_input(processor, model, synthetic_image((128, 160)))
    model.double()  # float64: the rewrites' formulas, not their rounding

    def mmdeploys(inputs):
        with torch.no_grad(), exact_adaptive_pooling(False), \
                RewriterContext(cfg=cfg, backend='onnxruntime', opset=11):
            return model(inputs, copy.deepcopy(data['data_samples']))

    inputs = inputs_at((256, 256)).double()
    mmseg = mmseg_logits(model, inputs)
    ours, = rewritten_outputs(processor, model, copy.deepcopy(data), inputs)
    assert_float64_equal(ours, mmseg, name='mmrest\'s pooling')
    assert_float64_equal(
        rewritten_logits(processor, model, copy.deepcopy(data), inputs),
        mmseg,
        name='rewritten logits')
    assert relative_error(mmdeploys(inputs), mmseg) > 1e-2
    with pytest.raises(RuntimeError, match='stride should not be zero'):
        mmdeploys(inputs_at((77, 96)).double())


def test_mmsegs_upsample_is_fixed_at_the_traced_size(tmp_path, monkeypatch):
    """The premise of ``exact_upsampling``: exported with mmseg's own
    ``Upsample``, whose output size the trace fixes, Semantic FPN gives
    mmseg's logits at the traced size (77 x 96, the example image's input)
    and at another more than 20 times as far from them as the logits test
    allows (the float32 rule of ``tests/_helpers.py``)."""
    import mmrest.deploy_rewrites as rewrites
    monkeypatch.setattr(rewrites, 'exact_upsampling',
                        lambda: exact_upsampling(False))
    cfg = load_deploy_cfg('segmentation')
    cfg.codebase_config.with_argmax = False
    processor, model = segmentor(cfg, 'fpn')
    onnx_file = export_detector(processor, model, synthetic_image((128, 160)),
                                str(tmp_path), cfg)
    exact_model = copy.deepcopy(model).double()
    results = []
    for size in SIZES[:2]:
        inputs = inputs_at(size)
        got, = onnx_outputs(onnx_file, inputs)
        with kernels.literal():  # the authors' float32 computation
            literal = mmseg_logits(model, inputs)
        results.append((got, literal, mmseg_logits(exact_model,
                                                   inputs.double())))
    assert_float32_close(*results[0], depth=DEPTH, name='at the traced size')
    with pytest.raises(AssertionError):
        assert_float32_close(
            *results[1],
            depth=DEPTH,
            factor=20 * ERROR_FACTOR,
            floor=20 * float32_floor(DEPTH))


@pytest.mark.parametrize('factor', [2, 2.0, 0.5, 1.5, 0.7, 1 / 3, 0.1, 4])
def test_scaled_size_is_pythons_int_of_the_product(factor):
    """The traced size (a tensor) rounds as mmseg's ``int(size *
    factor)`` in Python's float64, at every size from 1 to 600."""
    sizes = torch.arange(1, 601)
    expected = [int(n * factor) for n in sizes.tolist()]
    assert [scaled_size(n, factor) for n in sizes.tolist()] == expected
    traced = [scaled_size(n, factor) for n in sizes]
    assert all(t.dtype == torch.int64 for t in traced)
    assert [t.item() for t in traced] == expected


def test_scaled_size_needs_float64():
    """The premise of float64: Python's 90 x 0.7 is just below 63, float32's
    is 63."""
    size = torch.tensor(90)
    assert int(90 * 0.7) == scaled_size(size, 0.7).item() == 62
    assert torch.floor(size.float() * 0.7).item() == 63


class PointsTest(torch.nn.Module):
    """PointRend's ``PointHead.get_points_test`` at ``POINTS`` points, as a
    module to export (its input: a subdivision step's logits)."""

    def __init__(self):
        super().__init__()
        from mmengine.config import ConfigDict
        from mmseg.models.decode_heads import PointHead
        from mmseg.models.decode_heads.point_head import calculate_uncertainty
        self.head = PointHead(
            in_channels=[8], in_index=[0], channels=8, num_classes=3)
        self.uncertainty = calculate_uncertainty
        self.cfg = ConfigDict(subdivision_num_points=POINTS)

    def forward(self, logits):
        return self.head.get_points_test(logits, self.uncertainty, self.cfg)


POINTS = 60  # more than the 6 x 8 traced map's places, fewer than others'


@pytest.mark.parametrize('exact', [True, False])
def test_pointrend_points_are_mmsegs_at_every_size(exact, tmp_path):
    """PointRend's points of a subdivision step, exported at a map of 48
    places (all of them taken) and run at maps of 48, 49, 60, 61 and 130
    places: mmseg's (the same places, the same centres) within
    ``exact_upsampling`` (``point_head__get_points_test``); with mmseg's
    own, whose ``min(h * w, points)`` the trace fixes, every place is
    taken beyond 60 (the premise). Random logits: no two places' uncertainty
    ties."""
    torch.manual_seed(0)
    module = PointsTest().eval()
    run = export_module(module, torch.randn(1, 3, 6, 8),
                        str(tmp_path / 'points'), ['indices', 'points'],
                        exact_upsampling(exact))
    for h, w in [(6, 8), (7, 7), (6, 10), (1, 61), (10, 13)]:
        logits = torch.randn(2, 3, h, w)
        with torch.no_grad():
            indices, points = module(logits)
        got_indices, got_points = run(logits)
        assert indices.shape[1] == min(h * w, POINTS)
        if not exact and h * w > POINTS:
            assert got_indices.shape[1] == h * w  # the premise
            continue
        order = got_indices.argsort(1)
        rows = torch.arange(2)[:, None]
        assert torch.equal(got_indices[rows, order],
                           indices.sort(1).values), (h, w)
        torch.testing.assert_close(got_points[rows, order],
                                   points[rows, indices.argsort(1)])


def test_exact_upsampling_is_off_without_mmseg(monkeypatch):
    """mmseg is optional: without it the rewrite, which mmdeploy would
    not find, stays off."""
    import importlib.util
    find_spec = importlib.util.find_spec
    with exact_upsampling():
        assert _SWITCH['upsample']
    monkeypatch.setattr(
        importlib.util, 'find_spec', lambda name, *a: None
        if name == 'mmseg' else find_spec(name, *a))
    with exact_upsampling():
        assert not _SWITCH['upsample']
    assert not _SWITCH['upsample']


def test_seg_graph_report_excuses_ties_only():
    """Labels that differ where the two best logits are within the
    tolerance (of the largest logit, 2 here) are ties; one beyond it is an
    error; logits are compared as such, within the tolerance."""
    logits = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    logits[0, 0] = torch.tensor([[1., 0.], [0., 0.]])
    logits[0, 1] = torch.tensor([[0., 1.], [2., 0.]])
    logits[0, 2] = torch.tensor([[0., 0.], [0., 5e-4]])  # a near-tie at 1, 1
    labels = torch.tensor([[[[0, 1], [1, 0]]]])
    report = seg_graph_report(logits, labels)
    assert report == dict(
        logit_scale=2.,
        num_pixels=4,
        num_differ=1,
        max_margin_where_differ=pytest.approx(5e-4))
    assert graph_matches(report)
    labels[0, 0, 0, 0] = 2  # margin 1
    report = seg_graph_report(logits, labels)
    assert report['num_differ'] == 2
    assert report['max_margin_where_differ'] == 1.
    assert not graph_matches(report)
    # logits: compared as such, then as labels
    report = seg_graph_report(logits, logits.float() + 1e-5)
    assert report['num_differ'] == 0 and graph_matches(report)
    assert not graph_matches(seg_graph_report(logits, logits + 0.003))
    assert graph_matches(seg_graph_report(logits * 10, logits * 10 + 0.003))
    with pytest.raises(ValueError, match=r'labels of shape \(1, 1, 2, 3\)'):
        seg_graph_report(logits, torch.zeros(1, 1, 2, 3, dtype=torch.long))
    # the same labels or logits match even at zero tolerance
    assert graph_matches(
        seg_graph_report(logits, logits.argmax(1, keepdim=True)), 0.)
    assert graph_matches(seg_graph_report(logits, logits), 0.)
    # one class (one logit a pixel): every label 0, no margin to take
    one = seg_graph_report(logits[:, :1], torch.zeros(1, 1, 2, 2).long())
    assert (one['num_differ'], one['max_margin_where_differ']) == (0, 0.)


def test_seg_graph_report_of_a_binary_segmentor():
    """A binary segmentor (one logit a pixel, its head's ``threshold``)
    labels 1 where the logit's sigmoid exceeds the threshold: a label that
    differs where the logit is within the tolerance of the threshold's
    logit is a tie; one beyond it an error. Without the threshold one logit
    gives label 0 everywhere (the multi-class reading)."""
    logits = torch.tensor([[[[-2., 0.5], [3., 1e-3]]]], dtype=torch.float64)
    labels = torch.tensor([[[[0, 1], [1, 1]]]])
    report = seg_graph_report(logits, labels, threshold=0.5)  # logit 0
    assert report == dict(
        logit_scale=3., num_pixels=4, num_differ=0, max_margin_where_differ=0.)
    labels[0, 0, 1, 1] = 0  # 1e-3 above the threshold's logit: a tie
    report = seg_graph_report(logits, labels, threshold=0.5)
    assert report['num_differ'] == 1
    assert report['max_margin_where_differ'] == pytest.approx(1e-3)
    assert graph_matches(report) and not graph_matches(report, 1e-4)
    labels[0, 0, 0, 1] = 0  # 0.5 above it: an error
    report = seg_graph_report(logits, labels, threshold=0.5)
    assert report['max_margin_where_differ'] == pytest.approx(0.5)
    assert not graph_matches(report)
    # threshold 0.8: the logit log(4) = 1.386 (only 3 above it); a logit
    # 1e-4 above it labelled 0 is a tie, its margin taken from log(4)
    report = seg_graph_report(
        logits, torch.tensor([[[[0, 0], [1, 0]]]]), threshold=0.8)
    assert report['num_differ'] == 0
    near = logits.clone()
    near[0, 0, 1, 1] = math.log(4) + 1e-4
    report = seg_graph_report(
        near, torch.tensor([[[[0, 0], [1, 0]]]]), threshold=0.8)
    assert report['num_differ'] == 1
    assert report['max_margin_where_differ'] == pytest.approx(1e-4, rel=1e-6)
    # a threshold of 0 or below labels all 1, of 1 or above all 0
    assert seg_graph_report(logits,
                            torch.ones(1, 1, 2, 2).long(),
                            0.)['num_differ'] == 0
    assert seg_graph_report(logits,
                            torch.zeros(1, 1, 2, 2).long(),
                            1.)['num_differ'] == 0
    assert seg_graph_report(logits, labels)['num_differ'] == 1  # the 3


def test_compare_maps_by_hand():
    ref = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1]])
    got = torch.tensor([[0, 0, 1, 1], [0, 2, 1, 1]])
    report = compare_maps(ref, got)
    # label 0: 3 / 3, label 1: 3 / 4, label 2: 1 / 2
    assert report == dict(
        num_pixels=8, pixel_agreement=7 / 8, num_labels=3, min_label_iou=0.5)
    from mmrest.deploy import agrees
    assert agrees(report, 0.5) and not agrees(report, 0.6)
    assert compare_maps(ref, ref)['min_label_iou'] == 1.
    with pytest.raises(ValueError, match=r'shapes \(2, 4\) and \(4, 2\)'):
        compare_maps(ref, got.T)


def test_configs_and_deploy_configs_must_match():
    """An mmseg config with a detection deploy config, an mmdet config with
    the segmentation one, and a segmentor tested by sliding windows (which
    mmdeploy does not export) are errors that name what is wrong."""
    with pytest.raises(
            ValueError,
            match=r"rest-lite_upernet.*is an mmseg config \(model type "
            r"'EncoderDecoder'\) and the deploy config is for mmdet; "):
        build_detector(SEG_CONFIG, 'detection')
    det = str(CONFIGS / 'retinanet' / 'retinanet_rest-lite_fpn_1x_coco.py')
    with pytest.raises(
            ValueError,
            match=r"is an mmdet config.*for mmseg; .*'segmentation-logits'"):
        build_detector(det, 'segmentation')
    with pytest.raises(ValueError, match="'slide' mode.*test_cfg.mode=whole"):
        build_detector(
            SEG_CONFIG,
            'segmentation',
            cfg_options={
                'model.test_cfg':
                dict(mode='slide', crop_size=(64, 64), stride=(32, 32))
            })


def test_make_input_resizes_as_the_test_pipeline():
    processor, model = segmentor()
    data, inputs = make_input(processor, model, synthetic_image((128, 160)))
    assert tuple(inputs.shape) == (1, 3, 77, 96)
    meta = data['data_samples'][0].metainfo
    assert meta['ori_shape'] == (128, 160) and meta['img_shape'] == (77, 96)


@pytest.mark.parametrize('task,image,code,says', [
    ('segmentation', (96, 96), 0, 'agrees with the PyTorch segmentor'),
    ('segmentation-logits',
     (128, 160), 0, 'agrees with the PyTorch segmentor'),
    ('segmentation', (128, 160), 1, "mmdeploy's backend model resizes the "
     'label map'),
])
def test_tool_on_a_segmentor(task, image, code, says, tmp_path, capsys):
    """tools/deploy.py on UperNet (random weights), each label's pixels
    required alike to IoU 0.99: the graph computes the rewritten
    segmentor, and ONNX Runtime's label map is mmseg's where the test
    pipeline keeps the image's size (96 x 96) or the graph gives logits,
    which are resized as mmseg resizes them; the labels that mmdeploy's
    backend model resizes (128 x 160, seen at 77 x 96) are not. (Random
    weights leave near-ties: the literal float32 computation in the graph
    and mmseg's fast one flip a few of them, 2 of 20480 pixels here.)"""
    import cv2
    path = str(tmp_path / 'image.png')
    cv2.imwrite(path, synthetic_image(image))
    tool = load_tool('deploy')
    status = tool.main([
        SEG_CONFIG, '--deploy-cfg', task, '--image', path, '--box-iou', '0.99',
        '--out',
        str(tmp_path / 'out')
    ])
    out = capsys.readouterr().out
    assert status == code, out
    assert "The ONNX graph computes mmdeploy's rewritten model" in out
    assert says in out


def _tool_with_stand_ins(monkeypatch, tmp_path, logits, graph, threshold,
                         maps):
    """tools/deploy.py with a segmentation deploy config and stand-ins for
    the models: the rewritten segmentor's ``logits``, the ``graph``'s
    labels, the decode head's binary ``threshold`` and the label maps
    (mmseg's, ONNX Runtime's); returns the exit code."""
    tool = load_tool('deploy')
    monkeypatch.setattr(tool, 'build_detector', lambda *a: (None, 'pytorch'))
    monkeypatch.setattr(tool, 'export_detector',
                        lambda *a: str(tmp_path / 'end2end.onnx'))
    monkeypatch.setattr(tool, 'make_input', lambda *a:
                        ({}, torch.zeros(1, 3, 4, 4)))
    monkeypatch.setattr(tool, 'rewritten_logits', lambda *a: logits)
    monkeypatch.setattr(tool, 'binary_threshold', lambda model: threshold)
    monkeypatch.setattr(tool, 'onnx_outputs', lambda *a: (graph, ))
    monkeypatch.setattr(tool, 'build_ort_model', lambda *a: 'onnx')
    monkeypatch.setattr(
        tool, 'predict',
        lambda model, data: dict(zip(('pytorch', 'onnx'), maps))[model])
    return tool.main(['config.py', '--deploy-cfg', 'segmentation'])


@pytest.mark.parametrize('graph_ok,maps_ok,code,says', [
    (True, True, 0, 'agrees with the PyTorch segmentor'),
    (True, False, 1, "mmdeploy's backend model resizes the label map"),
    (False, True, 1, "DIFFERS FROM mmdeploy's rewritten model"),
])
def test_tool_segmentor_exit_code(graph_ok, maps_ok, code, says, monkeypatch,
                                  capsys, tmp_path):
    """tools/deploy.py with a segmentation deploy config and stand-ins for
    the models: 0 only when the graph's labels are the rewritten
    segmentor's (ties aside) and each label's pixels in ONNX Runtime's map
    and mmseg's have an IoU of at least --box-iou."""
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 1, :2] = 1.  # label 1 on the top half
    labels = logits.argmax(1, keepdim=True)
    ref = labels[0, 0]
    got = ref.clone()
    if not maps_ok:
        got[2] = 1  # label 0: IoU 1 / 2
    graph = labels if graph_ok else 1 - labels
    assert _tool_with_stand_ins(monkeypatch, tmp_path, logits, graph, None,
                                (ref, got)) == code
    assert says in capsys.readouterr().out


@pytest.mark.parametrize('graph_ok', [True, False])
def test_tool_checks_a_binary_segmentors_graph(graph_ok, monkeypatch, capsys,
                                               tmp_path):
    """A binary segmentor's graph labels are checked against its rewritten
    logits with its decode head's threshold (one logit a pixel has no
    second best to make a tie of: read without it, every label differing
    would pass)."""
    logits = -torch.ones(1, 1, 4, 4)
    logits[..., :2, :] = 1.  # sigmoid 0.73 > 0.5 on the top half
    labels = (logits > 0).long()
    graph = labels if graph_ok else 1 - labels
    maps = (labels[0, 0], labels[0, 0])
    code = _tool_with_stand_ins(monkeypatch, tmp_path, logits, graph, 0.5,
                                maps)
    out = capsys.readouterr().out
    assert code == (0 if graph_ok else 1), out
    assert ('computes' if graph_ok else 'DIFFERS FROM') + \
        " mmdeploy's rewritten model" in out


def test_tool_default_deploy_cfg(monkeypatch):
    """Without --deploy-cfg, tools/deploy.py exports an mmseg config with
    segmentation-logits (mmseg's label maps), a detector with a mask head
    with instance-seg (masks too), Mask2Former with panoptic-seg (its
    logits) and anything else with detection (a missing file is
    build_detector's error)."""
    tool = load_tool('deploy')
    seen = []

    def stop(config, deploy_cfg, *args):
        codebase = deploy_cfg.codebase_config
        seen.append((codebase.type, codebase.get('with_argmax'), 'masks'
                     in deploy_cfg.onnx_config.output_names,
                     codebase.get('model_type', 'end2end')))
        raise RuntimeError('stop here')

    monkeypatch.setattr(tool, 'build_detector', stop)
    det = CONFIGS / 'retinanet' / 'retinanet_rest-lite_fpn_1x_coco.py'
    mask = CONFIGS / 'mask_rcnn' / 'mask-rcnn_rest-lite_fpn_1x_coco.py'
    cascade, = (CONFIGS / 'cascade_rcnn').glob('*restv2-tiny*.py')
    mask2former, = (CONFIGS / 'mask2former').glob('*.py')
    cases = [
        (SEG_CONFIG, ('mmseg', False, False, 'end2end')),
        (det, ('mmdet', None, False, 'end2end')),
        (mask, ('mmdet', None, True, 'end2end')),
        (cascade, ('mmdet', None, True, 'end2end')),
        (mask2former, ('mmdet', None, False, 'panoptic_end2end')),
        ('no_such_config.py', ('mmdet', None, False, 'end2end')),
    ]
    for config, expected in cases:
        with pytest.raises(RuntimeError, match='stop here'):
            tool.main([str(config)])
        assert seen.pop() == expected, config


def test_segmentor_view_reads_what_mmseg_builds():
    """``segmentor_view``'s ``align_corners`` is that of the segmentor
    mmseg builds from the same config: the decode head's, and a cascade's
    last head's (mmseg's ``CascadeEncoderDecoder``), whichever the first
    head has. ``binary_threshold`` of the built segmentor: None for 5
    classes; for one output channel the head's threshold, mmseg's 0.3
    where the config sets none."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from mmrest.deploy import binary_threshold, segmentor_view
    base = Config.fromfile(SEG_CONFIG).model
    base.backbone.init_cfg = None
    configs = []
    for corners in (False, True):
        cfg = copy.deepcopy(base)
        cfg.decode_head.align_corners = corners
        configs.append(cfg)
        cascade = copy.deepcopy(base)
        cascade.update(type='CascadeEncoderDecoder', num_stages=2)
        cascade.decode_head = [
            dict(base.decode_head, align_corners=not corners),
            dict(base.decode_head, align_corners=corners)
        ]
        configs.append(cascade)
    unset = copy.deepcopy(base)  # mmseg's default where a head sets none
    unset.decode_head.pop('align_corners', None)
    for cfg in configs + [unset]:
        built = MODELS.build(cfg)
        assert segmentor_view(cfg).align_corners is built.align_corners
        assert binary_threshold(built) is None  # 5 classes
    # binary: mmseg's threshold (its default where the config has none)
    for threshold, expected in (None, 0.3), (0.6, 0.6):
        for cfg in configs[:2]:
            cfg = copy.deepcopy(cfg)
            heads = cfg.decode_head if isinstance(cfg.decode_head,
                                                  list) else [cfg.decode_head]
            heads[-1].update(
                num_classes=2, out_channels=1, threshold=threshold)
            assert binary_threshold(MODELS.build(cfg)) == expected
    assert [segmentor_view(c).align_corners
            for c in configs] == [False, False, True, True]


def test_binary_labels_packed_as_mmseg_packs_logits():
    """A binary segmentor's graph labels are packed as mmseg's
    ``postprocess_result`` packs logits: the padding cut off (``left,
    right, top, bottom``; ``img_padding_size`` before ``padding_size``), a
    flip undone, then resized to ``ori_shape``, nearest (by hand)."""
    from mmseg.structures import SegDataSample

    from mmrest.deploy import _pack_as_mmseg
    labels = torch.tensor([[[[9, 9, 9, 9, 9], [9, 0, 1, 9, 9],
                             [9, 2, 3, 9, 9]]]])  # padded 1, 2, 1, 0

    def pack(ori_shape=(2, 2), **meta):
        sample = SegDataSample(metainfo=dict(ori_shape=ori_shape, **meta))
        packed, = _pack_as_mmseg(None, labels.clone(), [sample])
        return packed.pred_sem_seg.data.tolist()

    padded = dict(padding_size=(1, 2, 1, 0))
    assert pack(**padded) == [[[0, 1], [2, 3]]]
    assert pack(
        img_padding_size=(1, 2, 1, 0), padding_size=(0, 0, 0, 0)) == [[[0, 1],
                                                                       [2, 3]]]
    assert pack(
        flip=True, flip_direction='horizontal', **padded) == [[[1, 0], [3, 2]]]
    assert pack(
        flip=True, flip_direction='vertical', **padded) == [[[2, 3], [0, 1]]]
    assert pack(
        flip=False, flip_direction='diagonal', **padded) == [[[0, 1], [2, 3]]]
    assert pack((4, 3), **padded) == [[[0, 0, 1], [0, 0, 1], [2, 2, 3],
                                       [2, 2, 3]]]
    assert pack((1, 5)) == [[[9, 9, 9, 9, 9]]]  # no padding: rows 0
    with pytest.raises(ValueError, match="flip_direction .* 'diagonal'"):
        pack(flip=True, flip_direction='diagonal', **padded)


def nearest_by_hand(labels, image_hw, size):
    """``labels`` of a network input (H' x W') with its padding past the
    resized image's ``image_hw`` (h, w) cut off, resized to ``size``
    (H, W) nearest: row ``i`` is row ``floor(i h / H)``, by hand."""
    (h, w), (H, W) = image_hw, size
    rows, cols = torch.arange(H) * h // H, torch.arange(W) * w // W
    return labels[:h, :w][rows][:, cols]


def test_backend_model_cuts_the_test_padding_off_labels(tmp_path):
    """With ``segmentation`` (labels in the graph) and a data
    preprocessor's ``test_cfg`` that pads the 77 x 96 input of a 128 x 160
    image to 96 x 96, ``build_ort_model``'s map is the graph's labels with
    the padding cut off, resized nearest (source indices by hand);
    mmdeploy's own backend model resizes the padded map, stretching the
    padding over the image (the premise)."""
    from mmrest.deploy import build_ort_model, predict
    processor, model = build_detector(
        SEG_CONFIG,
        'segmentation',
        cfg_options={
            'model.data_preprocessor.test_cfg': dict(size_divisor=32)
        })
    picture = synthetic_image((128, 160))
    data, inputs = make_input(processor, model, picture)
    assert inputs.shape[-2:] == (96, 96)
    onnx_file = export_detector(processor, model, picture, str(tmp_path),
                                'segmentation')
    graph, = onnx_outputs(onnx_file, inputs)
    assert graph.shape == (1, 1, 96, 96)
    want = nearest_by_hand(graph[0, 0], (77, 96), (128, 160))
    assert torch.equal(
        predict(build_ort_model(processor, onnx_file), data), want)
    mmdeploys = predict(processor.build_backend_model([onnx_file]), data)
    assert mmdeploys.shape == want.shape and not torch.equal(mmdeploys, want)


@pytest.mark.parametrize('image,pad', [((96, 96), False), ((128, 160), False),
                                       ((128, 160), True)])
def test_backend_model_labels_binary_segmentors(image, pad, tmp_path):
    """A binary UperNet (one output channel, threshold 0.5) exported with
    ``segmentation-logits``: mmdeploy's rewrite thresholds the logits in
    the graph, and its backend model then takes the argmax of the one
    channel of labels (every pixel 0). ``build_ort_model``'s map is the
    graph's labels resized to the image (nearest: the source row of row
    ``i`` is ``floor(i h / H)``, by hand; 96 x 96 keeps its size, 128 x 160
    is a 77 x 96 input; with ``pad``, the data preprocessor's
    ``test_cfg`` pads it to 96 x 96 and the padding is cut off first, as
    mmseg cuts it off its logits), and the graph's labels are the float64
    segmentor's (logit above 0, the threshold's) wherever that logit is
    farther from 0 than float32 may err: ``ERROR_FACTOR`` times the
    literal float32 path's largest error plus ``float32_floor`` of the
    largest logit (the rule of ``tests/_helpers.py``, pixel by pixel).
    The classifier's weights are drawn wide and its bias centres the
    logits on the image, so that both labels cover many pixels."""
    from mmrest.deploy import binary_threshold, build_ort_model, predict
    options = {
        'model.decode_head.num_classes': 2,
        'model.decode_head.out_channels': 1,
        'model.decode_head.threshold': 0.5
    }
    if pad:
        options['model.data_preprocessor.test_cfg'] = dict(size_divisor=32)
    processor, model = build_detector(
        SEG_CONFIG, 'segmentation-logits', cfg_options=options)
    assert binary_threshold(model) == 0.5
    picture = synthetic_image(image)
    data, inputs = make_input(processor, model, picture)
    conv_seg = model.decode_head.conv_seg
    with torch.no_grad():
        conv_seg.weight.normal_(
            0, 1, generator=torch.Generator().manual_seed(0))
        conv_seg.bias.zero_()
        conv_seg.bias -= mmseg_logits(model, inputs).median()
    exact = mmseg_logits(copy.deepcopy(model).double(), inputs.double())
    with kernels.literal():  # the authors' float32 computation
        literal = mmseg_logits(model, inputs)
    tol = ERROR_FACTOR * (literal.double() - exact).abs().max() + \
        float32_floor(DEPTH) * exact.abs().max()
    exact = exact[0, 0]
    decided = exact.abs() > tol  # pixels float32 must label as float64
    assert decided.float().mean() > 0.99, tol
    assert 0.2 < (exact > 0).float().mean() < 0.8  # both labels, widely
    onnx_file = export_detector(processor, model, picture, str(tmp_path),
                                'segmentation-logits')
    graph, = onnx_outputs(onnx_file, inputs)
    assert graph.dtype == torch.int64 and graph.shape == (1, 1, *exact.shape)
    graph = graph[0, 0]
    assert torch.equal(graph[decided], (exact > 0).long()[decided])
    report = seg_graph_report(
        rewritten_logits(processor, model, data, inputs), graph[None, None],
        0.5)
    assert graph_matches(report), report
    mmdeploys = predict(processor.build_backend_model([onnx_file]), data)
    assert mmdeploys.shape == image and not mmdeploys.any()
    got = predict(build_ort_model(processor, onnx_file), data)
    (h, w), (H, W) = (77, 96) if image == (128, 160) else image, image
    assert graph.shape == ((96, 96) if pad else (h, w))
    assert torch.equal(got, nearest_by_hand(graph, (h, w), (H, W)))
