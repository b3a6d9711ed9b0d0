"""A tiny ADE20K written by the test in mmseg's layout
(``images/{training,validation}/*.jpg``,
``annotations/{training,validation}/*.png``, 0 = "other", classes 1..150)
read through the ResT v2-Tiny UperNet config's real ``ADE20KDataset`` and
pipelines, evaluated by its ``IoUMetric`` single-scale and through its
multi-scale + flip path (``SegTTAModel`` and the config's ``tta_pipeline``,
two scales to stay fast), against an mIoU the test computes from the label
PNGs itself; and ``tools/test.py --tta --show-dir --out`` on it with a
checkpoint of a narrow model.

The segmentor's ``encode_decode`` is replaced by a known rule: each
validation image is a flat grey, and the predicted map is one class over
the whole image, chosen by that grey. Resizing and flipping leave such a
map as it is, so the expected mIoU is exact, and it depends on every
image being paired with its own label map, on ADE20K's
``reduce_zero_label`` (label k is class k - 1; 0 is ignored) and on
IoUMetric's sums over the whole split."""
import sys
from pathlib import Path

import cv2
import mmseg  # noqa: F401  (the set-up installs it: missing fails)
import numpy as np
import pytest
import torch
from _helpers import ROOT, run_program
from mmengine.config import Config

CONFIG = (
    ROOT / 'configs/upernet/'
    'restv2-tiny_upernet_8xb2-160k_ade20k-512x512.py')
NUM_CLASSES = 150
# The validation images: (grey level, class predicted for it). The rule's
# classes: one present in the image's labels, one present elsewhere only,
# one in no label map (its IoU is 0 and it counts in the mean).
VAL = [(40, 3), (120, 149), (200, 77)]
TTA_SCALES = (1.0, 1.5)


def _label_map(rng, h, w, values):
    """Blocks of 8 x 8 pixels, each a value drawn from ``values``."""
    blocks = rng.choice(values, size=(h // 8, w // 8))
    return np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    """The data root and the validation label maps as written."""
    root = tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016'
    rng = np.random.RandomState(0)
    labels = {}
    for split, count in (('training', 2), ('validation', len(VAL))):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
        for i in range(count):
            name = f'ADE_{split[:5]}_{i:08d}'
            h, w = (48, 64) if i % 2 == 0 else (64, 48)
            # 0 (ignored), the first and the last class, a few others
            label = _label_map(rng, h, w, [0, 1, 4, 78, 150, 150])
            if split == 'validation':
                grey = VAL[i][0]
            else:
                grey = int(rng.randint(0, 256))
            image = np.full((h, w, 3), grey, np.uint8)
            assert cv2.imwrite(
                str(root / 'images' / split / f'{name}.jpg'), image,
                [cv2.IMWRITE_JPEG_QUALITY, 100])
            assert cv2.imwrite(
                str(root / 'annotations' / split / f'{name}.png'), label)
            if split == 'validation':
                labels[name] = label
    return root, labels


def expected_miou(labels: dict) -> float:
    """mIoU of the rule, from the label PNGs: label k is class k - 1 and 0
    is ignored; a class's IoU is its intersection over its union summed
    over the split; classes in neither the labels nor the predictions do
    not count. Computed in float64 from pixel counts."""
    inter = np.zeros(NUM_CLASSES)
    union = np.zeros(NUM_CLASSES)
    for (name, label), (_, pred_class) in zip(sorted(labels.items()), VAL):
        valid = label > 0
        gt = label[valid].astype(np.int64) - 1
        pred = np.full_like(gt, pred_class)
        for c in range(NUM_CLASSES):
            g, p = gt == c, pred == c
            inter[c] += np.sum(g & p)
            union[c] += np.sum(g | p)
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


def tiny_cfg(data_root: Path, work_dir: Path) -> Config:
    """The ResT v2-Tiny ADE20K config with a narrow backbone and heads,
    BN, the tiny set, no worker processes and two TTA scales; its
    datasets, pipelines and evaluator are the config's."""
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.arch = dict(
        embed_dims=[16, 32, 64, 128],
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8])
    cfg.model.backbone.init_cfg = None
    norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.decode_head.update(
        in_channels=[16, 32, 64, 128], channels=16, norm_cfg=norm_cfg)
    cfg.model.auxiliary_head.update(
        in_channels=64, channels=8, norm_cfg=norm_cfg)
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.data_root = str(data_root)
    (tta, ) = [t for t in cfg.tta_pipeline if t.type == 'TestTimeAug']
    resizes = tta.transforms[0]
    assert [t.scale_factor
            for t in resizes] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    tta.transforms[0] = [dict(resizes[0], scale_factor=s) for s in TTA_SCALES]
    cfg.work_dir = str(work_dir)
    return cfg


class RuleOfGrey:
    """``encode_decode`` of the segmentor: logits of one class over the
    whole input, the class of :data:`VAL` whose grey the input has. It
    records the shape and the flip of each input it sees."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def __call__(self, inputs, batch_img_metas):
        pre = self.model.data_preprocessor
        grey = (inputs * pre.std + pre.mean).flatten(1).median(dim=1).values
        logits = torch.zeros(inputs.shape[0], NUM_CLASSES, *inputs.shape[2:])
        for i, g in enumerate(grey.tolist()):
            (cls, ) = [c for level, c in VAL if abs(level - g) < 10]
            logits[i, cls] = 1.
            self.calls.append((tuple(inputs.shape[2:]),
                               bool(batch_img_metas[i].get('flip'))))
        return logits


def run_test(cfg: Config, tta: bool):
    """runner.test() with the rule in place of the network."""
    from mmengine.runner import Runner
    if tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    runner = Runner.from_cfg(cfg)
    segmentor = runner.model.module if tta else runner.model
    rule = RuleOfGrey(segmentor)
    segmentor.encode_decode = rule
    return runner.test(), rule


def test_dataset_reads_the_ade20k_layout(ade, tmp_path):
    """The config's ADE20KDataset finds the images and their label maps
    and its pipelines apply reduce_zero_label: 0 -> 255, k -> k - 1."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS
    root, labels = ade
    cfg = tiny_cfg(root, tmp_path)
    with DefaultScope.overwrite_default_scope('mmseg'):
        import mmseg.datasets  # noqa: F401 (registers the transforms)
        val = DATASETS.build(cfg.val_dataloader.dataset)
        train = DATASETS.build(cfg.train_dataloader.dataset)
    assert type(val).__name__ == 'ADE20KDataset'
    assert len(val.metainfo['classes']) == NUM_CLASSES
    assert len(val) == len(VAL) and len(train) == 2
    for i, name in enumerate(sorted(labels)):
        sample = val[i]['data_samples']
        assert Path(sample.img_path).stem == name
        gt = sample.gt_sem_seg.data[0].numpy()
        expected = labels[name].astype(np.int64) - 1
        expected[labels[name] == 0] = 255
        np.testing.assert_array_equal(gt, expected)
        # the test pipeline resizes the image (short side 512), not the gt
        assert min(sample.img_shape) == 512
    crop = train[0]  # random scale, then the config's 512 x 512 crop
    assert max(crop['inputs'].shape[1:]) <= 512
    values = set(np.unique(crop['data_samples'].gt_sem_seg.data.numpy()))
    assert values <= {0, 3, 77, 149, 255}


def test_iou_metric_single_scale(ade, tmp_path):
    root, labels = ade
    metrics, rule = run_test(tiny_cfg(root, tmp_path), tta=False)
    assert len(rule.calls) == len(VAL)
    assert all(not flip for _, flip in rule.calls)
    # IoUMetric reports percent, rounded to 2 decimals
    assert metrics['mIoU'] == pytest.approx(
        100 * expected_miou(labels), abs=0.005 + 1e-9)
    assert 0 < metrics['mIoU'] < 50  # the rule is a poor segmentor


def test_iou_metric_through_tta(ade, tmp_path):
    """SegTTAModel with the config's tta_pipeline: each image at each
    scale, as is and flipped, the logits merged back on the image."""
    root, labels = ade
    metrics, rule = run_test(tiny_cfg(root, tmp_path), tta=True)
    assert len(rule.calls) == len(VAL) * len(TTA_SCALES) * 2
    assert sum(flip for _, flip in rule.calls) == len(VAL) * len(TTA_SCALES)
    # the first image (48 x 64) at the two scales
    assert {shape for shape, _ in rule.calls[:4]} == {(48, 64), (72, 96)}
    assert metrics['mIoU'] == pytest.approx(
        100 * expected_miou(labels), abs=0.005 + 1e-9)


def test_tools_test_tta_show_dir_out(ade, tmp_path):
    """tools/test.py on the tiny set with a narrow model's checkpoint:
    --tta, --show-dir draws every validation image, --out saves the label
    maps in ADE20K's numbering (1..150)."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    root, labels = ade
    cfg = tiny_cfg(root, tmp_path / 'work')
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    checkpoint = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    config = tmp_path / 'tiny_config.py'
    cfg.dump(str(config))
    output = run_program([
        sys.executable, ROOT / 'tools/test.py', config, checkpoint, '--tta',
        '--show-dir', tmp_path / 'vis', '--out', tmp_path / 'pred',
        '--work-dir', tmp_path / 'work'
    ],
                         timeout=600).output
    assert 'mIoU' in output
    # SegVisualizationHook's names: test_<image file>_<step>
    drawn = sorted(p.stem for p in (tmp_path / 'vis').rglob('*.png'))
    assert drawn == [f'test_{name}.jpg_0' for name in sorted(labels)]
    preds = sorted((tmp_path / 'pred').glob('*.png'))
    assert [p.stem for p in preds] == sorted(labels)
    for p in preds:
        pred = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert pred.shape == labels[p.stem].shape
        assert pred.min() >= 1 and pred.max() <= NUM_CLASSES
