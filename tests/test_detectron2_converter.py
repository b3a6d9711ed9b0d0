"""The authors' detectron2 detectors in mmdet: conversion, and equality of
the converted detectors' detections with detectron2's own.

``tests/data/detectron2`` holds three small detectors with random weights,
built and run by detectron2 with the authors' backbone code (RetinaNet +
ResT v1, Mask R-CNN + ResT v1, Mask R-CNN + ResT v2; how they were made:
the README there), their detectron2 checkpoints, three images of odd sizes
and detectron2's detections on them. Here each checkpoint is converted
with ``mmrest.checkpoint.detectron2``, loaded strictly into the model of
the matching ``*_d2.py`` config (narrowed to the test detectors' widths,
the same test-time code paths), run through that config's test pipeline on
the same PNG files, and its detections are compared with detectron2's.
detectron2 is not needed to run these tests.
"""
import hashlib
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from _helpers import RETINANET_ANCHORS, ROOT, Reduce, run_program
from mmengine.config import Config

from mmrest.checkpoint import CheckpointError
from mmrest.checkpoint.detectron2 import (anchor_permutation,
                                          convert_detectron2_checkpoint,
                                          convert_state_dict,
                                          load_detectron2_checkpoint)

DATA = ROOT / 'tests/data/detectron2'
META = json.loads((DATA / 'reference.json').read_text())
CONFIGS = {
    'retinanet_rest_v1':
    'configs/retinanet/retinanet_rest-small_fpn_1x_coco_d2.py',
    'mask_rcnn_rest_v1':
    'configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco_d2.py',
    'mask_rcnn_rest_v2':
    'configs/mask_rcnn/mask-rcnn_restv2-tiny_fpn_3x_coco_d2.py',
}
NUM_IMAGES = len(META['image_sizes_hw'])

# Bounds of the comparison (see _compare). Measured on this data (CPU, torch
# 2.13): boxes within 2.9e-4 px of detectron2's, scores within 1.0e-4 (the
# largest: the v1 Mask R-CNN, image1; RetinaNet 1.1e-6), masks identical
# pixel for pixel on an AMD EPYC, one pixel of a 34-pixel mask flipped on
# an Intel Xeon (v1 Mask R-CNN, image1; its box and score agree as the
# others do, so a pixel whose probability rounds across the 0.5 threshold),
# counts and labels equal. The two runs compute the same
# formulas in float32 with other kernels and in another order (mmrest's
# attention, mmcv's RoIAlign and NMS against the reference's stand-ins);
# random untrained weights amplify those 1e-7 relative differences more
# than trained ones would. The bounds leave a factor of about 7-10 for other
# CPUs; an error in the mapping or the test-time settings moves boxes by
# pixels and changes counts and labels (see the anchor test below).
BOX_TOL = 2e-3  # pixels, in the original image
SCORE_TOL = 1e-3
MASK_PIXELS_TOL = 0.01  # share of a mask's pixels that may differ ...
MASK_PIXELS_MIN = 2  # ... or this many pixels, for small masks


def small_config(name: str) -> Config:
    """The ``*_d2.py`` config of the detector, narrowed to the widths of
    the test detectors, with the reference's input normalisation and test
    scale set explicitly."""
    cfg = Config.fromfile(ROOT / CONFIGS[name])
    meta = META['models'][name]
    dims, depths = META['embed_dims'], META['depths']
    channels, classes = META['fpn_channels'], META['num_classes']
    model = cfg.model
    if name.endswith('_v1'):
        model.backbone.arch = dict(
            embed_dims=dims,
            depths=depths,
            num_heads=[1, 2, 4, 8],
            sr_ratios=[8, 4, 2, 1],
            mlp_ratios=[4, 4, 4, 4])
    else:
        model.backbone.arch = dict(
            embed_dims=dims, depths=depths, num_heads=[1, 2, 4, 8])
    model.backbone.init_cfg = None
    model.neck.out_channels = channels
    if name.startswith('retinanet'):
        model.neck.in_channels = dims[1:]
        model.bbox_head.update(
            in_channels=channels, feat_channels=channels, num_classes=classes)
    else:
        model.neck.in_channels = dims
        model.rpn_head.update(in_channels=channels, feat_channels=channels)
        roi = model.roi_head
        roi.bbox_roi_extractor.out_channels = channels
        roi.mask_roi_extractor.out_channels = channels
        roi.bbox_head.update(
            in_channels=channels,
            fc_out_channels=META['box_fc_dim'],
            num_classes=classes)
        roi.mask_head.update(
            in_channels=channels,
            conv_out_channels=META['mask_conv_dim'],
            num_classes=classes)
    rgb = meta['input_format'] == 'RGB'
    model.data_preprocessor.update(
        mean=meta['pixel_mean'], std=meta['pixel_std'], bgr_to_rgb=rgb)
    for step in cfg.test_dataloader.dataset.pipeline:
        if step.type == 'Resize':
            step.scale = (META['max_size_test'], META['min_size_test'])
    return cfg


def build(cfg: Config, state_dict):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def predict(cfg: Config, model, index: int):
    """Detections and the resized uint8 image (as the pipeline made it)."""
    from mmcv.transforms import Compose
    from mmdet.registry import TRANSFORMS  # noqa: F401
    steps = [
        s for s in cfg.test_dataloader.dataset.pipeline
        if s.type != 'LoadAnnotations'
    ]
    load_resize = Compose(steps[:2])
    pack = Compose(steps[2:])
    results = load_resize(
        dict(img_path=str(DATA / f'image{index}.png'), img_id=index))
    resized = results['img'].copy()
    data = pack(results)
    with torch.no_grad():
        out = model.test_step(
            dict(inputs=[data['inputs']], data_samples=[data['data_samples']]))
    return out[0].pred_instances, resized


def reference(name: str, index: int):
    ref = np.load(DATA / f'{name}.npz')
    found = {
        k.split('_', 1)[1]: ref[k]
        for k in ref.files if k.startswith(f'image{index}_')
    }
    h, w = META['image_sizes_hw'][index]
    if 'masks' in found:
        count = len(found['scores'])
        found['masks'] = np.unpackbits(found['masks'])[:count * h * w].reshape(
            count, h, w).astype(bool)
    return found


@pytest.fixture(scope='module')
def converted():
    out = {}
    for name in CONFIGS:
        state = load_detectron2_checkpoint(DATA / f'{name}.pth')
        out[name] = convert_state_dict(state)
    return out


def _compare(ref, pred, tag):
    """Same count and labels in score order; boxes, scores and masks within
    the bounds above. Returns the measured differences."""
    scores = pred.scores.numpy()
    order = np.argsort(-scores, kind='stable')
    boxes = pred.bboxes.numpy()[order]
    labels = pred.labels.numpy()[order]
    assert len(scores) == len(ref['scores']), \
        f'{tag}: {len(scores)} detections, detectron2 {len(ref["scores"])}'
    assert (labels == ref['labels']).all(), f'{tag}: labels differ'
    measured = dict(count=len(scores), box=0.0, score=0.0, mask=0.0)
    if len(scores) == 0:
        return measured
    measured['box'] = float(np.abs(boxes - ref['boxes']).max())
    measured['score'] = float(np.abs(scores[order] - ref['scores']).max())
    assert measured['box'] <= BOX_TOL, (tag, measured)
    assert measured['score'] <= SCORE_TOL, (tag, measured)
    if 'masks' in ref:
        masks = pred.masks.numpy()[order]
        differ = (masks != ref['masks']).reshape(len(masks), -1).sum(1)
        area = np.maximum(ref['masks'].reshape(len(masks), -1).sum(1), 1)
        measured['mask'] = float((differ / area).max())
        measured['mask_pixels'] = int(differ.max())
        allowed = np.maximum(MASK_PIXELS_TOL * area, MASK_PIXELS_MIN)
        assert (differ <= allowed).all(), (tag, measured)
    return measured


@pytest.mark.parametrize('name', list(CONFIGS))
def test_converted_detector_gives_detectron2_detections(name, converted):
    state, info = converted[name]
    cfg = small_config(name)
    model = build(cfg, state)
    for index in range(NUM_IMAGES):
        ref = reference(name, index)
        pred, resized = predict(cfg, model, index)
        # The same input pixels: Pillow's bilinear resize to the same size.
        assert list(resized.shape[:2]) == list(ref['resized_hw'])
        digest = hashlib.sha256(np.ascontiguousarray(resized)).digest()
        assert digest == ref['resized_sha256'].tobytes(), \
            f'{name} image{index}: resized pixels differ from detectron2'
        tag = f'{name} image{index}'
        print(f'\n{tag}', _compare(ref, pred, tag))


def test_retinanet_without_anchor_reordering_differs():
    """The equality test above sees the anchor order: with detectron2's
    order left as it is, the detections change."""
    name = 'retinanet_rest_v1'
    state = load_detectron2_checkpoint(DATA / f'{name}.pth')
    wrong, _ = convert_state_dict(state, permute_anchors=False)
    cfg = small_config(name)
    model = build(cfg, wrong)
    failures = 0
    for index in range(NUM_IMAGES):
        ref = reference(name, index)
        pred, _ = predict(cfg, model, index)
        try:
            _compare(ref, pred, name)
        except AssertionError:
            failures += 1
    assert failures >= 2


def test_anchor_permutation_matches_both_generators():
    """Independent of the converter's code: detectron2's cell anchors
    (size-major, written out from DefaultAnchorGenerator's formula, float64)
    reordered by anchor_permutation are mmdet's AnchorGenerator's base
    anchors of the RetinaNet config, level by level."""
    from mmdet.models.task_modules.prior_generators import AnchorGenerator
    cfg = Config.fromfile(ROOT / CONFIGS['retinanet_rest_v1'])
    gen = AnchorGenerator(
        **{
            k: v
            for k, v in cfg.model.bbox_head.anchor_generator.items()
            if k != 'type'
        })
    perm = anchor_permutation(3, 3)
    for level, base in enumerate(gen.gen_base_anchors()):
        size = 32 * 2**level
        d2 = []
        for s in (size, size * 2**(1 / 3), size * 2**(2 / 3)):
            for ratio in (0.5, 1.0, 2.0):
                w = np.sqrt(s * s / ratio)
                h = ratio * w
                d2.append([-w / 2, -h / 2, w / 2, h / 2])
        d2 = torch.tensor(d2, dtype=torch.float64)
        assert torch.allclose(base.double(), d2[perm], atol=1e-3), level
        assert not torch.allclose(base.double(), d2, atol=1e-3)


def test_anchor_reordering_with_unequal_sizes_and_ratios():
    """The predictor's channel blocks move from detectron2's size-major
    anchor order to mmdet's ratio-major one, also when the numbers of
    sizes (2) and ratios (3) differ (the authors' detectors have 3 and
    3): mmdet anchor r * sizes + s holds detectron2 anchor s * ratios + r;
    a block's channels stay in order."""
    from mmrest.checkpoint.detectron2 import _reorder_anchor_channels
    sizes, ratios, per_anchor = 2, 3, 4
    d2 = torch.arange(sizes * ratios * per_anchor * 5.).reshape(-1, 5)
    mm = _reorder_anchor_channels(d2, per_anchor, (sizes, ratios))
    for r in range(ratios):
        for s in range(sizes):
            got = mm[(r * sizes + s) * per_anchor:][:per_anchor]
            want = d2[(s * ratios + r) * per_anchor:][:per_anchor]
            assert torch.equal(got, want), (r, s)
    with pytest.raises(CheckpointError, match='expected 6 anchors x 4'):
        _reorder_anchor_channels(d2[:-4], per_anchor, (sizes, ratios))


# ------------------------------------------------------- refusals, files
def _d2_file(tmp_path, state, name='model.pth', **extra):
    path = tmp_path / name
    torch.save(dict(model=state, **extra), path)
    return path


def test_refuses_other_kinds_of_file(tmp_path):
    src = DATA / 'mask_rcnn_rest_v1.pth'
    state = torch.load(src, weights_only=True)['model']
    backbone = {
        k[len('backbone.bottom_up.'):]: v
        for k, v in state.items() if k.startswith('backbone.bottom_up.')
    }
    cases = {}
    # an ImageNet classifier (the authors' layout: a plain state dict)
    classifier = dict(
        backbone, **{
            'head.weight': torch.zeros(10, 64),
            'head.bias': torch.zeros(10)
        })
    torch.save(classifier, tmp_path / 'cls.pth')
    cases['cls.pth'] = 'ImageNet classifier state dict (ResT (v1))'
    # an mmdet checkpoint (converted already)
    convert_detectron2_checkpoint(src, tmp_path / 'mmdet.pth')
    cases['mmdet.pth'] = 'an mmdet checkpoint (already converted?)'
    # detectron2 with a ResNet backbone
    resnet = {
        'backbone.bottom_up.res2.0.conv1.weight': torch.zeros(1),
        'backbone.fpn_lateral2.weight': torch.zeros(1)
    }
    _d2_file(tmp_path, resnet, 'resnet.pth')
    cases['resnet.pth'] = 'backbone is not ResT or ResT v2'
    # a plain pickle (detectron2's .pkl format)
    with open(tmp_path / 'model.pkl', 'wb') as f:
        pickle.dump(dict(model={'a': np.zeros(2)}, __author__='x'), f)
    cases['model.pkl'] = 'plain pickle'
    # truncated
    data = (src).read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    cases['cut.pth'] = 'truncated or corrupt'
    for file, message in cases.items():
        with pytest.raises(
                CheckpointError,
                match=message.replace('(', r'\(').replace(')', r'\)').replace(
                    '?', r'\?')):
            convert_detectron2_checkpoint(tmp_path / file, tmp_path / 'o.pth')
    assert not (tmp_path / 'o.pth').exists()


def test_identify_names_each_kind_of_file():
    """The refusals' description of what a file is instead, for each kind
    ``identify`` knows; a classifier of another network (a ``head.`` but
    no ResT keys) is not taken for a ResT classifier."""
    from mmrest.checkpoint.detectron2 import identify
    state = torch.load(
        DATA / 'mask_rcnn_rest_v1.pth', weights_only=True)['model']
    backbone = {
        k[len('backbone.bottom_up.'):]: v
        for k, v in state.items() if k.startswith('backbone.bottom_up.')
    }
    head = {'head.weight': torch.zeros(10, 64), 'head.bias': torch.zeros(10)}
    swin = dict(
        {
            'layers.0.blocks.0.attn.qkv.weight': torch.zeros(1),
            'patch_embed.proj.weight': torch.zeros(1)
        }, **head)
    t = torch.zeros(1)
    cases = [
        ([t], 'a list, not a checkpoint dict'),
        (dict(state_dict={'decode_head.conv_seg.weight': t}),
         'an mmseg (segmentor) checkpoint'),
        (dict(state_dict={'roi_head.bbox_head.fc_cls.weight': t}),
         'an mmdet checkpoint (already converted?)'),
        (dict(state_dict={'backbone.stem.conv1.weight': t}),
         'an mmpretrain / mmengine classifier checkpoint'),
        (dict(state_dict={
            'a': t,
            'b': t
        }), 'an mmengine checkpoint with keys a, b'),
        (dict(model=[t]), 'a dict whose model entry is a list'),
        (dict(model={'epoch': 3}), 'a dict without tensors (keys: epoch)'),
        ({
            'epoch': 3
        }, 'a dict without tensors (keys: epoch)'),
        (dict(backbone, **head), 'an ImageNet classifier state dict '
         '(ResT (v1))'),
        ({
            f'module.{k}': v
            for k, v in dict(backbone, **head).items()
        }, 'an ImageNet classifier state dict (ResT (v1))'),
        (backbone, 'a bare ResT (v1) backbone state dict'),
        (dict(model=backbone), 'a bare ResT (v1) backbone state dict'),
        (swin, 'an unknown state dict (keys: layers.0.blocks.0.attn.qkv.'
         'weight, patch_embed.proj.weight, head.weight, head.bias)'),
        ({
            f'k{i}': t
            for i in range(7)
        }, 'an unknown state dict (keys: k0, k1, k2, k3, '
         'k4, ... (7 in all))'),
    ]
    for checkpoint, words in cases:
        assert identify(checkpoint) == words


@pytest.mark.parametrize('zip_format', [True, False])
def test_refuses_code_and_runs_none(tmp_path, monkeypatch, zip_format):
    """A payload in a checkpoint is refused and never runs, in torch's
    zip format and in its legacy one."""
    monkeypatch.chdir(tmp_path)
    torch.save(
        dict(
            model={
                'backbone.bottom_up.stem.conv1.weight': torch.zeros(1),
                'x': Reduce(os.system, 'touch pwned')
            }),
        'evil.pth',
        _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match='holds objects other than'):
        convert_detectron2_checkpoint('evil.pth', 'out.pth')
    assert not (tmp_path / 'pwned').exists()
    assert not (tmp_path / 'out.pth').exists()


def test_torch_legacy_format_converts(tmp_path):
    """A checkpoint in torch.save's legacy format (before torch 1.6, or
    ``_use_new_zipfile_serialization=False``) is a torch file, not a plain
    pickle: it converts as the zip one does (a payload in it:
    ``test_refuses_code_and_runs_none``)."""
    src = DATA / 'mask_rcnn_rest_v1.pth'
    checkpoint = torch.load(src, weights_only=True)
    legacy = tmp_path / 'legacy.pth'  # pickle protocol 2, torch's default
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] == b'\x80\x02'
    _assert_same_conversion(legacy, src, tmp_path)


def test_plain_pickles_are_refused_by_content(tmp_path, monkeypatch):
    """detectron2's plain pickles are refused whatever their name, and
    nothing named in them is imported or run; a torch file named .pkl is
    read."""
    monkeypatch.chdir(tmp_path)
    for protocol in (2, 4, 5):
        with open(f'model{protocol}.pth', 'wb') as f:
            pickle.dump(
                dict(model={'x': Reduce(os.system, 'touch pwned')}, number=3),
                f,
                protocol=protocol)
        with pytest.raises(CheckpointError, match='plain pickle'):
            convert_detectron2_checkpoint(f'model{protocol}.pth', 'o.pth')
    with open('model.pkl', 'wb') as f:  # protocol 0: no opcode 0x80
        pickle.dump(dict(model={'x': 1}), f, protocol=0)
    with pytest.raises(CheckpointError, match='plain pickle'):
        convert_detectron2_checkpoint('model.pkl', 'o.pth')
    with open('magic.pth', 'wb') as f:  # torch's number, then a payload
        pickle.dump(torch.serialization.MAGIC_NUMBER + 1, f, protocol=2)
        pickle.dump(Reduce(os.system, 'touch pwned'), f, protocol=2)
    with pytest.raises(CheckpointError, match='plain pickle'):
        convert_detectron2_checkpoint('magic.pth', 'o.pth')
    assert not (tmp_path / 'pwned').exists()
    assert not (tmp_path / 'o.pth').exists()
    src = DATA / 'mask_rcnn_rest_v1.pth'
    (tmp_path / 'model.pkl').write_bytes(src.read_bytes())
    _assert_same_conversion(tmp_path / 'model.pkl', src, tmp_path)


def _assert_same_conversion(path, src, tmp_path):
    """``path`` converts to the checkpoint ``src`` converts to."""
    out = []
    for i, f in enumerate((path, src)):
        info = convert_detectron2_checkpoint(f, tmp_path / f'{i}.pth')
        info.pop('converted_from')
        out.append((info, torch.load(tmp_path / f'{i}.pth',
                                     weights_only=True)['state_dict']))
    (info, got), (want_info, want) = out
    assert info == want_info and list(got) == list(want) and len(got) > 100
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_refuses_a_retinanet_head_of_other_anchors():
    """RetinaNet's class channels and its box channels are each checked
    against 9 anchors a location: either alone wrong is refused."""
    state = torch.load(
        DATA / 'retinanet_rest_v1.pth', weights_only=True)['model']
    for name, channels in (('cls_score', 55), ('bbox_pred', 40)):
        wrong = dict(state)
        for part in ('weight', 'bias'):
            key = f'head.{name}.{part}'
            wrong[key] = torch.zeros(channels, *state[key].shape[1:])
        with pytest.raises(CheckpointError, match='not 9 anchors'):
            convert_state_dict(wrong)


def test_config_check_names_missing_and_unexpected_keys(converted):
    """Keys missing from the checkpoint, keys the model lacks and shapes
    that differ are each refused alone, under their own heading."""
    from mmrest.checkpoint.detectron2 import check_against_config
    state, info = converted['mask_rcnn_rest_v1']
    cfg = small_config('mask_rcnn_rest_v1')
    key = 'roi_head.bbox_head.fc_cls.bias'
    headings = ('missing from the checkpoint: ', 'not in the model: ',
                'other shapes: ')
    for change, shown in (
        (lambda s: s.pop(key), f'{headings[0]}{key}'),
        (lambda s: s.update(extra=torch.zeros(1)), f'{headings[1]}extra'),
        (lambda s: s.update({key: torch.zeros(2)}),
         f'{headings[2]}{key}: checkpoint (2,) vs model (7,)')):
        changed = dict(state)
        change(changed)
        with pytest.raises(CheckpointError) as e:
            check_against_config(changed, info, cfg)
        assert shown in str(e.value)
        assert sum(h in str(e.value) for h in headings) == 1, str(e.value)


def test_conversion_reorders_anchors_by_default(tmp_path, converted):
    """The file converter reorders RetinaNet's anchor channels unless told
    not to (the detections test checks that order against detectron2)."""
    state, _ = converted['retinanet_rest_v1']
    convert_detectron2_checkpoint(DATA / 'retinanet_rest_v1.pth',
                                  tmp_path / 'out.pth')
    out = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    key = 'bbox_head.retina_cls.weight'
    assert torch.equal(out[key], state[key])
    raw = convert_state_dict(
        load_detectron2_checkpoint(DATA / 'retinanet_rest_v1.pth'),
        permute_anchors=False)[0]
    assert not torch.equal(out[key], raw[key])


def test_refuses_unknown_keys(tmp_path):
    state = torch.load(
        DATA / 'mask_rcnn_rest_v1.pth', weights_only=True)['model']
    state['roi_heads.keypoint_head.conv_fcn1.weight'] = torch.zeros(1)
    with pytest.raises(
            CheckpointError, match='1 keys map to nothing.*keypoint_head'):
        convert_state_dict(state)


def test_failed_conversion_leaves_the_output_as_it_was(tmp_path, monkeypatch):
    dst = tmp_path / 'out.pth'
    dst.write_bytes(b'old')
    src = DATA / 'retinanet_rest_v1.pth'
    # the wrong config: nothing written
    with pytest.raises(CheckpointError, match='does not fit the model'):
        convert_detectron2_checkpoint(src, dst,
                                      ROOT / CONFIGS['mask_rcnn_rest_v1'])
    # killed while writing: the old file stays, no temporary file is left
    import mmrest.checkpoint.atomic_io as atomic_io

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_io.os, 'replace', boom)
    with pytest.raises(KeyboardInterrupt):
        convert_detectron2_checkpoint(src, dst)
    assert dst.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.pth']


@pytest.mark.parametrize('name', list(CONFIGS))
def test_config_check_names_each_test_time_difference(name, converted):
    """check_against_config: no warning for the matching config; one for
    each setting changed away from detectron2's test time (v1's output
    norms feeding the next stage, the other family's input normalisation,
    RetinaNet's ReLU before P7), naming the setting."""
    from mmrest.checkpoint.detectron2 import check_against_config
    state, info = converted[name]
    assert check_against_config(state, info, small_config(name)) == []
    other = dict(
        v1=dict(
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True),
        v2=dict(
            mean=[103.53, 116.28, 123.675], std=[1.] * 3, bgr_to_rgb=False))
    changes = [('data_preprocessor', other[name[-2:]])]
    for i in range(3):  # each mean and std alone, by 0.1
        for key in ('mean', 'std'):
            values = list(small_config(name).model.data_preprocessor[key])
            values[i] += 0.1
            changes.append(('data_preprocessor', {key: values}))
    if name.endswith('_v1'):
        changes.append(('out_norms_feed_next_stage', None))
    if name.startswith('retinanet'):
        changes.append(('relu_before_extra_convs', None))
    for setting, update in changes:
        cfg = small_config(name)
        if setting == 'data_preprocessor':
            cfg.model.data_preprocessor.update(update)
        elif setting == 'out_norms_feed_next_stage':
            cfg.model.backbone.out_norms_feed_next_stage = False
        else:
            cfg.model.neck.relu_before_extra_convs = False
        (warning, ) = check_against_config(state, info, cfg)
        assert warning.startswith(setting) or \
            warning.startswith(f'backbone.{setting}') or \
            warning.startswith(f'neck.{setting}'), (setting, warning)
    # a setting the config leaves out is the module's default (ResT's and
    # mmdet's FPN's False, DetDataPreprocessor's bgr_to_rgb False)
    for part, key in (('backbone', 'out_norms_feed_next_stage'),
                      ('neck', 'relu_before_extra_convs'),
                      ('data_preprocessor', 'bgr_to_rgb')):
        cfg = small_config(name)
        cfg.model[part].pop(key, None)
        warns = part == 'data_preprocessor' and name.endswith('_v2') or (
            part == 'backbone'
            and name.endswith('_v1')) or (part == 'neck'
                                          and name.startswith('retinanet'))
        got = check_against_config(state, info, cfg)
        assert len(got) == warns and (not warns or key in got[0]), (key, got)


def test_config_check_lists_the_differences(converted):
    """A config of other widths or classes is refused with the shapes
    that differ (the first five, then the count)."""
    from mmrest.checkpoint.detectron2 import check_against_config
    state, info = converted['mask_rcnn_rest_v1']
    cfg = small_config('mask_rcnn_rest_v1')
    cfg.model.roi_head.bbox_head.num_classes = 3
    with pytest.raises(CheckpointError) as e:
        check_against_config(state, info, cfg)
    message = str(e.value)
    assert 'MaskRCNN (ResT (v1) of non-standard widths or depths, 6 ' \
        'classes)' in message
    assert 'roi_head.bbox_head.fc_cls.weight: checkpoint (7, 32) vs model ' \
        '(4, 32)' in message and 'in all' not in message
    cfg = small_config('mask_rcnn_rest_v1')
    cfg.model.backbone.arch.embed_dims = [16, 32, 64, 128]
    with pytest.raises(
            CheckpointError,
            match=r'other shapes: (.*; ){4}[^;]* \.\.\. '
            r'\(\d+ in all\)'):
        check_against_config(state, info, cfg)


def test_cli(tmp_path):
    tool = ROOT / 'tools/model_converters/detectron2_to_mmdet.py'
    cfg = small_config('retinanet_rest_v1')
    cfg_path = tmp_path / 'small_retinanet.py'
    cfg.dump(cfg_path)

    def convert(source, out, *options, ok=True):
        return run_program([sys.executable, tool, source, out, *options],
                           ok=ok)

    ok = convert(DATA / 'retinanet_rest_v1.pth', tmp_path / 'out.pth',
                 '--config', cfg_path)
    # the tiny test detector: no variant of the zoo, the data's 6 classes
    assert 'RetinaNet with v1 ResT (non-standard widths/depths), 6 classes, ' \
        'FPN on stage2, stage3, stage4' in ok.stdout
    assert 'warning' not in ok.stderr
    ckpt = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert set(ckpt) == {'state_dict', 'meta'}
    assert ckpt['meta']['detector'] == 'RetinaNet'
    # the paper config without the ReLU before P7 and with RGB input
    cfg.model.neck.relu_before_extra_convs = False
    cfg.model.data_preprocessor.update(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True)
    cfg.dump(cfg_path)
    warn = convert(DATA / 'retinanet_rest_v1.pth', tmp_path / 'out2.pth',
                   '--config', cfg_path)
    assert 'relu_before_extra_convs' in warn.stderr
    assert 'data_preprocessor' in warn.stderr
    bad = convert(DATA / 'image0.png', tmp_path / 'out3.pth', ok=False)
    assert bad.returncode == 1 and 'error:' in bad.stderr
    assert not (tmp_path / 'out3.pth').exists()


@pytest.mark.parametrize(
    'path',
    sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*_d2.py')))
def test_d2_configs_build_with_detectron2_test_time(path):
    """Each of the seven ``*_d2.py`` configs builds, with the settings the
    test detectors above use (the full-size models differ only in widths,
    depths and classes)."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(ROOT / path)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    v1 = type(model.backbone).__name__ == 'ResT'
    pre = cfg.model.data_preprocessor
    if v1:
        assert model.backbone.out_norms_feed_next_stage
        assert pre.mean == [103.53, 116.28, 123.675] and pre.std == [1] * 3
        assert not pre.bgr_to_rgb
    else:
        assert pre.std == [58.395, 57.12, 57.375] and pre.bgr_to_rgb
    if 'retinanet' in path:
        assert type(model.bbox_head).__name__ == 'Detectron2RetinaHead'
        assert model.neck.relu_before_extra_convs
        assert not model.bbox_head.bbox_coder.clip_border
    resize = [
        s for s in cfg.test_dataloader.dataset.pipeline if s.type == 'Resize'
    ][0]
    assert resize.backend == 'pillow' and resize.scale == (1333, 800)
    assert cfg.model.backbone.init_cfg is None
    assert model.roi_head.bbox_head.num_classes == 80 if 'retinanet' not \
        in path else model.bbox_head.num_classes == 80


@pytest.mark.parametrize('name', list(CONFIGS))
def test_conversion_facts(name, converted):
    """What the conversion reports (written into the checkpoint's meta and
    the refusals): the detector, the family, the classes of the test
    detectors (reference.json), the FPN's inputs; the test detectors'
    narrow widths are no published variant."""
    _, info = converted[name]
    assert info['detector'] == ('RetinaNet' if name.startswith('retinanet')
                                else 'MaskRCNN')
    assert info['family'] == name[-2:]
    assert info['num_classes'] == META['num_classes'] == 6
    assert info['variant'] is None
    assert info['fpn_inputs'] == (['stage2', 'stage3', 'stage4']
                                  if name.startswith('retinanet') else
                                  ['stage1', 'stage2', 'stage3', 'stage4'])


@pytest.mark.parametrize('family,arch',
                         [('v1', a)
                          for a in ('lite', 'small', 'base', 'large')] +
                         [('v2', a)
                          for a in ('tiny', 'small', 'base', 'large')])
def test_conversion_names_the_published_variant(family, arch):
    """With a published backbone (its full-size keys and shapes, built on
    the CPU), the conversion names the variant."""
    from mmrest import ResT, ResTV2
    backbone = (ResT if family == 'v1' else ResTV2)(arch=arch)
    state = {
        k: v
        for k, v in load_detectron2_checkpoint(
            DATA / f'mask_rcnn_rest_{family}.pth').items()
        if not k.startswith('backbone.bottom_up.')
    }
    state.update({
        f'backbone.bottom_up.{k}': v
        for k, v in backbone.state_dict().items()
    })
    _, info = convert_state_dict(state)
    assert info['variant'] == arch


def test_retina_head_clips_then_drops_empty_boxes():
    """Detectron2RetinaHead's test time after NMS: boxes clipped to the
    image, then those left without width or height dropped (detectron2's
    detector_postprocess), the others kept as they are."""
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData

    from mmrest.models import Detectron2RetinaHead
    register_all_modules()
    head = Detectron2RetinaHead(
        num_classes=2,
        in_channels=8,
        feat_channels=8,
        stacked_convs=1,
        anchor_generator=RETINANET_ANCHORS,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', clip_border=False))
    results = InstanceData(
        bboxes=torch.tensor([
            [10., 10., 20., 30.],  # inside: kept as it is
            [-5., 90., 20., 130.],  # clipped to [0, 90, 20, 100]
            [10., 120., 20., 130.],  # below the image: no height left
            [110., 10., 130., 20.],  # right of it: no width left
        ]),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        labels=torch.tensor([0, 1, 0, 1]))
    cfg = ConfigDict(
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=100,
        min_bbox_size=-1,
        score_thr=0.)
    out = head._bbox_post_process(
        results,
        cfg,
        rescale=False,
        with_nms=True,
        img_meta=dict(img_shape=(100, 100)))
    assert out.bboxes.tolist() == [[10., 10., 20., 30.], [0., 90., 20., 100.]]
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])
    # rescaled: clipped to the original image, after the scaling
    out = head._bbox_post_process(
        results.clone(),
        cfg,
        rescale=True,
        with_nms=True,
        img_meta=dict(
            img_shape=(100, 100), ori_shape=(50, 50), scale_factor=(2., 2.)))
    assert out.bboxes.tolist() == [[5., 5., 10., 15.], [0., 45., 10., 50.]]
    # test-time augmentation (no NMS yet): the boxes are merged first, so
    # none is clipped or dropped here
    boxes = results.bboxes.clone()
    out = head._bbox_post_process(
        results.clone(),
        cfg,
        rescale=False,
        with_nms=False,
        img_meta=dict(img_shape=(100, 100)))
    assert out.bboxes.tolist() == boxes.tolist()
