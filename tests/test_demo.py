"""The embedded shapes set, the demo's training and evaluation through its
config, and tools/demo.py."""
import copy
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import (ROOT, demo_training_records, file_bytes, run_program,
                      run_tiny_demo, scheduled_lrs)
from mmengine.config import Config

from mmrest.synthetic import SHAPES_CLASSES, generate_shapes_coco, shapes_info
from mmrest.synthetic.shapes import GENERATOR_VERSION, MIN_CONTRAST
from mmrest.utils.torch_compat import drop_unsupported_fused

# make demo's config, and the 2-epoch config it inherits (the tuning runs').
DEMO_CONFIG = ROOT / 'configs/demo/mask-rcnn_rest-lite_fpn_3e_shapes.py'
DEMO_2E_CONFIG = ROOT / 'configs/demo/mask-rcnn_rest-lite_fpn_2e_shapes.py'
SMALL = dict(
    splits=dict(train=12, val=6),
    image_size=(96, 128),
    max_objects=4,
    object_size=(16, 48))


def test_generator_same_seed_same_bytes(tmp_path):
    generate_shapes_coco(str(tmp_path / 'a'), seed=3, **SMALL)
    generate_shapes_coco(str(tmp_path / 'b'), seed=3, **SMALL)
    generate_shapes_coco(str(tmp_path / 'c'), seed=4, **SMALL)
    a, b, c = (file_bytes(tmp_path / n) for n in 'abc')
    assert len(a) == 12 + 6 + 2
    assert a == b
    # generated again over an existing set (with its label maps), the same
    for _ in range(2):
        generate_shapes_coco(
            str(tmp_path / 'a'), seed=4, semantic_labels=True, **SMALL)
    generate_shapes_coco(str(tmp_path / 'a'), seed=3, **SMALL)
    again = file_bytes(tmp_path / 'a')
    assert {k: again[k] for k in a} == a
    assert a.keys() == c.keys() and a != c
    # a split's content depends on the seed and its name only
    generate_shapes_coco(
        str(tmp_path / 'd'), seed=3, **dict(SMALL, splits=dict(val=6)))
    d = file_bytes(tmp_path / 'd')
    assert all(d[k] == a[k] for k in d if not k.endswith('.json'))
    assert len(d) == 6 + 1


def test_generator_is_valid_coco(tmp_path):
    from pycocotools.coco import COCO
    files = generate_shapes_coco(str(tmp_path), seed=0, **SMALL)
    assert sorted(files) == ['train', 'val']
    seen_labels = set()
    for split, ann_file in files.items():
        coco = COCO(ann_file)
        assert len(coco.getImgIds()) == SMALL['splits'][split]
        assert len(coco.getAnnIds()) > 0, f'{split} has no annotation'
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == \
            list(SHAPES_CLASSES)
        assert shapes_info(ann_file)['num_images'] == SMALL['splits'][split]
        for img in coco.loadImgs(coco.getImgIds()):
            image = np.asarray(
                __import__('cv2').imread(
                    str(tmp_path / split / img['file_name'])))
            assert image.shape == (96, 128, 3)
            assert (img['height'], img['width']) == (96, 128)
        for ann in coco.loadAnns(coco.getAnnIds()):
            seen_labels.add(ann['category_id'])
            assert ann['iscrowd'] == 0 and ann['segmentation']
            mask = coco.annToMask(ann)
            assert mask.shape == (96, 128)
            ys, xs = np.nonzero(mask)
            assert len(xs) > 0, f'annotation {ann["id"]} has an empty mask'
            x, y, w, h = ann['bbox']
            assert w > 0 and h > 0
            assert xs.min() >= x and xs.max() + 1 <= x + w, ann['id']
            assert ys.min() >= y and ys.max() + 1 <= y + h, ann['id']
            # the polygons describe the visible pixels counted in `area`
            assert abs(mask.sum() - ann['area']) <= 0.5 * ann['area']
    assert seen_labels == {1, 2, 3, 4}


@pytest.mark.parametrize('kwargs, match', [
    (dict(splits={}), 'splits'),
    (dict(splits=dict(train=0)), r"splits\['train'\]"),
    (dict(splits={'../x': 2}), 'split name'),
    (dict(splits={1: 2}), 'split name'),
    (dict(splits=dict(train=True)), r"splits\['train'\]"),
    (dict(image_size=(8, 128)), 'image_size'),
    (dict(image_size=(16, 15)), 'image_size'),
    (dict(image_size=128), 'image_size'),
    (dict(image_size=(64., 64)), 'image_size'),
    (dict(max_objects=0), 'max_objects'),
    (dict(max_objects=2.0), 'max_objects'),
    (dict(object_size=20), 'object_size'),
    (dict(object_size=(20, 30, 40)), 'object_size'),
    (dict(object_size=('a', 'b')), 'object_size'),
    (dict(object_size=(30, 20)), 'object_size'),
    (dict(object_size=(3.9, 20)), 'object_size'),
    (dict(image_size=(64, 48), object_size=(20, 49)), 'object_size'),
    (dict(object_size=(20, 500)), 'object_size'),
    (dict(max_rotation=-5), 'max_rotation'),
    (dict(max_rotation=181), 'max_rotation'),
    (dict(max_rotation='0'), 'max_rotation'),
    (dict(seed=-1), 'seed'),
    (dict(seed=True), 'seed'),
])
def test_generator_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_shapes_coco(str(tmp_path), **kwargs)


@pytest.mark.parametrize('object_size', [(4, 16), (16, 16), (4, 4)])
def test_generator_accepts_the_edge_of_each_range(tmp_path, object_size):
    """The smallest set the checks allow is made, not refused: one image
    of 16 x 16 with at most one object, diameters from 4 up to the image
    side (equal bounds too), any rotation."""
    files = generate_shapes_coco(
        str(tmp_path),
        splits=dict(train=1),
        image_size=(16, 16),
        max_objects=1,
        object_size=object_size,
        max_rotation=180,
        seed=0)
    images = json.loads(Path(files['train']).read_text())['images']
    assert [(i['height'], i['width']) for i in images] == [(16, 16)]


def _square_masks(max_rotation):
    """Masks of squares drawn alone (no occlusion) at random poses."""
    from mmrest.synthetic.shapes import _shape_mask
    rng = np.random.RandomState(0)
    square = SHAPES_CLASSES.index('square')
    return [
        _shape_mask(rng, square, 96, 96, 40., max_rotation) for _ in range(20)
    ]


def test_generator_rotation_range():
    """max_rotation=0 draws every square axis-aligned (it fills its box);
    the default turns them any way (many fill only part of it)."""

    def box_fill(mask):
        ys, xs = np.nonzero(mask)
        return mask.sum() / ((xs.ptp() + 1) * (ys.ptp() + 1))

    upright = [box_fill(m) for m in _square_masks(0)]
    turned = [box_fill(m) for m in _square_masks(180)]
    assert min(upright) > 0.97
    assert sum(f < 0.8 for f in turned) >= 5


def test_generator_turns_shapes_within_max_rotation():
    """Squares drawn with ``max_rotation=30`` lie within 30 degrees of
    upright (the angle of each mask's minimal rectangle, folded onto
    [-45, 45); 3 degrees for the pixels), turned both ways."""
    import cv2
    angles = []
    for mask in _square_masks(30):
        points = cv2.findNonZero(mask.astype(np.uint8))
        angle = cv2.minAreaRect(points)[2]
        angles.append((angle + 45) % 90 - 45)
    assert max(abs(a) for a in angles) <= 33, angles
    assert min(angles) < -10 and max(angles) > 10, angles


@pytest.mark.parametrize('seed', range(5))
def test_one_shape_is_annotated_by_its_pixels(seed):
    """With one object (nothing hides it) the image holds one annotation,
    whose box is exactly its pixels' extent and whose area their count (the
    label map marks the same pixels)."""
    from mmrest.synthetic.shapes import make_image
    rng = np.random.RandomState(seed)
    img, anns, labels = make_image(rng, 64, 80, 1, 12., 40., semantic=True)
    assert img.shape == (64, 80, 3) and len(anns) == 1
    ys, xs = np.nonzero(labels)
    assert anns[0]['bbox'] == [
        xs.min(),
        ys.min(),
        xs.max() - xs.min() + 1,
        ys.max() - ys.min() + 1
    ]
    assert anns[0]['area'] == len(xs)
    assert anns[0]['category_id'] == labels.max()


def test_only_pieces_of_some_area_become_polygons():
    """A shape's visible pixels become one polygon per piece of at least
    3 corners and 4 pixels of enclosed area: a 2x2 speck (area 1) and a
    one-pixel line (2 corners) left by an occlusion are dropped, a 3x3
    block (area 4) is kept."""
    import cv2

    from mmrest.synthetic.shapes import _polygons
    mask = np.zeros((32, 32), np.uint8)
    mask[2:12, 2:12] = 1  # 10 x 10: outline area 81
    mask[20:22, 20:22] = 1  # 2 x 2: area 1
    mask[28, 5:15] = 1  # a line
    mask[25:28, 25:28] = 1  # 3 x 3: area 4
    polys = _polygons(mask)
    areas = sorted(
        cv2.contourArea(np.array(p, np.float32).reshape(-1, 2)) for p in polys)
    assert areas == [4.0, 81.0]


def test_each_class_draws_its_shape():
    """Each class's masks have its shape, measured on the outline of 10
    masks at any rotation (the medians): a triangle's outline simplifies to
    3 corners, a square's to 4, a circle's to 7 or more; a star fills half
    its convex hull, the others more than 90 %."""
    import cv2

    from mmrest.synthetic.shapes import _shape_mask
    rng = np.random.RandomState(0)
    corners, solidity = {}, {}
    for k, name in enumerate(SHAPES_CLASSES):
        found = []
        for _ in range(10):
            mask = _shape_mask(rng, k, 96, 96, 40., 180.).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_NONE)
            outline = max(contours, key=cv2.contourArea)
            hull_area = cv2.contourArea(cv2.convexHull(outline))
            found.append((len(
                cv2.approxPolyDP(outline, 0.04 * cv2.arcLength(outline, True),
                                 True)), cv2.contourArea(outline) / hull_area))
        corners[name] = np.median([n for n, _ in found])
        solidity[name] = np.median([f for _, f in found])
    assert (corners['triangle'], corners['square']) == (3, 4), corners
    assert corners['circle'] >= 7, corners
    assert solidity['star'] < 0.7, solidity
    assert min(solidity[n] for n in ('circle', 'square', 'triangle')) > 0.9


class _AllObjects(np.random.RandomState):
    """Draws the most objects an image may hold (each image's count is
    ``randint(1, max_objects + 1)``); every other draw as it was."""

    def randint(self, low, high=None, size=None, dtype=int):
        if low == 1 and high is not None and size is None:
            return high - 1
        return super().randint(low, high, size, dtype)


@pytest.mark.parametrize(
    'first, hidden, annotated',
    [
        ((20, 20), 280, True),  # 120 of 400 pixels seen: 30 %, kept
        ((20, 20), 281, False),  # 119 seen: under 30 %, dropped
        ((20, 20), 200, True),
        ((4, 5), 0, True),  # 20 pixels, none hidden: kept
        ((4, 5), 1, False),  # 19 pixels seen: too few, dropped
    ])
def test_mostly_hidden_shapes_are_not_annotated(monkeypatch, first, hidden,
                                                annotated):
    """The occlusion rule: a shape under a later one is annotated (its seen
    pixels) while at least 30 % of it and 20 pixels remain in view. Two
    masks stand in for the drawn shapes: a rectangle of ``first`` (rows,
    columns) pixels, then a bar that hides its first ``hidden`` ones (row
    by row) and, on its own, is always kept."""
    from mmrest.synthetic import shapes
    rows, cols = first
    masks = [np.zeros((64, 64), np.uint8) for _ in range(2)]
    masks[0][10:10 + rows, 10:10 + cols] = 1
    covered = np.zeros(rows * cols, np.uint8)
    covered[:hidden] = 1
    masks[1][10:10 + rows, 10:10 + cols] = covered.reshape(rows, cols)
    masks[1][40:50, 10:40] = 1  # the bar's own part, in view
    drawn = iter(masks)
    monkeypatch.setattr(shapes, '_shape_mask', lambda *args: next(drawn))
    _, anns = shapes.make_image(_AllObjects(0), 64, 64, 2, 4., 30.)
    areas = sorted(a['area'] for a in anns)
    seen = rows * cols - hidden
    assert areas == sorted([float((masks[1] > 0).sum())] +
                           ([float(seen)] if annotated else [])), areas


def test_generator_records_max_rotation(tmp_path):
    files = generate_shapes_coco(
        str(tmp_path), seed=1, max_rotation=15, **SMALL)
    assert shapes_info(files['val'])['max_rotation'] == 15.0
    # same seed, other poses: other images
    generate_shapes_coco(str(tmp_path / 'any'), seed=1, **SMALL)
    generate_shapes_coco(str(tmp_path / 'up'), seed=1, max_rotation=0, **SMALL)
    any_, up = file_bytes(tmp_path / 'any'), file_bytes(tmp_path / 'up')
    assert any_.keys() == up.keys()
    assert any(any_[k] != up[k] for k in any_ if k.endswith('.png'))


def test_demo_config_is_the_coco_model_as_tuned():
    """The demo's model is the ResT-Lite Mask R-CNN of the COCO config
    (same backbone arch, same FPN) from scratch, with the shapes' classes;
    where the COCO config follows detectron2 it keeps what the demo was
    tuned with: mmdet's FPN initialisation, and the classifier's
    computation between stages."""
    cfg = Config.fromfile(DEMO_CONFIG)
    coco = Config.fromfile(
        ROOT / 'configs/mask_rcnn/mask-rcnn_rest-lite_fpn_1x_coco.py')
    assert cfg.model.backbone.type == 'ResT'
    assert cfg.model.backbone.arch == coco.model.backbone.arch
    assert cfg.model.backbone.init_cfg is None  # from scratch
    assert cfg.model.backbone.out_norms_feed_next_stage is False
    neck, coco_neck = dict(cfg.model.neck), dict(coco.model.neck)
    assert neck.pop('init_cfg') == dict(
        type='Xavier', layer='Conv2d', distribution='uniform')  # mmdet's
    coco_neck.pop('init_cfg')
    assert neck == coco_neck
    assert cfg.model.roi_head.bbox_head.num_classes == len(SHAPES_CLASSES)
    assert cfg.model.roi_head.mask_head.num_classes == len(SHAPES_CLASSES)
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == \
        SHAPES_CLASSES
    assert set(cfg.val_evaluator.metric) == {'bbox', 'segm'}


def _iteration_lrs(cfg, epoch_length: int) -> list:
    """The lr of each training iteration of ``cfg``'s schedule, as
    mmengine's Runner builds and steps its schedulers."""
    from mmengine.optim import build_optim_wrapper
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    drop_unsupported_fused(optim_cfg.optimizer, 'cpu')  # torch < 2.4
    optim = build_optim_wrapper(torch.nn.Linear(2, 2), optim_cfg)
    return scheduled_lrs(optim, cfg.param_scheduler,
                         cfg.train_cfg.max_epochs * epoch_length, epoch_length)


@pytest.mark.parametrize('config,epochs', [(DEMO_2E_CONFIG, 2),
                                           (DEMO_CONFIG, 3)])
def test_demo_schedule_is_one_cosine_over_its_epochs(config, epochs):
    """Warm-up over 50 iterations, then one cosine from lr 2e-4 down to 1 %
    of it at the end of the last epoch (500 iterations an epoch: 1000
    images, batch 2), the formula written out here; validated and
    checkpointed once, at that end."""
    cfg = Config.fromfile(config)
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.train_cfg.val_interval == epochs
    assert cfg.default_hooks.checkpoint.interval == epochs
    assert cfg.shapes_data.splits.train // cfg.train_dataloader.batch_size \
        == 500
    lrs = _iteration_lrs(cfg, 500)
    total = 500 * epochs
    assert lrs[0] == pytest.approx(2e-6)
    assert all(a < b for a, b in zip(lrs[:49], lrs[1:50]))  # warm-up
    # mmengine's cosine is recursive, each step from the lr before, which
    # the warm-up's factor had scaled: 2e-5 off the closed form after it.
    for i in range(50, total, 7):
        cosine = 0.01 + 0.99 * (1 + math.cos(math.pi * i / total)) / 2
        assert lrs[i] == pytest.approx(2e-4 * cosine, rel=1e-4), i
    assert lrs[-1] == pytest.approx(2e-6, rel=1e-3)


def test_make_demo_config_is_the_2_epoch_config_for_3_epochs():
    """`make demo`'s config differs from the 2-epoch one (its base, which
    the tuning runs trained) only in the schedule and a fixed seed."""
    demo = Config.fromfile(DEMO_CONFIG).to_dict()
    base = Config.fromfile(DEMO_2E_CONFIG).to_dict()
    changed = {
        k
        for k in demo.keys() | base.keys() if demo.get(k) != base.get(k)
    }
    assert changed == {
        'max_epochs', 'train_cfg', 'param_scheduler', 'default_hooks',
        'randomness'
    }
    assert demo['randomness'] == dict(seed=0) and 'randomness' not in base
    hooks, base_hooks = demo['default_hooks'], base['default_hooks']
    ckpt, base_ckpt = hooks.pop('checkpoint'), base_hooks.pop('checkpoint')
    assert (ckpt.pop('interval'), base_ckpt.pop('interval')) == (3, 2)
    assert ckpt == base_ckpt and hooks == base_hooks
    assert demo['train_cfg'] == dict(
        base['train_cfg'], max_epochs=3, val_interval=3)
    warm_up, cosine = demo['param_scheduler']
    base_warm_up, base_cosine = base['param_scheduler']
    assert warm_up == base_warm_up
    assert cosine == dict(base_cosine, end=3, T_max=3)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A two-iteration training and evaluation through the demo config on
    a tiny generated split."""
    return run_tiny_demo(
        tmp_path_factory, DEMO_CONFIG, dict(train=4, val=2), {
            'train_cfg.max_epochs': 1,
            'train_cfg.val_interval': 1,
            'default_hooks.checkpoint.interval': 1,
        })


def test_demo_trains_and_evaluates(trained):
    tmp, summary = trained
    work = tmp / 'work'
    assert (tmp / 'data/annotations/instances_train.json').is_file()
    assert summary['iterations'] == 2 and summary['epochs'] == 1
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50',
                'coco/segm_mAP_75'):
        assert 0.0 <= summary[key] <= 1.0, key
    # the targets, as written there
    assert summary['targets'] == {'coco/bbox_mAP': 0.5, 'coco/segm_mAP': 0.45}
    assert isinstance(summary['targets_met'], bool)
    # mmengine logged both iterations' losses; loss.png plots them
    losses = demo_training_records(work, summary)
    assert [r['step'] for r in losses] == [1, 2]
    assert all(np.isfinite(r['loss_mask']) for r in losses)
    assert (work / 'epoch_1.pth').is_file()


def test_demo_reuses_data(trained, tmp_path):
    from mmrest_tools.demo import prepare_shapes_data, set_data_root
    tmp, _ = trained
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.merge_from_dict({'shapes_data.splits': dict(train=4, val=2)})
    set_data_root(cfg, str(tmp / 'data'))
    assert cfg.val_evaluator.ann_file == str(
        tmp / 'data/annotations/instances_val.json')
    assert prepare_shapes_data(cfg) is False  # same arguments: kept
    cfg.merge_from_dict({'shapes_data.splits': dict(train=4, val=3)})
    set_data_root(cfg, str(tmp_path))
    assert prepare_shapes_data(cfg) is True
    assert prepare_shapes_data(cfg) is False
    cfg.merge_from_dict({'shapes_data.seed': 1})  # other arguments: remade
    assert prepare_shapes_data(cfg) is True
    # a set written by an older generator (same arguments, other images)
    ann_file = tmp_path / 'annotations/instances_val.json'
    data = json.loads(ann_file.read_text())
    data['info']['params']['version'] = GENERATOR_VERSION - 1
    ann_file.write_text(json.dumps(data))
    assert prepare_shapes_data(cfg) is True
    assert shapes_info(str(ann_file))['version'] == GENERATOR_VERSION


def test_shapes_stand_out_from_the_background(tmp_path):
    """Each shape's colour is MIN_CONTRAST away from the background it
    was painted on, measured as the visible part's colour against the mean
    of the pixels just outside its box that no shape covers. That mean is
    not the background under the shape, so the bounds have a margin; random
    colours (MIN_CONTRAST = 0) give a minimum of about 30 and a 5th
    percentile of about 75 here, the generator about 90 and 175."""
    import cv2
    from pycocotools import mask as mask_utils
    files = generate_shapes_coco(str(tmp_path), seed=5, splits=dict(val=150))
    data = json.loads(open(files['val']).read())
    covered = {}
    for ann in data['annotations']:
        rle = mask_utils.frPyObjects(ann['segmentation'], 128, 128)
        m = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
        covered[ann['image_id']] = covered.get(ann['image_id'], False) | m
    diffs = []
    for ann in data['annotations']:
        img = cv2.imread(str(tmp_path / 'val' / f"{ann['image_id']:06d}.png"))
        rle = mask_utils.frPyObjects(ann['segmentation'], 128, 128)
        inside = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
        x, y, w, h = (int(v) for v in ann['bbox'])
        ring = np.zeros_like(inside)
        ring[max(0, y - 3):y + h + 3, max(0, x - 3):x + w + 3] = True
        ring[y:y + h, x:x + w] = False
        ring &= ~covered[ann['image_id']]
        if ring.sum() < 20:
            continue
        colour = np.median(img[inside & ~_eroded_edge(inside)], axis=0)
        background = img[ring].astype(float).mean(axis=0)
        diffs.append(np.abs(colour - background).sum())
    assert len(diffs) >= 300
    assert min(diffs) > MIN_CONTRAST / 3
    assert np.percentile(diffs, 5) > 0.75 * MIN_CONTRAST


def _eroded_edge(mask):
    import cv2
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    return mask & ~inner.astype(bool)


def _run_demo_tool(image, checkpoint, out, score_thr):
    """tools/demo.py on one image; the (class, score, box) it prints."""
    proc = run_program([
        sys.executable, ROOT / 'tools/demo.py', image, DEMO_CONFIG, checkpoint,
        '--out-file', out, '--score-thr', score_thr
    ],
                       timeout=600)
    assert f'drawn to {out}' in proc.stdout
    preds = []
    for line in proc.stdout.splitlines():
        match = re.fullmatch(r'(\w+)\s+([\d.]+)\s+box ([-\d. ]+)', line)
        if match:
            box = [float(v) for v in match.group(3).split()]
            preds.append((match.group(1), float(match.group(2)), box))
    return preds


def test_tools_demo_draws_predictions(trained):
    """tools/demo.py draws the predictions it prints. Checked on the best
    prediction drawn alone (--score-thr at its printed score, so that no
    other box crosses its edges): the outline of its box, in its class's
    colour (matplotlib's tab10 colours in the order of the classes), lies
    on the middle of the box's left, right and bottom edges in the drawing
    (a 128 x 128 image drawn 4x, at 512 x 512)."""
    import cv2
    import matplotlib
    tmp, _ = trained
    image = tmp / 'data/val/000001.png'
    checkpoint = tmp / 'work/epoch_1.pth'
    everything = _run_demo_tool(image, checkpoint, tmp / 'all.png', 0)
    assert everything, 'no prediction at --score-thr 0'
    best = max(score for _, score, _ in everything)
    out = tmp / 'drawn.png'
    # printed to 3 decimals: the best one, and any within that rounding
    preds = _run_demo_tool(image, checkpoint, out, best - 5e-4)
    assert 1 <= len(preds) < len(everything)
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape[:2] == (512, 512)
    scale = 512 / cv2.imread(str(image)).shape[0]
    for name, score, (x1, y1, x2, y2) in preds:
        rgb = matplotlib.colormaps['tab10'](SHAPES_CLASSES.index(name))[:3]
        bgr = np.array(rgb[::-1]) * 255
        for x, y in (((x1), (y1 + y2) / 2), (x2, (y1 + y2) / 2),
                     ((x1 + x2) / 2, y2)):
            # the nearest pixels to the edge (the line is 2 pixels wide)
            col = int(min(max(round(x * scale), 2), 509))
            row = int(min(max(round(y * scale), 2), 509))
            patch = drawn[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3)
            distance = np.abs(patch - bgr).max(axis=1).min()
            assert distance <= 8, (name, score, (x, y), patch, bgr)


def test_predict_image_names_a_missing_file(trained, tmp_path):
    from mmrest_tools.demo import predict_image
    tmp, _ = trained
    with pytest.raises(FileNotFoundError, match='nothing.png'):
        predict_image(
            str(tmp_path / 'nothing.png'), str(DEMO_CONFIG),
            str(tmp / 'work/epoch_1.pth'), str(tmp_path / 'o.png'))


@pytest.mark.parametrize('bbox,segm,met', [(0.50, 0.45, True),
                                           (0.9, 0.9, True),
                                           (0.4999, 0.9, False),
                                           (0.9, 0.4499, False),
                                           (0.0, 0.0, False)])
def test_targets_met(bbox, segm, met):
    """The issue's targets: bbox mAP >= 0.50 and segm mAP >= 0.45."""
    from mmrest_tools.demo import targets_met
    assert targets_met({
        'coco/bbox_mAP': bbox,
        'coco/segm_mAP': segm,
        'coco/bbox_mAP_50': 1.0
    }) is met


def test_cpu_threads_one_per_available_core():
    """The demo's torch threads: the CPUs this process may run on by
    default, any count of at least one when given, torch set to it."""
    from mmrest_tools.demo import set_cpu_threads
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(1) == 1 == torch.get_num_threads()
        cpus = len(os.sched_getaffinity(0)) if hasattr(
            os, 'sched_getaffinity') else os.cpu_count()
        assert set_cpu_threads() == cpus == torch.get_num_threads()
        with pytest.raises(ValueError, match='num_threads must be >= 1'):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_without_affinity(monkeypatch):
    """Where the OS has no CPU affinity (not Linux): every CPU, or one
    where their count is unknown."""
    from mmrest_tools.demo import set_cpu_threads
    monkeypatch.delattr(os, 'sched_getaffinity', raising=False)
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: None)
    for count, threads in ((3, 3), (None, 1)):
        monkeypatch.setattr(os, 'cpu_count', lambda c=count: c)
        assert set_cpu_threads() == threads


def test_set_data_root_moves_what_lay_under_the_old_root():
    """The datasets and evaluators follow the new root; an evaluator's
    annotation file under the old root keeps its place under the new one,
    one elsewhere (an absolute path) stays where it is."""
    from mmrest_tools.demo import set_data_root
    cfg = Config.fromfile(DEMO_CONFIG)
    old = cfg.train_dataloader.dataset.data_root
    assert old and cfg.val_evaluator.ann_file.startswith(old)
    cfg.test_evaluator.ann_file = '/elsewhere/annotations/val.json'
    set_data_root(cfg, '/new/root')
    assert cfg.train_dataloader.dataset.data_root == '/new/root/'
    assert cfg.val_dataloader.dataset.data_root == '/new/root/'
    assert cfg.val_evaluator.ann_file == \
        '/new/root/annotations/instances_val.json'
    assert cfg.test_evaluator.ann_file == '/elsewhere/annotations/val.json'


def test_loss_plot_draws_the_total_and_each_loss_term(monkeypatch, tmp_path):
    """loss.png: the total loss first, then every logged term with 'loss'
    in its name; the learning rate, the gradient norm and the validation
    records are not plotted."""
    import matplotlib.pyplot as plt

    from mmrest_tools.demo import plot_loss
    figures = []
    monkeypatch.setattr(plt, 'close', figures.append)
    records = [
        dict(step=s, loss=2. / s, loss_cls=1. / s, lr=0.1, grad_norm=5.)
        for s in (1, 2)
    ] + [dict(step=2, **{'coco/bbox_mAP': 0.1})]
    plot_loss(records, str(tmp_path / 'loss.png'))
    assert (tmp_path / 'loss.png').is_file()
    lines = figures[0].axes[0].lines
    assert [line.get_label() for line in lines] == ['loss', 'loss_cls']
    assert list(lines[1].get_ydata()) == [1., 0.5]


def test_instances_without_masks_are_drawn_as_boxes():
    """draw_instances with boxes and labels only (a detector without a
    mask head): the image as it is, one box per instance above the
    threshold."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmengine.structures import InstanceData

    from mmrest_tools.demo import draw_instances
    image = np.random.RandomState(0).randint(0, 256, (32, 48, 3), np.uint8)
    boxes = InstanceData(
        bboxes=torch.tensor([[2., 2., 20., 20.], [5., 5., 30., 25.]]),
        labels=torch.tensor([0, 2]),
        scores=torch.tensor([0.9, 0.2]))
    fig, ax = plt.subplots()
    try:
        draw_instances(ax, image, boxes, SHAPES_CLASSES, score_thr=0.5)
        drawn = np.asarray(ax.images[0].get_array())
        assert np.allclose(drawn, image / 255.)
        assert len(ax.patches) == 1 and not ax.patches[0].get_fill()
    finally:
        plt.close(fig)


def test_demo_config_twice_in_one_work_dir(tmp_path):
    """The demo run again with the same work dir (kept between runs)."""
    from mmrest_tools.demo import _demo_config
    work = tmp_path / 'demo'
    for _ in range(2):
        cfg = _demo_config(DEMO_CONFIG, str(work), None, None)
        assert cfg.work_dir == str(work) and work.is_dir()


def test_segmentation_summary_leaves_out_classes_without_an_iou(capsys):
    """A class absent from the validation set has no IoU (None): the
    summary lists the others."""
    from mmrest_tools.demo import _print_summary
    summary = dict(
        mIoU=0.5,
        aAcc=0.9,
        IoU=dict(circle=0.5, star=None),
        time_s=dict(per_iteration=0.1, cpu_per_iteration=0.2))
    _print_summary(summary, True, dict(mIoU=0.6), 65., 1., 10, 0.5, 'w')
    out = capsys.readouterr().out
    assert 'IoU: circle 0.500\n' in out  # and nothing for star
    assert 'target mIoU >= 0.6: NOT reached' in out


def test_demo_step_time_runs_each_model_on_the_same_batches(tmp_path):
    """tools/demo_step_time.py's timing: the same config under two names
    gives the same losses step by step (same batches, same start, same
    random state), the parameters are the detector's, the median leaves
    out the warm-up."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmrest_tools.demo_step_time import time_training_steps
    generate_shapes_coco(str(tmp_path / 'data'), seed=0, **SMALL)
    twin = tmp_path / 'twin.py'
    twin.write_text(f'_base_ = [{str(DEMO_CONFIG)!r}]\n')
    configs = [str(DEMO_CONFIG), str(twin)]
    res = time_training_steps(configs, 4, str(tmp_path / 'data'))
    assert list(res) == configs
    first, second = res.values()
    assert first['losses'] == second['losses']
    assert len(set(first['losses'])) == 4  # four steps on changing batches
    register_all_modules()
    params = sum(
        p.numel()
        for p in MODELS.build(Config.fromfile(DEMO_CONFIG).model).parameters())
    for r in res.values():
        assert r['params'] == params
        assert len(r['times']) == 4 and min(r['times']) > 0
        assert r['median_s'] == sorted(r['times'][1:])[1]


def test_demo_step_time_refuses_bad_arguments(tmp_path, capsys):
    from mmrest_tools import demo_step_time
    config = str(DEMO_CONFIG)
    for argv, match in (([config, '--rounds',
                          '1'], 'rounds must be an integer of at least 2'),
                        ([config, '--threads', '0'], '--threads must be'),
                        ([config, config], 'name each config once')):
        with pytest.raises(SystemExit):
            demo_step_time.main(argv)
        assert match in capsys.readouterr().err
    with pytest.raises(ValueError, match='rounds must be an integer'):
        demo_step_time.time_training_steps([config], 1)
    # no data set: the missing path named before any step
    with pytest.raises(FileNotFoundError, match='instances_train.json'):
        demo_step_time.time_training_steps([config], 2, str(tmp_path / 'none'))


def test_demo_step_time_prints_each_config(monkeypatch, capsys):
    from mmrest_tools import demo_step_time
    calls = []

    def fake(configs, rounds, data_root):
        calls.append((configs, rounds, data_root))
        return {'a.py': dict(params=29_712_345, median_s=2.6318)}

    monkeypatch.setattr(demo_step_time, 'time_training_steps', fake)
    assert demo_step_time.main(
        ['a.py', '--rounds', '3', '--threads', '1', '--data-root', 'd']) == 0
    assert calls == [(['a.py'], 3, 'd')]
    assert capsys.readouterr().out == (
        'a.py: 29.71 M parameters, median step 2.632 s (1 threads)\n')
