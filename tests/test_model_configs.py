"""Detectors built from config files that only name mmrest in
custom_imports, as a user writes them (segmentors: test_segmentation.py),
and the configs' names and default work dirs."""
import ast
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def test_mask_rcnn_from_config_trains_and_predicts():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules
    cfg = Config.fromfile(CONFIGS /
                          'mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py')
    assert cfg.custom_imports == dict(
        imports=['mmrest'], allow_failed_imports=False)
    register_all_modules()
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'ResT'
    packed = demo_mm_inputs(
        2, [(3, 160, 224)] * 2, with_mask=True, num_classes=80)
    data = model.data_preprocessor(packed, True)
    model.train()
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox',
            'loss_mask'} <= set(losses)
    total = sum(
        v if torch.is_tensor(v) else sum(v) for k, v in losses.items()
        if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stage1[0].attn.q.weight.grad is not None
    model.eval()
    with torch.no_grad():
        results = model(
            **model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2 and hasattr(results[0], 'pred_instances')


# ------------------------------------------- config names and work dirs
def _top_level(path):
    """``{name: value node}`` of a config file's top-level assignments."""
    return {
        t.id: node.value
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign) for t in node.targets
        if isinstance(t, ast.Name)
    }


def _configs():
    return sorted(
        p for p in CONFIGS.rglob('*.py')
        if '_base_' not in p.relative_to(CONFIGS).parts)


def _former_names():
    """``{path: the config it names}``: the one-line configs that keep a
    former config name working (they set only ``_base_`` and ``work_dir``).
    """
    former = {}
    for path in _configs():
        assigned = _top_level(path)
        if set(assigned) == {'_base_', 'work_dir'}:
            base = ast.literal_eval(assigned['_base_'])
            former[path] = (path.parent / base).resolve()
    return former


def _default_work_dir(path):
    """Where tools/train.py (as mmdet's) writes without --work-dir."""
    return Config.fromfile(path).get('work_dir') or \
        f'./work_dirs/{path.stem}'


# The one former name left beside the current configs: the command users
# were given (tools/train.py configs/mask_rcnn/rest_small_fpn_1x_coco.py).
KEPT_IN_PLACE = CONFIGS / 'mask_rcnn/rest_small_fpn_1x_coco.py'
FORMER = CONFIGS / 'former_names'


def _documented_former_names():
    """``{former: current}`` paths from configs/former_names/README.md."""
    import re
    rows = re.findall(r'^\| `([^`]+\.py)` \| `([^`]+\.py)` \|$',
                      (FORMER / 'README.md').read_text(), re.M)
    return {CONFIGS / a: (CONFIGS / b).resolve() for a, b in rows}


@pytest.mark.parametrize(
    'path,target', list(_former_names().items()), ids=lambda p: p.name)
def test_former_config_names_are_the_new_configs(path, target):
    """A former name builds the same config as the file it names, and
    trains in that file's work dir; it lives in configs/former_names (but
    for the one users were told to run) and names a current config."""
    assert target.is_file()
    assert FORMER in path.parents or path == KEPT_IN_PLACE
    assert FORMER not in target.parents
    former = Config.fromfile(path).to_dict()
    assert former.pop('work_dir') == f'./work_dirs/{target.stem}'
    assert former == Config.fromfile(target).to_dict()


def test_former_names_are_the_documented_ones():
    """configs/former_names/README.md lists every former name with the
    config it names, and nothing else sits in configs/former_names."""
    documented = _documented_former_names()
    assert documented == _former_names()
    assert set(FORMER.rglob('*.py')) == set(documented) - {KEPT_IN_PLACE}
    assert KEPT_IN_PLACE in documented


def test_demo_configs_sit_apart_from_the_model_zoo():
    """The demos' configs (generated shapes data) are in configs/demo; the
    model zoo's folders hold only configs of real data sets."""
    former = _former_names()
    demos = {
        path
        for path in _configs() if path not in former
        and 'shapes' in Config.fromfile(path).get('data_root', '')
    }
    assert demos == set((CONFIGS / 'demo').glob('*.py'))
    # make demo's detector and the 2-epoch one it inherits, its ResT v2
    # twin, make demo-seg's segmentor
    assert len(demos) == 4


def test_every_config_has_its_own_work_dir():
    """No two configs train into the same default work dir (RetinaNet and
    Mask R-CNN ResT-Small once did: --resume picked up the other's
    checkpoint), former names aside, which share their new name's."""
    former = _former_names()
    owners = {}
    for path in _configs():
        owners.setdefault(_default_work_dir(path),
                          set()).add(former.get(path, path.resolve()))
    shared = {d: sorted(map(str, o)) for d, o in owners.items() if len(o) > 1}
    assert not shared, f'configs sharing a work dir: {shared}'
