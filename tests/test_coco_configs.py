"""The COCO configs of the paper (RetinaNet and Mask R-CNN, ResT-S/B) and
their lite/large siblings: recipe, sizes, pipelines, one training
iteration and one CocoMetric evaluation on a tiny COCO-format set."""
import json
import uuid

import pytest
import torch
from _helpers import ROOT, scheduled_lrs
from mmengine.config import Config

DATA = ROOT / 'tests' / 'data'  # the reference data (see its README)
DETECTORS = ('retinanet', 'mask_rcnn')
ARCHS = ('lite', 'small', 'base', 'large')
ALL = [(d, a) for d in DETECTORS for a in ARCHS]
# The paper's parameter counts (docs/network.md), in millions.
PAPER_PARAMS = {
    ('retinanet', 'small'): 23.4,
    ('retinanet', 'base'): 40.5,
    ('mask_rcnn', 'small'): 33.3,
    ('mask_rcnn', 'base'): 49.8,
}
PAPER = sorted(PAPER_PARAMS)
# lite and large are not in the paper: each is its paper sibling with
# another backbone (same embedding widths, so the same neck and heads).
SIBLING = {'lite': 'small', 'large': 'base'}
DROP_PATH = {'lite': 0.1, 'small': 0.1, 'base': 0.2, 'large': 0.2}
SCALES = [(1333, s) for s in (640, 672, 704, 736, 768, 800)]


def config_path(det, arch):
    name = det.replace('_', '-')  # mask_rcnn/mask-rcnn_..., retinanet/...
    return ROOT / 'configs' / det / f'{name}_rest-{arch}_fpn_1x_coco.py'


def load(det, arch):
    return Config.fromfile(config_path(det, arch))


def count_params(det, arch, _cache={}):
    if (det, arch) not in _cache:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        cfg = load(det, arch)
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model)
        _cache[(det, arch)] = sum(p.numel() for p in model.parameters())
    return _cache[(det, arch)]


def official_backbone_params(arch):
    """Trainable parameters of the authors' classifier without its head,
    from the reference state-dict shapes (BatchNorm buffers excluded)."""
    shapes = json.loads((DATA / 'rest_v1_state_dict_shapes.json').read_text())
    total = 0
    for key, shape in shapes[f'rest_{arch}'].items():
        buffers = ('running_mean', 'running_var', 'num_batches_tracked')
        if key.startswith('head.') or key.endswith(buffers):
            continue
        total += int(torch.tensor(shape).prod())
    return total


def with_data(cfg, overrides):
    """Only the data set paths change (``tiny_coco``: the loaders run in
    the test process)."""
    cfg.merge_from_dict(overrides)
    return cfg


# ----------------------------------------------------------------- recipe
@pytest.mark.parametrize('det,arch', ALL)
def test_recipe(det, arch):
    cfg = load(det, arch)
    assert cfg.custom_imports == dict(
        imports=['mmrest'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == 'ResT' and backbone.arch == arch
    assert backbone.init_cfg == dict(
        type='Pretrained', checkpoint=f'checkpoints/rest_{arch}.pth')
    assert backbone.drop_path_rate == DROP_PATH[arch]
    if det == 'retinanet':  # stages 2-4, P6/P7 from the last stage's output
        assert backbone.out_indices == (1, 2, 3)
        assert cfg.model.neck.start_level == 0
        assert cfg.model.neck.add_extra_convs == 'on_input'
        assert cfg.model.neck.num_outs == 5
    else:
        assert backbone.out_indices == (0, 1, 2, 3)
        assert cfg.model.neck.num_outs == 5
    optim = cfg.optim_wrapper
    assert optim.type == 'OptimWrapper'
    assert optim.optimizer.type == 'AdamW'
    assert optim.optimizer.lr == 1e-4
    assert optim.optimizer.weight_decay == 0.05
    # Mask R-CNN clips the 2-norm of all the model's grads at 0.01
    # (Base-RCNN-FPN.yaml); RetinaNet does not clip (Base-RetinaNet.yaml).
    # Every parameter's lr and decay: test_recipe.py.
    if det == 'mask_rcnn':
        assert optim.clip_grad == dict(max_norm=0.01, norm_type=2)
    else:
        assert optim.get('clip_grad') is None
    assert optim.paramwise_cfg == dict(norm_decay_mult=0.0)
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.max_iters == 90000

    train = [t.type for t in cfg.train_pipeline]
    expected = [
        'LoadImageFromFile', 'LoadAnnotations', 'RandomChoiceResize',
        'RandomFlip', 'PackDetInputs'
    ]
    if det == 'mask_rcnn':
        expected.insert(2, 'RandomCrop')
        crop = cfg.train_pipeline[2]
        assert crop.crop_type == 'relative'
        assert tuple(crop.crop_size) == (0.9, 0.9)
        assert cfg.train_pipeline[1].with_mask
    assert train == expected
    assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipeline
    resize = cfg.train_pipeline[train.index('RandomChoiceResize')]
    assert [tuple(s) for s in resize.scales] == SCALES and resize.keep_ratio
    assert cfg.train_pipeline[train.index('RandomFlip')].prob == 0.5
    for loader in ('val_dataloader', 'test_dataloader'):
        (test_resize, ) = [
            t for t in cfg[loader].dataset.pipeline if t.type == 'Resize'
        ]
        assert tuple(test_resize.scale) == (1333, 800)
        assert test_resize.keep_ratio
    metrics = {'retinanet': ['bbox'], 'mask_rcnn': ['bbox', 'segm']}[det]
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.type == 'CocoMetric'
        kinds = evaluator.metric
        assert ([kinds] if isinstance(kinds, str) else list(kinds)) == metrics


@pytest.mark.parametrize('det', DETECTORS)
def test_learning_rate_schedule(det):
    """Warm-up from 0.001 x lr over 1000 iterations (detectron2's: full lr
    from iteration 1000), then lr / 10 from iterations 60,000 and 80,000 of
    90,000, stepping the schedulers as mmengine's hook does (every
    iteration; the full schedule of every config: test_recipe.py)."""
    from mmengine.optim import build_optim_wrapper
    cfg = load(det, 'small')
    optim = build_optim_wrapper(torch.nn.Linear(2, 2), cfg.optim_wrapper)
    # the lr each iteration uses; every scheduler iteration-based (an
    # epoch-based one is refused without an epoch length)
    lr = scheduled_lrs(optim, cfg.param_scheduler, cfg.train_cfg.max_iters)

    assert len(lr) == 90000
    assert lr[0] == pytest.approx(1e-7)
    # linear, detectron2's: 0.001 + 0.999 i / 1000, full lr at 1000
    warm_up = lr[:1001]
    assert all(a < b for a, b in zip(warm_up, warm_up[1:]))
    assert lr[500] == pytest.approx(1e-4 * (0.001 + 0.999 * 500 / 1000))
    assert lr[999] == pytest.approx(1e-4 * (0.001 + 0.999 * 999 / 1000))
    assert lr[1000] == pytest.approx(1e-4) and lr[1001] == pytest.approx(1e-4)
    assert lr[59999] == pytest.approx(1e-4)
    assert lr[60000] == pytest.approx(1e-5)
    assert lr[79999] == pytest.approx(1e-5)
    assert lr[80000] == pytest.approx(1e-6)
    assert lr[89999] == pytest.approx(1e-6)


@pytest.mark.parametrize('det,arch',
                         [(d, a) for d in DETECTORS for a in SIBLING])
def test_lite_and_large_change_only_the_backbone(det, arch):
    """A lite/large config is its paper sibling with another backbone."""
    cfg = load(det, arch).to_dict()
    sibling = load(det, SIBLING[arch]).to_dict()
    for c in (cfg, sibling):
        c.pop('arch'), c.pop('pretrained')
        c['model']['backbone'].pop('arch')
        c['model']['backbone']['init_cfg'].pop('checkpoint')
    assert cfg == sibling


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize('det,arch', PAPER)
def test_parameters_match_the_paper(det, arch):
    assert round(count_params(det, arch) / 1e6, 1) == PAPER_PARAMS[det, arch]


@pytest.mark.parametrize('det,arch',
                         [(d, a) for d in DETECTORS for a in SIBLING])
def test_parameters_of_lite_and_large(det, arch):
    """No paper value: the count must differ from the paper sibling's by
    exactly the difference between the authors' backbones."""
    sibling = SIBLING[arch]
    expected = count_params(det, sibling) + official_backbone_params(
        arch) - official_backbone_params(sibling)
    assert count_params(det, arch) == expected


# -------------------------------------------------------------- pipelines
@pytest.mark.parametrize('det,arch', ALL)
def test_training_pipeline(det, arch, tiny_coco):
    """The config's own pipeline: shorter side 640-800 (step 32) and, for
    Mask R-CNN, a 0.9 x 0.9 crop of the 64 x 64 image before resizing."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = with_data(load(det, arch), tiny_coco)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    crop = 58 if det == 'mask_rcnn' else 64  # int(64 * 0.9 + 0.5)
    seen = set()
    for _ in range(6):
        sample = dataset[0]['data_samples']
        h, w = sample.img_shape
        assert h == w and h in [s for _, s in SCALES]
        seen.add(h)
        assert sample.ori_shape == (64, 64)
        assert h / sample.scale_factor[0] == pytest.approx(crop, abs=0.5)
        if det == 'mask_rcnn':
            assert sample.gt_instances.masks.height == h
    assert len(seen) > 1  # the scale is drawn at random


# ------------------------------------------- training and COCO evaluation
@pytest.mark.parametrize('det,arch', PAPER)
def test_train_iteration_and_coco_evaluation(det, arch, tiny_coco):
    """One training iteration through the config's own data pipeline and
    optimizer (backbone from scratch), then a prediction evaluated by the
    config's CocoMetric. lite/large differ from these only in the backbone
    (test_lite_and_large_change_only_the_backbone)."""
    from mmdet.registry import METRICS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.evaluator import Evaluator
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    register_all_modules()
    cfg = with_data(load(det, arch), tiny_coco)
    cfg.model.backbone.init_cfg = None
    # After one iteration from scratch no score reaches the configs' 0.05
    # threshold; keep every detection so that CocoMetric has some to score.
    test_cfg = cfg.model.test_cfg
    (test_cfg.rcnn if det == 'mask_rcnn' else test_cfg).score_thr = 0.
    model = MODELS.build(cfg.model)
    model.init_weights()
    # a message hub of this test's own (the current instance from now on,
    # and the optimizer wrapper's): no value logged by an earlier test
    hub = MessageHub.get_instance(f'test_grad_norm_{uuid.uuid4().hex}')
    assert 'train/grad_norm' not in hub.log_scalars
    optim = build_optim_wrapper(model, cfg.optim_wrapper)

    # The first batch of the config's endless sampler (InfiniteSampler,
    # detectron2's TrainingSampler): listing the loader would never end.
    batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    losses = model.train_step(batch, optim)
    expected = {'loss_cls', 'loss_bbox'} if det == 'retinanet' else {
        'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'
    }
    assert expected <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert optim.message_hub is hub
    if cfg.optim_wrapper.get('clip_grad'):  # Mask R-CNN: clipped at 0.01
        grad_norm = hub.get_scalar(
            'train/grad_norm').current()  # logged by the gradient clipping
        assert grad_norm > 0
    else:  # RetinaNet: the authors clip nothing, so nothing is logged
        assert det == 'retinanet'
        assert 'train/grad_norm' not in hub.log_scalars
    changed = [
        n for n, p in model.named_parameters()
        if not torch.equal(p, before[n])
    ]
    assert any(n.startswith('backbone.stage1') for n in changed)
    assert any(n.startswith('neck.') for n in changed)

    model.eval()
    loader = Runner.build_dataloader(cfg.val_dataloader)
    evaluator = Evaluator(METRICS.build(cfg.val_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    for batch in loader:
        with torch.no_grad():
            outputs = model.val_step(batch)
        assert outputs[0].img_shape == (800, 800)
        assert len(outputs[0].pred_instances) > 0
        evaluator.process(outputs, batch)
    results = evaluator.evaluate(len(loader.dataset))
    for kind in evaluator.metrics[0].metrics:
        for key in ('mAP', 'mAP_50', 'mAP_75'):
            assert 0 <= results[f'coco/{kind}_{key}'] <= 1


def test_coco_metric_scores_ground_truth_as_perfect(tiny_coco, tmp_path):
    """The tiny set and the configs' CocoMetric agree: the ground truth,
    given as predictions, scores AP 1 for boxes and masks."""
    import numpy as np
    from mmdet.registry import METRICS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.structures import InstanceData
    from pycocotools.coco import COCO
    register_all_modules()
    cfg = with_data(load('mask_rcnn', 'small'), tiny_coco)
    coco = COCO(cfg.val_evaluator.ann_file)
    cat_ids = sorted(coco.getCatIds())
    metric = METRICS.build(cfg.val_evaluator)
    metric.dataset_meta = dict(
        classes=[c['name'] for c in coco.loadCats(cat_ids)])
    for img_id in coco.getImgIds():
        img = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        pred = InstanceData()
        pred.bboxes = torch.tensor([[x, y, x + w, y + h]
                                    for x, y, w, h in (a['bbox']
                                                       for a in anns)])
        pred.scores = torch.ones(len(anns))
        pred.labels = torch.tensor(
            [cat_ids.index(a['category_id']) for a in anns])
        pred.masks = torch.from_numpy(
            np.stack([coco.annToMask(a) for a in anns])).bool()
        sample = DetDataSample(
            metainfo=dict(
                img_id=img_id, ori_shape=(img['height'], img['width'])))
        sample.pred_instances = pred
        metric.process({}, [sample.to_dict()])
    results = metric.evaluate(len(coco.getImgIds()))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)
    assert results['coco/segm_mAP'] == pytest.approx(1.0)


def test_missing_pretrained_stops_training_before_any_iteration(
        tiny_coco, tmp_path, monkeypatch):
    """mmengine's Runner (as mmdet's own tools/train.py uses it) stops with
    an error naming the file and where to get it; no iteration runs."""
    from mmengine.runner import Runner
    monkeypatch.chdir(tmp_path)  # checkpoints/rest_lite.pth: not here
    cfg = with_data(load('retinanet', 'lite'), tiny_coco)
    cfg.work_dir = str(tmp_path / 'work')
    # mmdet's configs name their visualizer 'visualizer', and mmengine
    # reuses an instance of that name, with the folder of the test that
    # made it first: give this run its own.
    cfg.visualizer.name = f'visualizer_{tmp_path.name}'
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FileNotFoundError) as error:
        runner.train()
    message = str(error.value)
    assert 'checkpoints/rest_lite.pth' in message
    assert str(tmp_path / 'checkpoints' / 'rest_lite.pth') in message
    assert 'https://github.com/wofmanaf/ResT' in message
    assert 'model.backbone.init_cfg=None' in message
    assert runner.iter == 0
