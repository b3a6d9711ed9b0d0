"""Dataset paths that do not exist end in an error naming them, before
any training starts."""
import os.path as osp
import shutil

import pytest
import torch
from _helpers import ROOT, TINY_V1
from mmengine.config import Config

from mmrest.synthetic import generate_shapes_coco
from mmrest_tools.prerun_checks import check_data_paths

CONFIGS = [
    'configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py',
    'configs/retinanet/retinanet_rest-small_fpn_1x_coco.py',
]
SPLITS = ('train', 'val', 'test')


def _config(name):
    return Config.fromfile(osp.join(ROOT, name))


def _point_at(cfg,
              data_root,
              splits=SPLITS,
              ann='instances_{}2017.json',
              img='{}2017/'):
    """Point every split of a COCO config at ``data_root``, as a user
    would with --cfg-options."""
    data_root = str(data_root).rstrip('/') + '/'
    options = {}
    for split in splits:
        name = 'train' if split == 'train' else 'val'
        options.update({
            f'{split}_dataloader.dataset.data_root':
            data_root,
            f'{split}_dataloader.dataset.ann_file':
            'annotations/' + ann.format(name),
            f'{split}_dataloader.dataset.data_prefix':
            dict(img=img.format(name)),
        })
        if split != 'train':
            options[f'{split}_evaluator.ann_file'] = \
                data_root + 'annotations/' + ann.format(name)
    cfg.merge_from_dict(options)
    return cfg


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    generate_shapes_coco(
        str(root), splits={
            'train': 2,
            'val': 1
        }, image_size=(64, 64))
    return root


@pytest.mark.parametrize('config', CONFIGS)
def test_missing_data_root_names_every_path(config, tmp_path):
    missing = tmp_path / 'no_such_coco'
    cfg = _point_at(_config(config), missing)
    with pytest.raises(FileNotFoundError) as info:
        check_data_paths(cfg, ('train', 'val'))
    message = str(info.value)
    for split in ('train', 'val'):
        assert f"{split}_dataloader.dataset.ann_file: " \
            f"'{missing}/annotations/instances_{split}2017.json' " \
            "does not exist" in message
        assert f"{split}_dataloader.dataset.data_prefix.img: " \
            f"'{missing}/{split}2017/' does not exist" in message
        assert f"{split}_dataloader.dataset.data_root: '{missing}/' does " \
            'not exist' in message
    assert f"val_evaluator.ann_file: '{missing}/annotations/" \
        "instances_val2017.json' does not exist" in message
    # Training does not read the test split.
    assert 'test_dataloader' not in message
    assert 'test_evaluator' not in message


@pytest.mark.parametrize('config', CONFIGS)
def test_complete_data_passes_and_a_missing_image_folder_is_named(
        config, shapes):
    cfg = _point_at(
        _config(config), shapes, ann='instances_{}.json', img='{}/')
    check_data_paths(cfg, SPLITS)  # everything there: no error

    # The annotations are there but the training images are not: mmdet
    # would only fail at the first image a worker reads.
    cfg.train_dataloader.dataset.data_prefix.img = 'train_images_moved/'
    with pytest.raises(FileNotFoundError) as info:
        check_data_paths(cfg, SPLITS)
    message = str(info.value)
    assert f"train_dataloader.dataset.data_prefix.img: " \
        f"'{shapes}/train_images_moved/' does not exist" in message
    assert message.count(' does not exist') == 1, message
    assert 'images that' not in message  # the folder, not each image


def test_coco_summary_of_other_json_files(tmp_path):
    """Only a JSON object with an ``images`` and a ``categories`` list is
    read as COCO's layout; other JSON (other data sets' annotation files)
    gives None, and the checks leave it to the dataset."""
    import json

    from mmrest_tools.prerun_checks import coco_summary
    cases = {
        'list.json': [{
            'images': [],
            'categories': []
        }],
        'no_categories.json': {
            'images': [{
                'file_name': 'a.jpg'
            }]
        },
        'no_images.json': {
            'categories': [{
                'name': 'cat'
            }]
        },
        'categories_dict.json': {
            'images': [],
            'categories': {
                'name': 'cat'
            }
        },
    }
    for name, data in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
        assert coco_summary(str(tmp_path / name)) is None, name
    (tmp_path / 'coco.json').write_text(
        json.dumps({
            'images': [{
                'file_name': 'a.jpg'
            }, 7],
            'categories': [{
                'name': 'cat'
            }]
        }))
    assert coco_summary(str(tmp_path / 'coco.json')) == dict(
        categories=['cat'], images=['a.jpg', None])


def _check_train_dataset(kind='X', **dataset):
    """check_data_paths of a config whose only split is training, with
    this dataset."""
    check_data_paths(
        dict(
            train_dataloader=dict(dataset=dict(type=kind, **dataset)),
            train_cfg=dict()), ('train', ))


def test_empty_absent_and_odd_entries_are_left_to_the_dataset(tmp_path):
    """What the checks do not read: a dataset without an ``ann_file`` or
    with mmseg's empty one, an empty image prefix (``data_root`` itself,
    named once when missing), a prefix that is not a string; and an image
    entry without a string ``file_name`` counts as missing, not as a
    crash."""
    import json
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'imgs').mkdir()
    (root / 'imgs' / 'a.jpg').write_bytes(b'')
    (root / 'ann.json').write_text(
        json.dumps({
            'images': [{
                'file_name': 'a.jpg'
            }, {
                'file_name': 7
            }, {}],
            'categories': []
        }))

    check = _check_train_dataset
    for ann_file in (None, ''):
        check(
            data_root=str(root),
            ann_file=ann_file,
            data_prefix=dict(img='imgs/', seg=None))
    check(data_root=str(root), data_prefix=dict(img=''))
    with pytest.raises(FileNotFoundError) as info:
        check(
            data_root=str(tmp_path / 'gone'),
            ann_file=None,
            data_prefix=dict(img=''))
    assert str(info.value).count('does not exist') == 1
    with pytest.raises(FileNotFoundError) as info:
        check(
            data_root=str(root),
            ann_file='ann.json',
            data_prefix=dict(img='imgs/'))
    assert '2 of the 3 images' in str(info.value)
    assert '7, None' in str(info.value)


def test_a_seg_prefix_is_checked_for_panoptic_data_only(tmp_path):
    """``data_prefix.seg`` is read by mmdet's panoptic datasets only: a
    missing one is named there, and left alone for an instance dataset
    (Mask2Former's instance config inherits the panoptic one's)."""
    (tmp_path / 'imgs').mkdir()
    dataset = dict(
        data_root=str(tmp_path),
        data_prefix=dict(img='imgs/', seg='panoptic/'))
    with pytest.raises(FileNotFoundError, match='data_prefix.seg'):
        _check_train_dataset('CocoPanopticDataset', **dataset)
    _check_train_dataset('CocoDataset', **dataset)


def test_a_file_where_a_folder_belongs_is_named(shapes):
    cfg = _point_at(
        _config(CONFIGS[0]), shapes, ann='instances_{}.json', img='{}/')
    cfg.val_dataloader.dataset.data_prefix.img = 'annotations/' \
        'instances_val.json'
    cfg.val_dataloader.dataset.ann_file = 'val/'
    with pytest.raises(FileNotFoundError) as info:
        check_data_paths(cfg, ('val', ))
    message = str(info.value)
    assert f"val_dataloader.dataset.ann_file: '{shapes}/val/' is not a " \
        'file' in message
    assert f"val_dataloader.dataset.data_prefix.img: '{shapes}/" \
        "annotations/instances_val.json' is not a folder" in message


def test_relative_paths_are_shown_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _point_at(_config(CONFIGS[0]), 'data/coco', splits=('train', ))
    with pytest.raises(
            FileNotFoundError,
            match=f"'data/coco/annotations/instances_train2017"
            f".json' \\(resolved as '{tmp_path}/data/coco/"
            "annotations/instances_train2017.json'\\)"):
        check_data_paths(cfg, ('train', ))


def test_dataset_wrappers_are_looked_into(shapes, tmp_path):
    good = dict(
        type='CocoDataset',
        data_root=str(shapes),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'))
    bad = dict(good, ann_file='annotations/instances_missing.json')
    cfg = dict(
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=1),
        train_dataloader=dict(
            dataset=dict(
                type='RepeatDataset',
                times=2,
                dataset=dict(type='ConcatDataset', datasets=[good, bad]))))
    with pytest.raises(FileNotFoundError) as info:
        check_data_paths(cfg, ('train', ))
    assert "train_dataloader.dataset.dataset.datasets[1].ann_file: " \
        f"'{shapes}/annotations/instances_missing.json' does not exist" \
        in str(info.value)
    assert 'datasets[0]' not in str(info.value)


def test_splits_without_a_loop_and_remote_data_are_not_checked(tmp_path):
    cfg = _point_at(_config(CONFIGS[0]), tmp_path / 'missing')
    cfg.val_cfg = None  # no validation: the Runner never reads val data
    cfg.train_dataloader.dataset.data_root = 's3://bucket/coco/'
    check_data_paths(cfg, ('train', 'val'))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'missing')
    cfg.train_dataloader.dataset.backend_args = dict(backend='petrel')
    check_data_paths(cfg, ('train', 'val'))


def test_mmdet_itself_names_a_missing_annotation_file_before_training(
        tmp_path):
    """Without the check, mmdet's Runner still stops before the first
    iteration with an error that names the missing annotation file."""
    from mmengine.runner import Runner
    missing = tmp_path / 'no_such_coco'
    cfg = _point_at(_config(CONFIGS[0]), missing)
    cfg.model.backbone.arch = dict(TINY_V1, depths=[1, 1, 1, 1])
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.in_channels = [8, 16, 32, 64]
    cfg.work_dir = str(tmp_path / 'work')
    cfg.visualizer.name = f'visualizer_{tmp_path.name}'  # its own folder
    runner = Runner.from_cfg(cfg)
    weights = {k: v.clone() for k, v in runner.model.state_dict().items()}
    with pytest.raises(
            FileNotFoundError,
            match=f'{missing}/annotations/instances_train2017'
            '.json'):
        runner.train()
    # Nothing trained: no loss logged, weights untouched, no checkpoint.
    assert 'train/loss' not in runner.message_hub.log_scalars
    state = runner.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert not list((tmp_path / 'work').rglob('*.pth'))
    shutil.rmtree(tmp_path / 'work')
