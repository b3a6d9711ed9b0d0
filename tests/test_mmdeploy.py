"""mmdeploy: a whole detector with a ResT backbone, exported by mmdeploy 1.3.1
for ONNX Runtime (``mmrest.deploy``), gives the PyTorch detector's boxes,
scores, labels and masks at two input sizes (dynamic axes).

The comparison is made against the eager detector run in float64: the ONNX
model's error must be of the size of the eager float32 detector's own error
(the rule of ``tests/_helpers.py``). Random weights score every box about
the same, so which of two near-equal boxes survives NMS, or is cut at a top-k,
would be decided by rounding: the classifiers are set (deterministically,
from eager runs on the test images) so that a few boxes per class clearly
win, and the test first checks that there are few detections and that their
scores are far apart, so that sorted outputs can be compared one to one.
"""
import copy
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
from _helpers import ERROR_FACTOR, float32_floor, random_state_dict
from mmengine.config import Config, ConfigDict

from mmrest import deploy
from mmrest.backbones import kernels
from mmrest.deploy import (GRAPH_TOLERANCE, agrees, build_detector,
                           build_ort_model, compare, export_detector,
                           graph_matches, graph_report, make_input,
                           mmdeploy_torch_shims, onnx_outputs, predict,
                           rewritten_outputs, synthetic_image)

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
# The test pipeline's Resize scale (w, h) and two images, fed as they are at
# 96 x 128 (this one also to export) and at 128 x 96. (Sizes that are not
# multiples of 32 are padded, and mmdeploy's graph clips boxes to the padded
# size where mmdet clips to the image: boxes at the right and bottom edges
# would differ.)
SCALE = (128, 96)
IMAGES = [(96, 128), (128, 96)]
SCORE_THR = 0.05  # the configs' and mmdeploy's score threshold
WINNERS = (3, 17, 42, 60)  # classes given a few clearly winning boxes
# The premise of the comparison: the scores of a class are at least
# SEPARATION times as far apart (and from the threshold) as the eager
# float32 detector's scores are from the float64 one's.
SEPARATION = 10
# Layers between the image and the outputs (ResT-Lite: 4 patch embeddings
# and 8 blocks, ResT v2-T: 4 and 11; FPN: 2; head: up to 5 convolutions or
# 2 fc + 4 mask convs): set the float32 floor, see _helpers.float32_floor.
DEPTH = {'rest-lite': 20, 'restv2-tiny': 23}
# TOOD's head: 6 stacked convolutions, the layer attention's 2 and the
# reduction, then the box regression or the offsets' 2 (a RetinaNet's: 5)
DEEPER = {'tood': 6}
# The weights' seed: with seed 0, TOOD's second image has a score gap only
# 3.5x the eager float32 rounding, under the premise's SEPARATION (seeds 1
# to 5: 12x to 129x; stop 64)
SEEDS = {'tood': 1}


def model_config(name: str, backbone: str = 'rest-lite') -> Config:
    # Faster R-CNN, which no paper pairs with ResT: a user's, the Mask R-CNN
    # config without its mask branch (mmdet's mask-rcnn_r50_fpn is
    # faster-rcnn_r50_fpn plus the mask RoI extractor and head)
    # FCOS likewise: the RetinaNet config with mmdet's FCOS head (its
    # fcos_r50-caffe_fpn_gn-head base: 4 stacked convs, GroupNorm)
    # The authors' converted RetinaNet (retinanet_d2: its _d2 config, the
    # detectron2 head that clips after the NMS, out_norms_feed_next_stage)
    # with ResT-Lite for ResT-Small (the same widths, fewer blocks)
    # TOOD: the RetinaNet config as mmdet's TOOD detector (tood_r50_fpn_1x:
    # its head, 6 stacked convs, and its train and test settings)
    source = dict(
        faster_rcnn='mask_rcnn',
        fcos='retinanet',
        retinanet_d2='retinanet',
        tood='retinanet').get(name, name)
    algorithm = source.replace('_', '-')  # mask_rcnn -> mask-rcnn
    if name == 'retinanet_d2':
        cfg = Config.fromfile(
            str(CONFIGS / source /
                f'{algorithm}_rest-small_fpn_1x_coco_d2.py'))
        cfg.model.backbone.arch = backbone.split('-')[1]
    else:
        cfg = Config.fromfile(
            str(CONFIGS / source / f'{algorithm}_{backbone}_fpn_1x_coco.py'))
    for t in cfg.test_pipeline:
        if t['type'] == 'Resize':
            t['scale'] = SCALE
    if name == 'fcos':
        cfg.model.bbox_head = ConfigDict(
            type='FCOSHead',
            num_classes=80,
            in_channels=256,
            stacked_convs=4,
            feat_channels=256,
            strides=[8, 16, 32, 64, 128],
            norm_cfg=dict(type='GN', num_groups=32, requires_grad=True))
    if name == 'tood':
        from mmengine.hub import get_config
        tood = get_config('mmdet::tood/tood_r50_fpn_1x_coco.py').model
        for key in ('type', 'bbox_head', 'train_cfg', 'test_cfg'):
            cfg.model[key] = tood[key]
    if name == 'faster_rcnn':
        cfg.model.roi_head.mask_roi_extractor = None
        cfg.model.roi_head.mask_head = None
    if source == 'mask_rcnn':
        # Random weights score the anchors about the same: which of two
        # overlapping anchors the RPN's NMS keeps, or its top-k cuts, would
        # be decided by rounding (float32 against float64). Every anchor
        # becomes a proposal instead (the RPN's post-processing is tested
        # on its own in tests/test_deploy_rewrites.py). One anchor shape
        # per place keeps the second stage fast.
        cfg.model.rpn_head.anchor_generator.ratios = [1.0]
        rpn = cfg.model.test_cfg.rpn
        rpn.nms_pre = -1
        rpn.max_per_img = 1024  # the anchors at both sizes (strides 4-64)
        rpn.nms.iou_threshold = 1.
    return cfg


def skip_without_deform_conv():
    """Skip where mmcv has no compiled deformable convolution (the oldest
    stack's mmcv without ops; TOOD's head calls it)."""
    try:
        from mmcv.ops import deform_conv2d
        x = torch.zeros(1, 1, 2, 2)
        deform_conv2d(x, torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 1, 1))
    except (ImportError, NotImplementedError) as e:
        pytest.skip(f'mmcv without its deformable convolution: {e}')


def inputs_of(module, model, datas):
    """The inputs of ``module`` (one per call) in eager runs on ``datas``."""
    inputs = []
    handle = module.register_forward_hook(
        lambda m, args, out: inputs.append(args[0].detach().clone()))
    try:
        for data in datas:
            predict(model, data)
    finally:
        handle.remove()
    return inputs


def separate(weight,
             bias,
             feats,
             num_classes,
             background=None,
             threshold=SCORE_THR):
    """Set the classes ``WINNERS`` of a classifier so that on the test images
    a few boxes of each score above the threshold, with gaps far larger
    than rounding, and the rest well below; every other class is switched
    off (logit -30).

    Class ``WINNERS[i]`` reads one input feature only, the one whose 8
    largest values on image ``i % 2`` are the most spread out relative to
    its largest value on both images, scaled so that these span 6 on the
    logit scale (no score comes near 1, where float32 ties); its
    threshold falls in the middle of the widest gap between the 12 largest
    logits on both images that leaves 2 to 7 boxes of image ``i % 2`` above
    it, so that each image has detections (else the next feature is
    taken). (A dot product with all
    inputs would barely vary from box to box with random weights, and
    scaling it up would amplify its rounding as much as its spread.) Only
    the first anchor of each place scores (anchors at one place overlap and
    would score the same).

    Args:
        weight, bias: The classifier's parameters (a 3x3 convolution or a
            linear layer); output ``a * num_classes + c`` is class ``c`` of
            anchor ``a``.
        feats (list[Tensor]): Its input features on each test image, as
            (places, channels).
        background (int, optional): The softmax background class: logit 0.
        threshold (float): The sigmoid probability that scores the
            threshold (TOOD's score is its square root).
    """
    w = weight.view(-1, num_classes, *weight.shape[1:])
    b = bias.view(-1, num_classes)
    w.zero_()
    b.fill_(-30.)
    if background is not None:
        b[:, background] = 0.
    threshold = math.log(threshold / (1 - threshold))
    every = torch.cat(feats).double()
    highest = every.max(0).values
    chosen = []
    for i, c in enumerate(WINNERS):
        x = feats[i % len(feats)].double()
        top = x.topk(8, dim=0).values
        spread = (top[0] - top[7]) / highest.abs().clamp(min=1e-12)
        for j in spread.argsort(descending=True).tolist():
            if j in chosen:
                continue
            scale = 6. / (highest[j] - top[7, j])
            cut = widest_gap(scale * every[:, j], scale * x[:, j])
            if cut is not None:
                break
        chosen.append(j)
        tap = (0, c, j) + tuple(n // 2 for n in w.shape[3:])
        w[tap] = scale
        b[0, c] = threshold - cut


def widest_gap(logits, mine, ranks=64):
    """The middle of the widest gap between the ``ranks`` largest
    ``logits`` that leaves 2 to 7 of ``mine`` (and at most 12 of all) above
    it, or None."""
    ranked = logits.topk(min(ranks, len(logits))).values
    best = None
    for m in range(2, min(13, len(ranked))):
        cut = (ranked[m - 1] + ranked[m]) / 2
        gap = ranked[m - 1] - ranked[m]
        if 2 <= (mine > cut).sum() <= 7 and (best is None or gap > best[0]):
            best = (gap, cut)
    return None if best is None else best[1]


def set_classifiers(name, model, datas):
    """Make a few boxes per class clearly win (see :func:`separate`)."""
    with torch.no_grad():
        if name in ('retinanet', 'retinanet_d2', 'fcos', 'tood'):
            head = model.bbox_head
            conv = dict(
                fcos='conv_cls', tood='tood_cls').get(name, 'retina_cls')
            conv = getattr(head, conv)
            threshold = SCORE_THR
            if name == 'tood':
                # its class probability 1/2 everywhere (not 1, which
                # the geometric mean could divide by): scores are the
                # square roots of half the classifier's sigmoids
                prob = head.cls_prob_module[-1]
                prob.weight.zero_()
                prob.bias.zero_()
                threshold = 2 * SCORE_THR**2
            if name == 'fcos':
                # centerness 1 everywhere (sigmoid(30)): scores are the
                # classifier's, whose gaps to the threshold decide (the
                # product with other factors: tests/test_deploy_rewrites.py)
                head.conv_centerness.weight.zero_()
                head.conv_centerness.bias.fill_(30.)
            feats = inputs_of(conv, model, datas)  # per image and level
            levels = len(feats) // len(datas)
            feats = [
                torch.cat([
                    f.permute(0, 2, 3, 1).flatten(0, 2)
                    for f in feats[i:i + levels]
                ]) for i in range(0, len(feats), levels)
            ]
            separate(
                conv.weight,
                conv.bias,
                feats,
                head.cls_out_channels,
                threshold=threshold)
        else:
            head = model.roi_head.bbox_head
            # each class keeps its own box regression: the graph decodes
            # every class's box as mmdet does (mmrest.deploy_rewrites)
            fc = head.fc_cls
            separate(
                fc.weight,
                fc.bias,
                inputs_of(fc, model, datas),
                head.num_classes + 1,
                background=head.num_classes)


@pytest.fixture
def float64_detector(monkeypatch):
    """Let the detector run in float64. mmcv's compiled NMS takes float32
    only: it decides on float32 copies of the boxes and scores (the scores
    are far apart, checked by the test, so this changes no decision).
    mmdet pastes masks with a float32 sampling grid: it is cast to the
    masks' dtype."""
    import importlib

    import torch.nn.functional as F
    ext = importlib.import_module('mmcv.ops.nms').ext_module
    nms, grid_sample = ext.nms, F.grid_sample

    def nms_any_dtype(boxes, scores, **kwargs):
        return nms(boxes.float(), scores.float(), **kwargs)

    def grid_sample_any_dtype(input, grid, *args, **kwargs):
        return grid_sample(input, grid.to(input.dtype), *args, **kwargs)

    monkeypatch.setattr(ext, 'nms', nms_any_dtype)
    monkeypatch.setattr(F, 'grid_sample', grid_sample_any_dtype)


def sorted_by_class_and_score(instances):
    """By label, then by decreasing score (scores are below 1)."""
    key = instances.labels.double() * 2 - instances.scores.double()
    return instances[torch.argsort(key, stable=True)]


def relative_errors(got, eager, exact):
    """Errors of the ONNX and of the eager float32 outputs against the
    float64 detector, relative to the float64 outputs' norm."""
    exact = exact.double()
    norm = exact.norm()
    return (((got.double() - exact).norm() / norm).item(),
            ((eager.double() - exact).norm() / norm).item())


def assert_same_detections(got, eager, exact, floor, where):
    """ONNX Runtime's detections (``got``) are the float64 detector's
    (``exact``) as closely as the eager float32 detector's (``eager``),
    all sorted by class and score: the premise first, a few detections
    whose scores lie far apart (and from the threshold) for the rounding,
    then the same labels, and scores and boxes within the float32 rule
    (``floor``: :func:`float32_floor` of the detector's depth)."""
    n = len(exact)
    assert 2 <= n < 50, f'{where}: {n} detections'
    assert len(eager) == n, f'{where}: float32 {len(eager)}, float64 {n}'
    rounding = (eager.scores.double() - exact.scores).abs().max()
    # (NMS and the threshold compare scores of one class only)
    same = exact.labels[:-1] == exact.labels[1:]
    gaps = torch.cat([(exact.scores[:-1] - exact.scores[1:])[same],
                      exact.scores - SCORE_THR])
    assert gaps.min() > SEPARATION * rounding, (
        f'{where}: scores {exact.scores} too close for rounding '
        f'{rounding:.2g}')
    assert len(got) == n, f'{where}: ONNX {len(got)}, PyTorch {n}'
    assert torch.equal(got.labels, exact.labels), where
    assert torch.equal(eager.labels, exact.labels), where
    for key in ('scores', 'bboxes'):
        err, err_eager = relative_errors(got[key], eager[key], exact[key])
        bound = ERROR_FACTOR * err_eager + floor
        assert err <= bound, (
            f'{where}: {key} off by {err:.3g} relative to float64, more '
            f'than {ERROR_FACTOR} x the eager float32 error '
            f'{err_eager:.3g} + {floor:.3g}')


def test_shims_are_scoped():
    import torch.onnx.symbolic_opset9 as opset9
    export = torch.onnx.export
    had_cast = hasattr(opset9, '_cast_Long')
    with mmdeploy_torch_shims():
        assert torch.onnx.export is not export
        assert torch.onnx.export.__wrapped__ is export
        assert hasattr(opset9, '_cast_Long')
    assert torch.onnx.export is export
    assert hasattr(opset9, '_cast_Long') == had_cast
    if not had_cast:  # one put in by someone else meanwhile stays

        def theirs(g, x, non_blocking=False):
            return x

        with mmdeploy_torch_shims():
            opset9._cast_Long = theirs
        try:
            assert opset9._cast_Long is theirs
        finally:
            del opset9._cast_Long
    with pytest.raises(KeyError):  # undone on errors too
        with mmdeploy_torch_shims():
            raise KeyError
    assert torch.onnx.export is export


@pytest.mark.parametrize('has_dynamo', [True, False])
def test_shim_sets_dynamo_only_where_torch_has_it(monkeypatch, has_dynamo):
    """Inside the shims, torch.onnx.export gets dynamo=False where it takes
    the argument (torch >= 2.5) and no such argument before; an explicit
    dynamo= is passed on as it is."""
    from mmrest.utils import torch_compat
    monkeypatch.setattr(torch_compat, 'ONNX_EXPORT_HAS_DYNAMO', has_dynamo)
    called = []
    monkeypatch.setattr(torch.onnx, 'export', lambda *a, **k: called.append(k))
    with mmdeploy_torch_shims():
        torch.onnx.export('model', 'args', 'file', opset_version=11)
        torch.onnx.export('model', 'args', 'file', dynamo=True)
    assert called[0] == (
        dict(opset_version=11, dynamo=False) if has_dynamo else dict(
            opset_version=11))
    assert called[1] == dict(dynamo=True)


def test_missing_packages_are_named(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, 'find_spec', lambda name, *a: None
        if name in ('mmdeploy', 'onnxruntime') else find_spec(name, *a))
    with pytest.raises(ImportError, match='needs mmdeploy, onnxruntime'):
        deploy.check_requirements()
    with pytest.raises(ImportError, match='mmdeploy'):
        build_detector(
            str(CONFIGS / 'retinanet' / 'retinanet_rest-lite_fpn_1x_coco.py'))


def test_predict_normalises_the_image_once():
    """``predict`` on ``make_input``'s data (already through the data
    preprocessor) feeds the backbone what mmdet's own ``test_step`` feeds
    it from the pipeline's raw data: the image normalised once. (It ran
    ``test_step`` on the normalised data, normalising it twice.)"""
    processor, model = build_detector(model_config('retinanet'))
    image = synthetic_image((96, 128))
    seen = []
    hook = model.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone()))
    try:
        data, inputs = make_input(processor, model, image)
        predict(model, data)
        raw, _ = processor.create_input(image, None)
        with torch.no_grad():
            model.test_step(raw)
    finally:
        hook.remove()
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], seen[1])
    torch.testing.assert_close(seen[0], inputs)


def test_build_detector_from_a_file_and_a_checkpoint(tmp_path):
    """A config file's detector with a whole-detector checkpoint's weights
    (keys the detector does not have are passed over); a missing config
    file and a checkpoint lacking weights are errors that name them."""
    from mmrest.checkpoint import CheckpointError
    path = str(CONFIGS / 'retinanet' / 'retinanet_rest-lite_fpn_1x_coco.py')
    with pytest.raises(FileNotFoundError, match='no_such_config.py'):
        build_detector(str(tmp_path / 'no_such_config.py'))
    _, model = build_detector(path)
    state = random_state_dict(model)
    torch.save(dict(state, extra=torch.zeros(1)), tmp_path / 'whole.pth')
    _, loaded = build_detector(path, checkpoint=str(tmp_path / 'whole.pth'))
    assert not loaded.training
    assert all(
        torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    del state['bbox_head.retina_cls.weight']
    torch.save(state, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match='partial.pth.*lacks 1'):
        build_detector(path, checkpoint=str(tmp_path / 'partial.pth'))


def test_deploy_cfg_errors():
    with pytest.raises(ValueError, match="task must be one of"):
        deploy.ort_deploy_cfg('pose-detection')
    with pytest.raises(FileNotFoundError, match='neither'):
        deploy.load_deploy_cfg('no_such_deploy_cfg.py')
    for bad in (10, 16.0, '16', True):
        with pytest.raises(ValueError, match=f'at least 11.*got {bad!r}'):
            deploy.ort_deploy_cfg('detection', bad)
        with pytest.raises(ValueError, match=f'at least 11.*got {bad!r}'):
            deploy.load_deploy_cfg('detection', bad)
    cfg = deploy.load_deploy_cfg('instance-seg')
    assert cfg.onnx_config.opset_version == 11  # mmdeploy's
    assert deploy.load_deploy_cfg(cfg, 16).onnx_config.opset_version == 16
    assert cfg.onnx_config.opset_version == 11  # a copy was changed
    assert deploy.ort_deploy_cfg('detection',
                                 17)['onnx_config']['opset_version'] == 17
    assert cfg.onnx_config.output_names == ['dets', 'labels', 'masks']
    # what mmdeploy's base onnx_config sets (configs/_base_/onnx_config.py)
    # for its own tools: weights in the file, not as inputs; optimised
    assert (cfg.onnx_config.export_params,
            cfg.onnx_config.keep_initializers_as_inputs,
            cfg.onnx_config.optimize) == (True, False, True)
    assert cfg.onnx_config.dynamic_axes['input'] == {
        0: 'batch',
        2: 'height',
        3: 'width'
    }
    # mmdeploy's configs/mmseg/segmentation_onnxruntime_dynamic.py (labels),
    # and with its with_argmax=False (logits)
    for task, argmax in ('segmentation', True), ('segmentation-logits', False):
        seg = deploy.load_deploy_cfg(task)
        assert seg.codebase_config == dict(
            type='mmseg', task='Segmentation', with_argmax=argmax)
        assert seg.onnx_config.output_names == ['output']
        assert seg.onnx_config.dynamic_axes == {
            k: {
                0: 'batch',
                2: 'height',
                3: 'width'
            }
            for k in ('input', 'output')
        }


# mmdeploy's opset 11 with both backbones; 16 (RoIAlign with half-pixel
# coordinates, tools/deploy.py --opset) once; Faster R-CNN (its box head
# through mmrest's rewrite with no mask head, a detection task) at 11 and
# at 17 (the highest opset of torch 2.1's TorchScript exporter, its
# default; torch 2.13's: 20); FCOS, ResT-Lite at 11; opsets 18 (ReduceMean's
# axes an input: mmrest's LayerNorm symbolic) and 20, skipped on torch 2.1
@pytest.mark.parametrize('name,backbone,opset', [
    ('retinanet', 'rest-lite', 11),
    ('retinanet', 'restv2-tiny', 11),
    ('mask_rcnn', 'rest-lite', 11),
    ('mask_rcnn', 'restv2-tiny', 11),
    ('mask_rcnn', 'rest-lite', 16),
    ('faster_rcnn', 'rest-lite', 11),
    ('faster_rcnn', 'restv2-tiny', 17),
    ('fcos', 'rest-lite', 11),
    ('mask_rcnn', 'rest-lite', 18),
    ('retinanet', 'restv2-tiny', 20),
    ('retinanet_d2', 'rest-lite', 11),
    ('tood', 'rest-lite', 11),
])
def test_mmdeploy_onnxruntime_matches_pytorch(name, backbone, opset, tmp_path,
                                              float64_detector):
    if opset > deploy.max_opset():
        pytest.skip(f'opset {opset} is above torch {torch.__version__}\'s '
                    f'exporter ({deploy.max_opset()})')
    if name == 'tood':
        skip_without_deform_conv()
    task = 'instance-seg' if name == 'mask_rcnn' else 'detection'
    deploy_cfg = deploy.load_deploy_cfg(task, opset)
    torch.manual_seed(SEEDS.get(name, 0))
    processor, model = build_detector(model_config(name, backbone), deploy_cfg)
    if name in ('mask_rcnn', 'faster_rcnn'):
        assert model.roi_head.with_mask == (name == 'mask_rcnn'), name
    images = [synthetic_image(hw, seed) for seed, hw in enumerate(IMAGES)]
    made = [make_input(processor, model, img) for img in images]
    datas = [data for data, _ in made]
    set_classifiers(name, model, datas)
    onnx_file = export_detector(processor, model, images[0], str(tmp_path),
                                deploy_cfg)
    assert 'forward' not in model.__dict__  # mmdeploy's forward was removed
    import onnx
    graph = onnx.load(onnx_file).graph
    domains = {node.domain for node in graph.node}
    assert domains <= {'', 'ai.onnx'}, f'custom operators: {domains}'
    # the image is the only input: the weights are initializers
    assert [i.name for i in graph.input] == ['input']
    assert len(graph.initializer) > 0
    ort_model = build_ort_model(processor, onnx_file)
    exact_model = copy.deepcopy(model).double()
    floor = float32_floor(DEPTH[backbone] + DEEPER.get(name, 0))
    shapes = set()
    for img, data in zip(images, datas):
        inputs = data['inputs'][0]
        shapes.add(tuple(inputs.shape[-2:]))
        with kernels.literal():  # the authors' float32 computation
            eager = sorted_by_class_and_score(predict(model, data))
        exact = sorted_by_class_and_score(
            predict(exact_model, dict(data, inputs=data['inputs'].double())))
        got = sorted_by_class_and_score(predict(ort_model, data))
        where = f'{name} {backbone} at {tuple(inputs.shape[-2:])}'
        assert_same_detections(got, eager, exact, floor, where)
        n = len(exact)
        if name == 'mask_rcnn':
            ref = exact.masks.bool()
            # (random mask heads: most masks, not all, have pixels)
            assert 2 * ref.flatten(1).any(1).sum() >= len(ref) and \
                (~ref).any(), f'{where}: most masks empty, or all full'
            # a pixel flips only where the mask probability lies within
            # rounding of 0.5: as few as float32 rounding flips in the
            # eager model, plus one per instance
            wrong = (got.masks.bool() != ref).sum().item()
            wrong_eager = (eager.masks.bool() != ref).sum().item()
            assert wrong <= ERROR_FACTOR * wrong_eager + n, (
                f'{where}: {wrong} mask pixels differ from float64 (eager '
                f'float32: {wrong_eager}) of {ref.sum().item()}')
    assert len(shapes) == 2, shapes

    check_graph(processor, model, made, onnx_file, tmp_path, BROKEN[name],
                opset)


#: The bias that :func:`check_graph` moves by 0.5 to break a graph: the box
#: regression's (RetinaNet, FCOS, Faster R-CNN) or the mask logits' (Mask
#: R-CNN).
BROKEN = dict(
    retinanet='bbox_head.retina_reg.bias',
    retinanet_d2='bbox_head.retina_reg.bias',
    fcos='bbox_head.conv_reg.bias',
    tood='bbox_head.tood_reg.bias',
    faster_rcnn='roi_head.bbox_head.fc_reg.bias',
    mask_rcnn='roi_head.mask_head.conv_logits.bias')


def broken_copy(onnx_file, pattern, tmp_path):
    """A copy of ``onnx_file`` in which the initializers whose names match
    ``pattern`` (at least one) moved by 0.5; its path."""
    import onnx.numpy_helper
    proto = onnx.load(onnx_file)
    biases = [
        t for t in proto.graph.initializer if re.fullmatch(pattern, t.name)
    ]
    assert biases, pattern
    for bias in biases:
        bias.CopyFrom(
            onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(bias) + 0.5, bias.name))
    broken = str(tmp_path / 'broken.onnx')
    onnx.save(proto, broken)
    return broken


def check_graph(processor, model, made, onnx_file, tmp_path, reg, opset):
    """tools/deploy.py's first check: the graph's outputs are those of the
    detector with mmdeploy's rewrites, run in PyTorch; not those of a
    graph whose bias ``reg`` moved by 0.5. (mmdeploy's zero-score padding
    row is in both outputs; ``graph_report`` leaves it out. Its mask comes
    from an empty RoI: from opset 16 the same in both, before 16 not, see
    test_roi_align_of_rois_under_a_feature_pixel.)"""
    broken = broken_copy(onnx_file, re.escape(reg), tmp_path)
    for data, inputs in made:
        expected = rewritten_outputs(processor, model, data, inputs)
        side = max(inputs.shape[-2:])
        got = onnx_outputs(onnx_file, inputs)
        report = graph_report(expected, got, side)
        assert graph_matches(report), report
        if len(expected) == 3 and opset >= 16:  # the padding row included
            assert (expected[2] - got[2]).abs().max() <= GRAPH_TOLERANCE
        assert report['num_expected'] > 0
        assert ('max_mask_diff' in report) == (len(expected) == 3)
        assert not graph_matches(
            graph_report(expected, onnx_outputs(broken, inputs), side))


def test_tood_exports_with_mmrests_rewrites_only(tmp_path, monkeypatch):
    """The premise of ``exportable_tood``: without it, mmdeploy's export of
    a whole TOOD fails, on mmcv's deformable convolution (mmdeploy's
    symbolic takes TOOD's integer padding for a pair) and, with the
    sampling computed as mmrest's, on mmdet's autograd function of the
    geometric mean (within mmdeploy's export only)."""
    from mmdet.models.dense_heads.tood_head import TOODHead

    from mmrest import deploy_rewrites as rewrites
    skip_without_deform_conv()
    deploy_cfg = deploy.load_deploy_cfg('detection')
    processor, model = build_detector(model_config('tood'), deploy_cfg)
    image = synthetic_image(IMAGES[0])
    switch = rewrites.exportable_tood
    monkeypatch.setattr(rewrites, 'exportable_tood', lambda: switch(False))
    with pytest.raises(TypeError, match="'int' object is not iterable"):
        export_detector(processor, model, image, str(tmp_path), deploy_cfg)
    monkeypatch.setattr(
        TOODHead, 'deform_sampling',
        lambda self, feat, offset: rewrites.deform_sampling(feat, offset))
    with pytest.raises(RuntimeError, match='Dangling node reference'):
        export_detector(processor, model, image, str(tmp_path), deploy_cfg)


@pytest.mark.parametrize('opset', [11, 16])
def test_roi_align_of_rois_under_a_feature_pixel(opset, tmp_path):
    """mmcv's aligned RoIAlign as mmdeploy exports it for ONNX Runtime:
    from opset 16 ONNX's RoiAlign with half-pixel coordinates, the same as
    mmcv's for every RoI; before 16 the RoIs shifted by half a pixel in the
    graph and ONNX Runtime's RoiAlign, which widens a RoI narrower than one
    feature pixel to one (so mmdeploy's zero padding box gets another mask
    in the graph than in PyTorch, docs/deployment.md).

    Exported with mmdeploy's own ``export``, as :func:`export_detector`
    does: its rewriters include turning off torch's inlining of autograd
    functions, without which torch 2.1 fails to export mmcv's RoIAlign when
    it runs the ops shim's traceable PyTorch code (the oldest stack).
    """
    import onnxruntime
    from mmcv.ops import roi_align
    from mmdeploy.apis.onnx import export

    class RoIAlign(torch.nn.Module):

        def forward(self, x, rois):  # as a mask head's, at stride 4
            return roi_align(x, rois, (7, 7), 0.25, 0, 'avg', True)

    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 16)
    sides = torch.tensor([0., 0.5, 0.99, 1., 2., 4.])  # in feature pixels
    rois = torch.stack([
        torch.zeros_like(sides),
        *[torch.full_like(sides, 20.)] * 2,
        *[20. + 4 * sides] * 2,
    ], 1)
    ref = RoIAlign()(x, rois)
    exact = RoIAlign()(x.double(), rois.double())
    cfg = deploy.load_deploy_cfg('instance-seg', opset)
    prefix = str(tmp_path / 'roi_align')
    with torch.no_grad(), mmdeploy_torch_shims():
        export(
            RoIAlign(), (x, rois),
            prefix,
            backend='onnxruntime',
            context_info={'deploy_cfg': cfg},
            input_names=['x', 'rois'],
            opset_version=opset)
    session = onnxruntime.InferenceSession(
        prefix + '.onnx', providers=['CPUExecutionProvider'])
    got = torch.from_numpy(
        session.run(None, dict(x=x.numpy(), rois=rois.numpy()))[0])
    # as accurate as mmcv's float32 RoIAlign, element by element: every RoI
    # from opset 16, the RoIs of at least one pixel before (each output a
    # sum of 4 bilinear terms: one sample per bin, no RoI spans 7 pixels)
    same = torch.ones_like(sides, dtype=torch.bool) if opset >= 16 else \
        sides >= 1
    err, err_mmcv = ((y[same].double() - exact[same]).abs().max().item()
                     for y in (got, ref))
    bound = ERROR_FACTOR * err_mmcv + float32_floor(terms=4) * \
        exact[same].abs().max().item()
    assert err <= bound, f'opset {opset}: {err:.3g} against float64, ' \
        f'more than {ERROR_FACTOR} x mmcv\'s {err_mmcv:.3g} + the floor'
    if opset < 16:  # the others off by about the features' size (unit normal)
        diff = (got - ref).abs().flatten(1).max(1).values
        assert diff[~same].min() > 1e-2, diff


def test_export_detector_calls_mmdeploys_export_as_torch2onnx(
        monkeypatch, tmp_path):
    """``export_detector`` hands mmdeploy's ``export`` what mmdeploy's own
    ``torch2onnx`` hands it (its file name from ``save_file``, the opset,
    names and dynamic axes of the deploy config, ``predict`` mode, and
    mmdeploy's defaults where a deploy config has no entry: opset 11,
    initializers as inputs, ``end2end``), with ``optimize`` off (the wheel
    has no optimiser); mmdet's post-processing, torch's pooling, mmseg's
    upsampling, TOOD's export and the exact GroupNorm switched on during
    the export only, the first unless
    ``mmdet_nms`` is False; mmdeploy's ``forward`` left on the model
    removed. (mmdeploy's ``export`` stands in here: the real one runs in the
    tests above.)"""
    import mmdeploy.apis.onnx

    from mmrest import deploy_rewrites
    calls = []

    def export(model, inputs, **kwargs):
        calls.append(
            dict(
                kwargs, inputs=inputs, switched=dict(deploy_rewrites._SWITCH)))
        model.forward = None  # mmdeploy leaves its rewritten forward bound

    monkeypatch.setattr(mmdeploy.apis.onnx, 'export', export)
    processor, model = build_detector(model_config('retinanet'), 'detection')
    image = synthetic_image((64, 96))
    _, inputs = make_input(processor, model, image)
    axes = {0: 'batch', 1: 'num_dets'}
    given = deploy.ort_deploy_cfg('detection', 12)
    given['onnx_config']['save_file'] = 'retina.onnx'
    bare = deploy.ort_deploy_cfg('detection')
    for key in ('opset_version', 'keep_initializers_as_inputs', 'save_file'):
        del bare['onnx_config'][key]
    for cfg, nms, name, opset, keep in [
        ('detection', True, 'end2end', 11, False),
        (given, False, 'retina', 12, False),
        (bare, True, 'end2end', 11, True),
    ]:
        out = tmp_path / f'out{len(calls)}'
        kwargs = {} if nms else dict(mmdet_nms=False)
        got = export_detector(processor, model, image, str(out), cfg, **kwargs)
        assert got == str(out / name) + '.onnx' and out.is_dir()
        call = calls[-1]
        torch.testing.assert_close(call.pop('inputs'), inputs)
        metas = call.pop('input_metas')
        assert metas['mode'] == 'predict' and len(metas['data_samples']) == 1
        assert call.pop('context_info')['deploy_cfg'].onnx_config == \
            deploy.load_deploy_cfg(cfg).onnx_config
        assert call == dict(
            output_path_prefix=str(out / name),
            backend='onnxruntime',
            input_names=['input'],
            output_names=['dets', 'labels'],
            opset_version=opset,
            dynamic_axes=dict(
                input={
                    0: 'batch',
                    2: 'height',
                    3: 'width'
                },
                dets=axes,
                labels=axes),
            keep_initializers_as_inputs=keep,
            optimize=False,
            switched=dict(
                mmdet=nms, pooling=True, upsample=True, tood=True, norm=True))
        assert 'forward' not in model.__dict__
    assert deploy_rewrites._SWITCH == dict(
        mmdet=False, pooling=False, upsample=False, tood=False, norm=False)


@pytest.mark.parametrize('padding,align_corners', [('zeros', False),
                                                   ('border', True)])
def test_onnx_outputs_runs_mmdeploys_custom_operators(padding, align_corners,
                                                      tmp_path):
    """mmdeploy exports ``grid_sample`` (DINO's deformable attention) as
    its ``mmdeploy::grid_sampler``, which plain ONNX Runtime does not know:
    ``onnx_outputs`` (the graph check of ``tools/deploy.py``) registers the
    operator library the mmdeploy wheel ships, as mmdeploy's backend model
    does, and computes ``F.grid_sample`` as accurately as torch's float32
    does (each output a sum of 4 bilinear terms)."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    grid = torch.rand(2, 4, 6, 2) * 2.2 - 1.1  # some points outside
    node = helper.make_node(
        'grid_sampler', ['x', 'grid'], ['y'],
        domain='mmdeploy',
        interpolation_mode=0,
        padding_mode=['zeros', 'border'].index(padding),
        align_corners=int(align_corners))
    graph = helper.make_graph(
        [node],
        'grid_sampler',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(grid.numpy(), 'grid')])
    path = str(tmp_path / 'grid_sampler.onnx')
    onnx.save(
        helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid('', 11),
                helper.make_opsetid('mmdeploy', 1)
            ]), path)
    with pytest.raises(Exception, match='grid_sampler'):  # the premise
        onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert deploy.mmdeploy_ops_library() is not None
    got, = onnx_outputs(path, x)

    def sample(x, grid):
        return torch.nn.functional.grid_sample(
            x, grid, 'bilinear', padding, align_corners=align_corners)

    ref, exact = sample(x, grid), sample(x.double(), grid.double())
    err, err_torch = ((y.double() - exact).abs().max().item()
                      for y in (got, ref))
    bound = ERROR_FACTOR * err_torch + float32_floor(terms=4) * \
        exact.abs().max().item()
    assert err <= bound, f'{err:.3g} against float64 (torch {err_torch:.3g})'


def test_mmdeploy_ops_library_needs_mmdeploy_and_the_file(monkeypatch):
    """None without mmdeploy, or where mmdeploy's search finds no file (it
    returns ``''``) or names one that is not there."""
    from mmdeploy.backend.onnxruntime import init_plugins
    path = deploy.mmdeploy_ops_library()
    assert path == init_plugins.get_ops_path()
    for missing in ('', path + '.missing'):
        monkeypatch.setattr(init_plugins, 'get_ops_path', lambda: missing)
        assert deploy.mmdeploy_ops_library() is None
    monkeypatch.undo()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, 'find_spec', lambda name, *a: None
        if name == 'mmdeploy' else find_spec(name, *a))
    assert deploy.mmdeploy_ops_library() is None


def export_with_mmdeploys_operator(processor, model, image, tmp_path,
                                   deploy_cfg):
    """``export_detector``'s file, which holds mmdeploy's ``grid_sampler``
    and standard operators only; its backend model; a float64 copy of
    ``model``."""
    import onnx
    onnx_file = export_detector(processor, model, image, str(tmp_path),
                                deploy_cfg)
    domains = {node.domain for node in onnx.load(onnx_file).graph.node}
    assert domains == {'', 'mmdeploy'}, domains
    return (onnx_file, build_ort_model(processor, onnx_file),
            copy.deepcopy(model).double())


# DINO (configs/dino): images large enough for its 900 queries (1343 places
# of its four levels at 224 x 288), fed as they are and exported at the
# first; the last decoder layer's classifier is set by :func:`separate`.
DINO_SCALE = (288, 224)
DINO_IMAGES = [(224, 288), (288, 224)]
# ResT v2-T and DINO's 6 encoder and 6 decoder layers
DINO_DEPTH = DEPTH['restv2-tiny'] + 12


def test_dino_onnxruntime_matches_pytorch(tmp_path, float64_detector):
    """DINO with ResT v2-T (configs/dino), exported by mmdeploy (its DETR
    rewrites; deformable attention through ``mmdeploy::grid_sampler``),
    gives mmdet's detections at two sizes, as closely as the eager float32
    detector, and its graph computes mmdeploy's rewritten model.

    DINO's encoder ranks its 1343 places by their best class score and
    pairs the 900 best, in order, with its 900 learnt content queries:
    two places within rounding of each other (random weights have gaps of
    2e-7) swap content queries between float32 and float64, which changes
    every output through the decoder's self-attention. The content queries
    are made equal, so that the order of the chosen places does not matter
    (their set does: the test checks that the 900th and 901st scores are far
    apart); the last classifier is set so that a few detections clearly
    win, and the detections scored above the threshold are compared (DETR
    keeps its 300 best, the rest near ties)."""
    cfg = Config.fromfile(
        str(CONFIGS / 'dino' / 'dino-4scale_restv2-tiny_8xb2-12e_coco.py'))
    for t in cfg.test_pipeline:
        if t['type'] == 'Resize':
            t['scale'] = DINO_SCALE
    deploy_cfg = deploy.load_deploy_cfg('detection')
    torch.manual_seed(0)
    processor, model = build_detector(cfg, deploy_cfg)
    head, queries = model.bbox_head, model.num_queries
    with torch.no_grad():
        model.query_embedding.weight[:] = model.query_embedding.weight[0]
    images = [synthetic_image(hw, seed) for seed, hw in enumerate(DINO_IMAGES)]
    made = [make_input(processor, model, img) for img in images]
    datas = [data for data, _ in made]
    last = head.cls_branches[model.decoder.num_layers - 1]
    with torch.no_grad():
        separate(last.weight, last.bias,
                 [x[0] for x in inputs_of(last, model, datas)],
                 head.cls_out_channels)
    onnx_file, ort_model, exact_model = export_with_mmdeploys_operator(
        processor, model, images[0], tmp_path, deploy_cfg)
    floor = float32_floor(DINO_DEPTH)

    def above_threshold(instances):
        return sorted_by_class_and_score(
            instances[instances.scores > SCORE_THR])

    for img, data in zip(images, datas):
        where = f'DINO at {tuple(data["inputs"].shape[-2:])}'
        ranked = []  # the encoder's best class score of each place
        for m in (model, exact_model):
            encoder_cls = m.bbox_head.cls_branches[model.decoder.num_layers]
            hook = encoder_cls.register_forward_hook(
                lambda mod, args, out: ranked.append(out.max(-1)[0][0]))
            try:
                with kernels.literal():  # the authors' float32 computation
                    if m is model:
                        eager = above_threshold(predict(model, data))
                    else:
                        exact = above_threshold(
                            predict(m,
                                    dict(data,
                                         inputs=data['inputs'].double())))
            finally:
                hook.remove()
        rounding = (ranked[0].double() - ranked[1]).abs().max()
        best = ranked[1].sort(descending=True).values
        assert best[queries - 1] - best[queries] > SEPARATION * rounding, (
            f'{where}: the {queries}th and next places within rounding')
        got = above_threshold(predict(ort_model, data))
        assert_same_detections(got, eager, exact, floor, where)

    # the graph against mmdeploy's rewritten model: the rows above the
    # threshold (first: the graph's detections are sorted by score), and
    # not a graph whose box regressions' last bias moved by 0.5 (the
    # exporter keeps one of the equal initial ones, under the first name)
    broken = broken_copy(onnx_file, r'bbox_head\.reg_branches\.\d+\.4\.bias',
                         tmp_path)
    for data, inputs in made:
        expected = rewritten_outputs(processor, model, data, inputs)
        n = int((expected[0][0, :, 4] > SCORE_THR).sum())
        side = max(inputs.shape[-2:])

        def winners(outputs):
            return [out[:, :n] for out in outputs]

        report = graph_report(
            winners(expected), winners(onnx_outputs(onnx_file, inputs)), side)
        assert graph_matches(report) and report['num_expected'] == n > 0, \
            report
        assert not graph_matches(
            graph_report(
                winners(expected), winners(onnx_outputs(broken, inputs)),
                side))


# Mask2Former (configs/mask2former), fed as they are at 64 x 96 (also to
# export) and 96 x 64: ResT v2-T, the pixel decoder's 6 layers and the
# transformer decoder's 9.
M2F_SCALE = (96, 64)
M2F_IMAGES = [(64, 96), (96, 64)]
M2F_DEPTH = DEPTH['restv2-tiny'] + 15
# Random weights whose masked attention has no mask logit near 0 at these
# sizes: the closest 47x and 66x the float32 rounding away (Intel Xeon;
# seeds 0 to 7 give 0.3x to 99x, four of them under 10x at one size).
M2F_SEED = 4
# Mask2Former's instances kept from its 100 best (query, class) pairs: the
# winners of the classifier set by :func:`separate` score above this, the
# other pairs about exp(-30).
M2F_KEPT = 1e-3
# The lowest box and mask IoU of a winner with the float64 detector's
MASK_IOU = 0.9


def record_attention_decisions(head, values):
    """Record, at each of ``head``'s (a Mask2Former head's) predictions,
    the mask logits its masked attention thresholds at 0 (sigmoid 0.5)."""
    forward = head._forward_head

    def recording(decoder_out, mask_feature, size):
        out = forward(decoder_out, mask_feature, size)
        values.append(
            torch.nn.functional.interpolate(
                out[1], size, mode='bilinear', align_corners=False))
        return out

    head._forward_head = recording


def test_mask2former_onnxruntime_matches_pytorch(tmp_path, float64_detector):
    """Mask2Former with ResT v2-T (configs/mask2former), exported by mmdeploy
    with its MaskFormer config (``panoptic-seg``: the graph gives the
    queries' class and mask logits, mmdeploy's backend model runs mmdet's
    fusion head on them), at two sizes: the graph's logits are as close to
    the float64 head's as the eager float32 head's, and its instances are
    mmdet's; the graph check passes, and fails on a broken graph.

    The masked attention attends where a query's mask logit is positive: a
    logit within rounding of 0 would flip between float32 and float64
    (checked: none is). The classifier is set so that a few (query, class)
    pairs clearly win (:func:`separate`, the background class at 0)."""
    cfg = Config.fromfile(
        str(CONFIGS / 'mask2former' /
            'mask2former_restv2-tiny_8xb2-lsj-50e_coco.py'))
    for t in cfg.test_pipeline:
        if t['type'] == 'Resize':
            t['scale'] = M2F_SCALE
    deploy_cfg = deploy.load_deploy_cfg('panoptic-seg')
    assert deploy_cfg.onnx_config.opset_version == 13  # mmdeploy's
    torch.manual_seed(M2F_SEED)
    processor, model = build_detector(cfg, deploy_cfg)
    head = model.panoptic_head
    images = [synthetic_image(hw, seed) for seed, hw in enumerate(M2F_IMAGES)]
    made = [make_input(processor, model, img) for img in images]
    datas = [data for data, _ in made]
    with torch.no_grad():
        feats = inputs_of(head.cls_embed, model, datas)
        calls = len(feats) // len(datas)  # one per decoder layer, and one
        separate(
            head.cls_embed.weight,
            head.cls_embed.bias, [f[0] for f in feats[calls - 1::calls]],
            head.num_classes + 1,
            background=head.num_classes)
    onnx_file, ort_model, exact_model = export_with_mmdeploys_operator(
        processor, model, images[0], tmp_path, deploy_cfg)
    floor = float32_floor(M2F_DEPTH)

    for data, inputs in made:
        where = f'Mask2Former at {tuple(inputs.shape[-2:])}'
        decisions = [[], []]
        for m, values in zip((model, exact_model), decisions):
            record_attention_decisions(m.panoptic_head, values)
        try:
            with torch.no_grad(), kernels.literal():
                logits = head.predict(
                    model.extract_feat(inputs), data['data_samples'])
                exact_logits = exact_model.panoptic_head.predict(
                    exact_model.extract_feat(inputs.double()),
                    data['data_samples'])
        finally:
            for m in (model, exact_model):
                del m.panoptic_head._forward_head
        margin = min(v.abs().min() for v in decisions[1])
        rounding = max(
            (a.double() - b).abs().max() for a, b in zip(*decisions))
        assert margin > SEPARATION * rounding, (
            f'{where}: a mask logit of the masked attention {margin:.3g} '
            f'from 0, rounding {rounding:.3g}')
        for name, got, eager, exact in zip(('class', 'mask'),
                                           onnx_outputs(onnx_file, inputs),
                                           logits, exact_logits):
            err, err_eager = relative_errors(got, eager, exact)
            assert err <= ERROR_FACTOR * err_eager + floor, (
                f'{where}: {name} logits off by {err:.3g} relative to '
                f'float64 (eager float32 {err_eager:.3g})')
        # the instances: mmdet's fusion head on the graph's logits, the
        # winners paired with the float64 detector's by label and box and
        # mask IoU (their scores, products with the mean of the mask's
        # probabilities, move in steps where a pixel flips), as the check
        # of tools/deploy.py pairs them
        with kernels.literal():
            eager = predict(model, data)
        exact = predict(exact_model,
                        dict(data, inputs=data['inputs'].double()))
        got = predict(ort_model, data)
        reports = [
            compare(*(x[x.scores > M2F_KEPT] for x in (exact, y)))
            for y in (eager, got)
        ]
        assert 2 <= reports[0]['num_ref'] < 50, (where, reports[0])
        assert agrees(reports[0], MASK_IOU), (where, reports[0])
        assert agrees(reports[1], MASK_IOU), (where, reports[1])

    # the graph check of tools/deploy.py, and a graph whose class logits'
    # bias moved by 0.5 fails it
    broken = broken_copy(onnx_file, r'panoptic_head\.cls_embed\.bias',
                         tmp_path)
    for data, inputs in made:
        expected = rewritten_outputs(processor, model, data, inputs)
        report = deploy.logits_graph_report(expected,
                                            onnx_outputs(onnx_file, inputs))
        assert graph_matches(report) and report['num_expected'] == 2, report
        assert not graph_matches(
            deploy.logits_graph_report(expected, onnx_outputs(broken, inputs)))
