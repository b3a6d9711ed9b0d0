"""Fine-tuning on a COCO-format data set of one's own
(configs/custom/, docs/custom_dataset.md): the config's recipe, a run of
tools/train.py from a detector checkpoint on a generated set with other
classes, and the errors that stop a run before it starts (wrong class
counts or names, missing annotation or image files)."""
import json
import sys

import pytest
import torch
from _helpers import ROOT, run_program, scheduled_lrs
from mmengine.config import Config

from mmrest.synthetic import generate_shapes_coco

CONFIG = ROOT / 'configs/custom' / \
    'mask-rcnn_restv2-tiny_fpn_ft-12e_custom-coco.py'
# The paper config it fine-tunes (the detector of load_from was trained so).
COCO_CONFIG = ROOT / 'configs/mask_rcnn/mask-rcnn_restv2-tiny_fpn_3x_coco.py'
# The custom set's classes, as its annotation files name them, in their
# order, and the category ids the files give them (any ids: mmdet maps them).
CLASSES = ('bolt', 'nut', 'washer')
CATEGORY_IDS = (7, 3, 12)


def write_custom_coco(root, splits, seed=0):
    """A COCO-format set of a user's own: the shapes generator's images and
    instances (64 x 64) under ``CLASSES`` with ``CATEGORY_IDS`` (the 4
    shapes folded onto 3 classes), in the layout the config expects;
    nothing of the generator's own record left in the files."""
    files = generate_shapes_coco(
        str(root),
        splits=splits,
        image_size=(64, 64),
        max_objects=3,
        object_size=(16, 32),
        seed=seed)
    for path in files.values():
        with open(path) as f:
            data = json.load(f)
        data.pop('info')
        data['categories'] = [
            dict(id=i, name=name, supercategory='part')
            for i, name in zip(CATEGORY_IDS, CLASSES)
        ]
        for ann in data['annotations']:
            ann['category_id'] = CATEGORY_IDS[
                min(ann['category_id'], len(CLASSES)) - 1]
        with open(path, 'w') as f:
            json.dump(data, f)
    return files


def data_options(root):
    """What a user changes to point the config at the set in ``root``."""
    root = str(root).rstrip('/') + '/'
    return {
        'train_dataloader.dataset.data_root': root,
        'val_dataloader.dataset.data_root': root,
        'test_dataloader.dataset.data_root': root,
        'val_evaluator.ann_file': root + 'annotations/instances_val.json',
        'test_evaluator.ann_file': root + 'annotations/instances_val.json',
        # loading in the test process: no worker processes
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'val_dataloader.num_workers': 0,
        'val_dataloader.persistent_workers': False,
        'test_dataloader.num_workers': 0,
        'test_dataloader.persistent_workers': False,
    }


def flat(options):
    return [f'{k}={v}' for k, v in options.items()]


@pytest.fixture(scope='module')
def custom_set(tmp_path_factory):
    root = tmp_path_factory.mktemp('custom')
    write_custom_coco(root, dict(train=2, val=2))
    return root


@pytest.fixture(scope='module')
def coco_detector(tmp_path_factory):
    """A COCO detector checkpoint (80 classes) of the paper config's model,
    as tools/model_converters/detectron2_to_mmdet.py writes one: freshly
    built weights saved with mmengine's save_checkpoint."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
    register_all_modules()
    cfg = Config.fromfile(COCO_CONFIG)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    path = tmp_path_factory.mktemp('detector') / 'mask-rcnn_restv2-tiny.pth'
    save_checkpoint(
        dict(
            state_dict=weights_to_cpu(model.state_dict()),
            meta=dict(note='a freshly built COCO detector')), str(path))
    return path


# ------------------------------------------------------------------ config
def test_config_is_the_paper_model_with_your_classes():
    cfg = Config.fromfile(CONFIG)
    coco = Config.fromfile(COCO_CONFIG)
    assert tuple(cfg.metainfo.classes) == CLASSES
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.type == 'CocoDataset'
        assert tuple(dataset.metainfo.classes) == CLASSES
        assert dataset.data_root == 'data/custom/'
    # every head that predicts classes, and only those, changed
    heads = cfg.model.roi_head
    assert heads.bbox_head.num_classes == len(CLASSES)
    assert heads.mask_head.num_classes == len(CLASSES)
    model, base = cfg.model.to_dict(), coco.model.to_dict()
    for m in (model, base):
        m['roi_head']['bbox_head'].pop('num_classes')
        m['roi_head']['mask_head'].pop('num_classes')
    assert model == base
    assert cfg.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint='checkpoints/restv2_tiny_224.pth')
    assert cfg.load_from == 'checkpoints/mask-rcnn_restv2-tiny_d2.pth'
    assert cfg.optim_wrapper == coco.optim_wrapper
    assert cfg.train_pipeline == coco.train_pipeline
    assert cfg.val_evaluator.classwise is True
    assert set(cfg.val_evaluator.metric) == {'bbox', 'segm'}


def _schedule(cfg):
    return dict(
        train_cfg=cfg.train_cfg.to_dict(),
        sampler=cfg.train_dataloader.sampler.to_dict(),
        param_scheduler=[dict(s) for s in cfg.param_scheduler],
        checkpoint=cfg.default_hooks.checkpoint.to_dict(),
        log_by_epoch=cfg.log_processor.by_epoch)


def test_schedule_is_set_in_full(tmp_path):
    """The config's own epoch-based schedule, whatever the paper config's
    loop: the same on a base turned iteration-based (an infinite sampler,
    checkpoints, logs and lr steps by iteration)."""
    cfg = Config.fromfile(CONFIG)
    schedule = _schedule(cfg)
    assert schedule['train_cfg'] == dict(
        type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
    assert schedule['sampler'] == dict(type='DefaultSampler', shuffle=True)
    assert schedule['checkpoint']['by_epoch'] is True
    assert schedule['checkpoint']['interval'] == 1
    assert schedule['log_by_epoch'] is True
    assert all(s['by_epoch'] for s in schedule['param_scheduler'])

    base = tmp_path / 'iter_base.py'
    base.write_text(
        f'_base_ = {str(COCO_CONFIG)!r}\n'
        'train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", '
        'max_iters=90000, val_interval=5000)\n'
        'train_dataloader = dict(sampler=dict(type="InfiniteSampler"))\n'
        'param_scheduler = [dict(type="MultiStepLR", by_epoch=False, '
        'begin=0, end=90000, milestones=[60000, 80000])]\n'
        'default_hooks = dict(checkpoint=dict(by_epoch=False, '
        'interval=5000))\n'
        'log_processor = dict(by_epoch=False)\n')
    iter_base = Config.fromfile(base)
    assert iter_base.train_cfg.type == 'IterBasedTrainLoop'
    text = CONFIG.read_text()
    line = "_base_ = '../mask_rcnn/mask-rcnn_restv2-tiny_fpn_3x_coco.py'"
    assert line in text
    copy = tmp_path / CONFIG.name
    copy.write_text(text.replace(line, f'_base_ = {str(base)!r}'))
    assert _schedule(Config.fromfile(copy)) == schedule


def test_a_learning_rate_warm_up_of_one_epoch():
    """From 0.001 x lr to lr over the first epoch (mmengine steps the
    converted scheduler every iteration), lr / 10 after epochs 8 and 11."""
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(CONFIG)
    optim_cfg = dict(cfg.optim_wrapper, type='OptimWrapper')
    optim_cfg.pop('loss_scale')
    optim = build_optim_wrapper(torch.nn.Linear(2, 2), optim_cfg)
    epoch_len = 7
    lrs = scheduled_lrs(optim, cfg.param_scheduler,
                        cfg.train_cfg.max_epochs * epoch_len, epoch_len)
    lr = 1e-4
    assert lrs[0] == pytest.approx(lr * 0.001)
    assert all(a < b for a, b in zip(lrs[:epoch_len], lrs[1:epoch_len]))
    assert lrs[epoch_len] == pytest.approx(lr)
    assert lrs[8 * epoch_len - 1] == pytest.approx(lr)
    assert lrs[8 * epoch_len] == pytest.approx(lr / 10)
    assert lrs[11 * epoch_len] == pytest.approx(lr / 100)


# -------------------------------------------------------- a fine-tuning run
@pytest.fixture(scope='module')
def finetuned(custom_set, coco_detector, tmp_path_factory):
    """tools/train.py on the custom set from the COCO detector: 2 epochs of
    one batch of 2 images, evaluated after each, run from a folder with no
    ImageNet checkpoint (the detector holds the backbone)."""
    tmp = tmp_path_factory.mktemp('finetune')
    work = tmp / 'work'
    options = {
        **data_options(custom_set),
        'load_from': str(coco_detector),
        'train_cfg.max_epochs': 2,
        'default_hooks.logger.interval': 1,
        # a few iterations give no score above the default 0.05: keep all
        # detections, so that CocoMetric has some to score
        'model.test_cfg.rcnn.score_thr': 0.0,
        'visualizer.name': f'visualizer_{tmp.name}',
    }
    return work, run_program([
        sys.executable, ROOT / 'tools/train.py', CONFIG, '--work-dir', work,
        '--no-amp', '--cfg-options', *flat(options)
    ],
                             cwd=tmp,
                             timeout=1800).output


def _records(work):
    (path, ) = work.glob('*/vis_data/scalars.json')
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finetuning_trains_and_evaluates_with_your_classes(finetuned):
    work, output = finetuned
    records = _records(work)
    train = [r for r in records if 'loss' in r]
    assert [r['iter'] for r in train] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r['loss'])) for r in train)
    val = [r for r in records if 'coco/bbox_mAP' in r]
    assert [r['step'] for r in val] == [1, 2]  # after each epoch
    for record in val:
        for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
            assert 0 <= record[key] <= 1
        # classwise AP, under the set's class names
        for name in CLASSES:
            assert f'coco/{name}_precision' in record
    # mmdet's per-class table in the log names them too
    for name in CLASSES:
        assert f'| {name}' in output
    # the ImageNet file is missing, and not needed: the detector holds the
    # backbone
    assert 'is missing and not needed' in output
    assert (work / 'epoch_2.pth').is_file()
    assert (work / 'best_coco_segm_mAP_epoch_1.pth').is_file() or \
        (work / 'best_coco_segm_mAP_epoch_2.pth').is_file()


def test_finetuning_starts_from_the_detector(finetuned, coco_detector):
    """Every weight of the detector was loaded except the heads' class
    layers, which have the custom set's shapes: after 2 iterations at the
    warm-up's lr (about 1e-7) the parameters are the detector's to within
    a few lr steps, where a fresh initialisation differs by 1e-2 and more.
    The checkpoint records the set's classes for the inferencers."""
    from mmrest.checkpoint import load_checkpoint_file
    work, _ = finetuned
    tuned = load_checkpoint_file(str(work / 'epoch_2.pth'))
    assert tuple(tuned['meta']['dataset_meta']['classes']) == CLASSES
    tuned = tuned['state_dict']
    start = load_checkpoint_file(str(coco_detector))['state_dict']
    assert tuned.keys() == start.keys()
    class_layers = {
        'roi_head.bbox_head.fc_cls.weight': (len(CLASSES) + 1, 1024),
        'roi_head.bbox_head.fc_cls.bias': (len(CLASSES) + 1, ),
        'roi_head.bbox_head.fc_reg.weight': (4 * len(CLASSES), 1024),
        'roi_head.bbox_head.fc_reg.bias': (4 * len(CLASSES), ),
        'roi_head.mask_head.conv_logits.weight': (len(CLASSES), 256, 1, 1),
        'roi_head.mask_head.conv_logits.bias': (len(CLASSES), ),
    }
    for key, shape in class_layers.items():
        assert tuple(tuned[key].shape) == shape, key
        assert start[key].shape[0] > shape[0]  # COCO's 80 classes
    statistics = ('running_mean', 'running_var', 'num_batches_tracked')
    compared = 0
    for key, value in start.items():
        if key in class_layers or key.endswith(statistics):
            continue
        assert torch.allclose(tuned[key], value, rtol=0, atol=1e-5), key
        compared += 1
    assert compared > 300
    assert any(k.startswith('backbone.stage3') for k in start)


# ------------------------------------------- errors before training starts
def _setup(*argv):
    from mmrest_tools.launch import parse_args, setup_train_cfg, train_parser
    return setup_train_cfg(parse_args(train_parser(), [str(a) for a in argv]))


@pytest.fixture
def no_runner(monkeypatch):
    """Fails the test if tools/train.py gets as far as building a Runner."""

    def build_runner(cfg):
        raise AssertionError('a Runner was built')

    monkeypatch.setattr('mmrest_tools.launch.build_runner', build_runner)


def _train(tmp_path, custom_set, coco_detector, **options):
    from mmrest_tools.launch import train
    train([
        str(CONFIG), '--work-dir',
        str(tmp_path / 'work'), '--no-amp', '--cfg-options',
        *flat({
            **data_options(custom_set), 'load_from': str(coco_detector),
            **options
        })
    ])


def test_correct_set_passes_the_checks(custom_set, coco_detector, tmp_path,
                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _setup(
        CONFIG, '--no-amp', '--cfg-options',
        *flat({
            **data_options(custom_set), 'load_from': str(coco_detector)
        }))
    assert cfg.model.backbone.init_cfg is None  # from the detector


@pytest.mark.parametrize('head', ['bbox_head', 'mask_head'])
def test_wrong_class_count_stops_before_training(head, custom_set,
                                                 coco_detector, tmp_path,
                                                 monkeypatch, no_runner):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        _train(tmp_path, custom_set, coco_detector,
               **{f'model.roi_head.{head}.num_classes': 80})
    message = str(error.value)
    assert 'train_dataloader.dataset has 3 classes' in message
    assert "'bolt', 'nut', 'washer'" in message
    assert f'model.roi_head.{head}.num_classes = 80' in message
    assert 'Set num_classes=3 in every head listed' in message
    other = 'mask_head' if head == 'bbox_head' else 'bbox_head'
    assert other not in message  # the right head is not named
    assert not (tmp_path / 'work').exists()


def test_classes_changed_without_the_heads_stop_before_training(
        custom_set, coco_detector, tmp_path, monkeypatch, no_runner):
    """Two classes of the three in the data sets' metainfo (a subset is
    what mmdet trains on), the heads left at 3."""
    monkeypatch.chdir(tmp_path)
    two = "('bolt','nut')"
    with pytest.raises(ValueError) as error:
        _train(
            tmp_path, custom_set, coco_detector, **{
                f'{s}_dataloader.dataset.metainfo.classes': two
                for s in ('train', 'val', 'test')
            })
    message = str(error.value)
    assert 'train_dataloader.dataset has 2 classes' in message
    assert 'model.roi_head.bbox_head.num_classes = 3' in message
    assert 'model.roi_head.mask_head.num_classes = 3' in message


def test_misspelt_or_reordered_classes_stop_before_training(
        custom_set, coco_detector, tmp_path, monkeypatch, no_runner):
    """mmdet would drop a misspelt class without a word, and numbers the
    classes in the annotation file's order."""
    monkeypatch.chdir(tmp_path)
    for classes, expected in (
        ("('bolt','nut','washr')",
         "train_dataloader.dataset.metainfo.classes: 'washr' not among "
         "the categories ('bolt', 'nut', 'washer') of"),
        ("('nut','bolt','washer')",
         "train_dataloader.dataset.metainfo.classes lists 'nut', "
         "'bolt', 'washer', but mmdet numbers the classes in the order "
         "of the categories ('bolt', 'nut', 'washer') of")):
        with pytest.raises(ValueError) as error:
            _train(
                tmp_path, custom_set, coco_detector, **{
                    f'{s}_dataloader.dataset.metainfo.classes': classes
                    for s in ('train', 'val', 'test')
                })
        message = str(error.value)
        assert expected in message
        assert "categories ('bolt', 'nut', 'washer')" in message
        assert 'annotations/instances_train.json' in message
        assert 'val_dataloader.dataset.metainfo.classes' in message


def test_train_and_val_classes_must_agree(custom_set, coco_detector, tmp_path,
                                          monkeypatch, no_runner):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
            ValueError,
            match=r"val_dataloader.dataset has the "
            r"classes 'bolt', 'nut', train_dataloader.dataset "
            r"'bolt', 'nut', 'washer'"):
        _train(tmp_path, custom_set, coco_detector,
               **{'val_dataloader.dataset.metainfo.classes': "('bolt','nut')"})


def test_missing_annotation_file_stops_before_training(custom_set,
                                                       coco_detector, tmp_path,
                                                       monkeypatch, no_runner):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        _train(
            tmp_path, custom_set, coco_detector, **{
                'train_dataloader.dataset.ann_file':
                'annotations/instances_training.json'
            })
    message = str(error.value)
    assert "train_dataloader.dataset.ann_file: " \
        f"'{custom_set}/annotations/instances_training.json' does not " \
        "exist" in message
    assert 'val_dataloader' not in message


def test_tools_test_checks_the_test_split(custom_set, coco_detector, tmp_path,
                                          monkeypatch):
    """tools/test.py checks the test split's classes before testing."""
    from mmrest_tools.launch import parse_args, setup_test_cfg, test_parser
    monkeypatch.chdir(tmp_path)

    def setup(**options):
        argv = [
            str(CONFIG),
            str(coco_detector), '--cfg-options', *flat({
                **data_options(custom_set),
                **options
            })
        ]
        return setup_test_cfg(parse_args(test_parser(), argv))

    assert setup().load_from == str(coco_detector)
    with pytest.raises(
            ValueError,
            match=r"test_dataloader.dataset.metainfo"
            r".classes: 'washr' not among the categories"):
        setup(**{
            'test_dataloader.dataset.metainfo.classes':
            "('bolt','nut','washr')"
        })
    with pytest.raises(
            ValueError, match=r'model.roi_head.bbox_head.'
            r'num_classes = 4'):
        setup(**{'model.roi_head.bbox_head.num_classes': 4})


def test_missing_image_files_stop_before_training(coco_detector, tmp_path,
                                                  monkeypatch, no_runner):
    """The annotation file lists images the folder lacks: mmdet would fail
    only at the first of them that a dataloader worker reads."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / 'set'
    write_custom_coco(root, dict(train=3, val=2), seed=1)
    (root / 'train/000002.png').unlink()
    (root / 'val/000001.png').rename(root / 'val/000001.jpg')
    with pytest.raises(FileNotFoundError) as error:
        _train(tmp_path, root, coco_detector)
    message = str(error.value)
    assert "train_dataloader.dataset.data_prefix.img: 1 of the 3 images " \
        f"that '{root}/annotations/instances_train.json' lists are not in " \
        f"'{root}/train/': '000002.png'" in message
    assert "val_dataloader.dataset.data_prefix.img: 1 of the 2 images " \
        f"that '{root}/annotations/instances_val.json' lists are not in " \
        f"'{root}/val/': '000001.png'" in message
    assert not (tmp_path / 'work').exists()


def test_det_inferencer_names_your_classes(finetuned, custom_set, tmp_path):
    """mmdet's DetInferencer on the fine-tuned checkpoint (a Runner's
    checkpoint: loaded under mmrest's weights-only allow-list, as
    docs/demo.md says) takes the classes from it."""
    from mmdet.apis import DetInferencer

    from mmrest.checkpoint import mmengine_safe_loading
    work, _ = finetuned
    cfg = Config.fromfile(CONFIG)
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # as in the run: 2 iterations
    with mmengine_safe_loading():
        inferencer = DetInferencer(
            model=cfg, weights=str(work / 'epoch_2.pth'), device='cpu')
    assert tuple(inferencer.model.dataset_meta['classes']) == CLASSES
    out = inferencer(
        str(custom_set / 'val/000001.png'),
        out_dir=str(tmp_path),
        no_save_pred=False,
        pred_score_thr=0.0)
    labels = out['predictions'][0]['labels']
    assert labels and set(labels) <= {0, 1, 2}
    assert (tmp_path / 'vis/000001.png').is_file()


# ------------------------------------------ the class check on other models
def _mm_config(tmp_path, base):
    """One of mmdet's or mmseg's own configs, as they ship it."""
    path = tmp_path / 'config.py'
    path.write_text(f'_base_ = {base!r}\n')
    return Config.fromfile(path)


@pytest.mark.parametrize(
    'base,heads,change,named',
    [
        ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', [
            'model.roi_head.bbox_head[0].num_classes',
            'model.roi_head.bbox_head[1].num_classes',
            'model.roi_head.bbox_head[2].num_classes',
            'model.roi_head.mask_head.num_classes'
        ], 'model.roi_head.bbox_head.1.num_classes',
         'model.roi_head.bbox_head[1].num_classes = 5'),
        ('mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', [
            'model.panoptic_head.num_things_classes + num_stuff_classes',
            'model.panoptic_fusion_head.num_things_classes + num_stuff_classes'
        ], 'model.panoptic_head.num_stuff_classes',
         'model.panoptic_head.num_things_classes + num_stuff_classes = 85'),
        ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', [
            'model.bbox_head.num_classes'
        ], 'model.bbox_head.num_classes', 'model.bbox_head.num_classes = 5'),
        # HTC's semantic head predicts COCO-stuff's 183 classes: not compared
        ('mmdet::htc/htc_r50_fpn_1x_coco.py', [
            'model.roi_head.bbox_head[0].num_classes',
            'model.roi_head.bbox_head[1].num_classes',
            'model.roi_head.bbox_head[2].num_classes',
            'model.roi_head.mask_head[0].num_classes',
            'model.roi_head.mask_head[1].num_classes',
            'model.roi_head.mask_head[2].num_classes'
        ], 'model.roi_head.mask_head.2.num_classes',
         'model.roi_head.mask_head[2].num_classes = 5'),
    ])
def test_class_check_on_mmdet_detectors(base, heads, change, named, tmp_path):
    """mmdet's own COCO configs pass (every head has COCO's 80 classes; the
    RPN's and HTC's semantic head's are not compared); a head changed is
    named, and only it."""
    from mmrest_tools.prerun_checks import check_classes, head_class_counts
    cfg = _mm_config(tmp_path, base)
    counts = head_class_counts(cfg.model)
    assert [key for key, _ in counts] == heads
    assert all(n == 80 for _, n in counts)
    check_classes(cfg, ('train', 'val', 'test'))  # no data needed
    cfg.merge_from_dict({change: 5})
    with pytest.raises(ValueError) as error:
        check_classes(cfg, ('train', ))
    message = str(error.value)
    assert 'train_dataloader.dataset has 80 classes (the classes of ' \
        'CocoDataset' in message
    assert named in message
    assert message.count(' = ') == 1


def test_class_check_on_mmseg_segmentors(tmp_path):
    """mmseg: the decode and auxiliary heads against the dataset class's
    classes (ADE20K's 150); the shapes demo's 5 from its metainfo."""
    from mmrest_tools.prerun_checks import check_classes, head_class_counts
    cfg = _mm_config(tmp_path,
                     'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py')
    assert head_class_counts(cfg.model) == [
        ('model.decode_head.num_classes', 150),
        ('model.auxiliary_head.num_classes', 150)
    ]
    check_classes(cfg, ('train', 'val', 'test'))
    demo = Config.fromfile(ROOT / 'configs/demo/'
                           'rest-lite_upernet_1xb8-1900it_shapes-96x96.py')
    check_classes(demo, ('train', 'val'))
    demo.model.auxiliary_head.num_classes = 150
    with pytest.raises(
            ValueError,
            match=r"train_dataloader.dataset has 5 classes "
            r"\(metainfo.classes: 'background', 'circle', "
            r"'square', 'triangle', 'star'\), but\n    "
            r"model.auxiliary_head.num_classes = 150\n"):
        check_classes(demo, ('train', ))


def test_class_check_leaves_classes_it_cannot_read(tmp_path):
    """Classes given otherwise than as names (a file name, numbers), an
    annotation file given otherwise than as one path, and a split without
    its loop are not checked, rather than misread (a file name as its
    letters) or crashing."""
    from mmrest_tools.prerun_checks import _check_categories, check_classes
    demo = Config.fromfile(ROOT / 'configs/demo/'
                           'rest-lite_upernet_1xb8-1900it_shapes-96x96.py')
    for classes in ('classes.txt', [0, 1, 2, 3, 4], ('a', 1)):
        demo.train_dataloader.dataset.metainfo = dict(classes=classes)
        check_classes(demo, ('train', ))
    # a split whose loop the Runner does not build is not checked
    demo = Config.fromfile(ROOT / 'configs/demo/'
                           'rest-lite_upernet_1xb8-1900it_shapes-96x96.py')
    demo.val_dataloader.dataset.metainfo = dict(classes=('a', 'b'))
    with pytest.raises(ValueError, match='val_dataloader'):
        check_classes(demo, ('val', ))
    demo.val_cfg = None
    check_classes(demo, ('val', ))
    problems = []
    for ann_file in (['a.json', 'b.json'], 7, None, ''):
        _check_categories(('cat', ),
                          dict(data_root=str(tmp_path), ann_file=ann_file),
                          'train_dataloader.dataset', problems)
    assert problems == []


def test_class_check_names_duplicate_categories_and_counts_things(tmp_path):
    """An annotation file with two categories of one name (mmdet would give
    them separate labels) is named; a panoptic head without
    ``num_stuff_classes`` counts its things alone (mmdet's default 0); a
    listing of exactly as many classes as it shows (10) is whole, without
    "in all"."""
    from mmrest_tools.prerun_checks import check_classes, head_class_counts
    names = list('abcdefghij')
    ann = tmp_path / 'instances.json'

    def write_categories(categories):
        ann.write_text(
            json.dumps(
                dict(
                    images=[],
                    annotations=[],
                    categories=[
                        dict(id=i + 1, name=n)
                        for i, n in enumerate(categories)
                    ])))

    write_categories(names + ['b'])
    model = dict(head=dict(num_things_classes=10))
    assert head_class_counts(model) == [
        ('model.head.num_things_classes + num_stuff_classes', 10)
    ]
    cfg = dict(
        model=model,
        train_cfg=dict(),
        train_dataloader=dict(
            dataset=dict(
                type='CocoDataset',
                ann_file=str(ann),
                metainfo=dict(classes=tuple(names)))))
    with pytest.raises(ValueError) as error:
        check_classes(cfg, ('train', ))
    message = str(error.value)
    assert f"{str(ann)!r} has more than one category named 'b'; " in message
    assert 'num_stuff_classes = ' not in message  # 10 classes, 10 things
    write_categories(names)
    model['head']['num_things_classes'] = 9
    with pytest.raises(ValueError) as error:
        check_classes(cfg, ('train', ))
    listed = ', '.join(repr(n) for n in names)
    assert f'has 10 classes (metainfo.classes: {listed}), but\n' in str(
        error.value)
