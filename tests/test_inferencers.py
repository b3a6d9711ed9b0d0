"""mmdet's DetInferencer and mmseg's MMSegInferencer with mmrest configs and
checkpoints (docs/demo.md, "Inference from Python"): each runs in a fresh
process that imports neither mmrest nor the test's code, so the plugin
comes in only through the config's custom_imports; its predictions on a
generated shapes image are those of mmdet's and mmseg's single-image APIs
(init_detector / inference_detector, init_model / inference_model) with the
same config and checkpoint, and it writes its drawings and predictions."""
import json
import sys

import cv2
import numpy as np
import pytest
from _helpers import ROOT, run_program
from mmengine.config import Config

from mmrest.synthetic import SHAPES_CLASSES, generate_shapes_coco

DET_CONFIG = ROOT / 'configs/demo/mask-rcnn_rest-lite_fpn_3e_shapes.py'
SEG_CONFIG = (
    ROOT / 'configs/demo/rest-lite_upernet_1xb8-1900it_shapes-96x96.py')


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    """A generated shapes image (128 x 128, 4 shapes at most)."""
    root = tmp_path_factory.mktemp('shapes')
    generate_shapes_coco(str(root), splits=dict(val=1), seed=3)
    return root / 'val' / '000001.png'


def _checkpoint(config, scope, path):
    """The config's model, freshly built (backbone from scratch), saved
    with mmengine's save_checkpoint and the classes (and palette) of the
    config's data set in its meta, as a training run saves them."""
    import importlib

    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
    importlib.import_module(f'{scope}.utils').register_all_modules()
    registry = importlib.import_module(f'{scope}.registry')
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    model = registry.MODELS.build(cfg.model)
    model.init_weights()
    dataset_meta = dict(cfg.test_dataloader.dataset.metainfo)
    save_checkpoint(
        dict(
            state_dict=weights_to_cpu(model.state_dict()),
            meta=dict(dataset_meta=dataset_meta)), str(path))
    return path, dataset_meta


def _run(script, cwd):
    """``script`` in a fresh Python; the JSON it prints last."""
    proc = run_program([sys.executable, '-c', script], cwd=cwd)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_det_inferencer(image, tmp_path):
    from mmdet.apis import inference_detector, init_detector
    checkpoint, meta = _checkpoint(DET_CONFIG, 'mmdet', tmp_path / 'd.pth')
    out = tmp_path / 'out'
    result = _run(
        'import json, sys\n'
        'from mmdet.apis import DetInferencer\n'
        # the plugin not imported yet (mmrest_tools.ops_shim may be: the
        # oldest stack's start-up hook)
        'assert not [m for m in sys.modules if m.split(".")[0] == "mmrest"]\n'
        f'inferencer = DetInferencer(model={str(DET_CONFIG)!r}, '
        f'weights={str(checkpoint)!r}, device="cpu")\n'
        'backbone = type(inferencer.model.backbone)\n'
        f'out = inferencer({str(image)!r}, out_dir={str(out)!r}, '
        'no_save_pred=False, pred_score_thr=0.05)\n'
        'print(json.dumps(dict(\n'
        '    backbone=backbone.__module__ + "." + backbone.__name__,\n'
        '    classes=list(inferencer.model.dataset_meta["classes"]),\n'
        '    prediction=out["predictions"][0])))\n',
        cwd=tmp_path)
    assert result['backbone'] == 'mmrest.backbones.rest.ResT'
    assert tuple(result['classes']) == SHAPES_CLASSES == tuple(meta['classes'])
    pred = result['prediction']
    assert len(pred['labels']) > 0
    assert set(pred['labels']) <= set(range(len(SHAPES_CLASSES)))

    model = init_detector(str(DET_CONFIG), str(checkpoint), device='cpu')
    expected = inference_detector(model, str(image)).pred_instances
    assert pred['labels'] == expected.labels.tolist()
    np.testing.assert_allclose(
        pred['scores'], expected.scores.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        pred['bboxes'], expected.bboxes.numpy(), rtol=0, atol=1e-3)
    assert len(pred['masks']) == len(expected.masks)

    drawn = cv2.imread(str(out / 'vis' / image.name))
    assert drawn is not None and drawn.shape == cv2.imread(str(image)).shape
    assert not np.array_equal(drawn, cv2.imread(str(image)))  # drawn on
    saved = json.loads((out / 'preds' / f'{image.stem}.json').read_text())
    assert saved['labels'] == pred['labels']


def test_mmseg_inferencer(image, tmp_path):
    from mmseg.apis import inference_model, init_model
    checkpoint, meta = _checkpoint(SEG_CONFIG, 'mmseg', tmp_path / 's.pth')
    out = tmp_path / 'out'
    result = _run(
        'import json, sys\n'
        'import numpy as np\n'
        'from mmseg.apis import MMSegInferencer\n'
        # the plugin not imported yet (mmrest_tools.ops_shim may be: the
        # oldest stack's start-up hook)
        'assert not [m for m in sys.modules if m.split(".")[0] == "mmrest"]\n'
        f'inferencer = MMSegInferencer(model={str(SEG_CONFIG)!r}, '
        f'weights={str(checkpoint)!r}, device="cpu")\n'
        'backbone = type(inferencer.model.backbone)\n'
        f'out = inferencer({str(image)!r}, out_dir={str(out)!r})\n'
        f'np.save({str(tmp_path / "pred.npy")!r}, out["predictions"])\n'
        'print(json.dumps(dict(\n'
        '    backbone=backbone.__module__ + "." + backbone.__name__,\n'
        '    classes=list(inferencer.model.dataset_meta["classes"]))))\n',
        cwd=tmp_path)
    assert result['backbone'] == 'mmrest.backbones.rest.ResT'
    assert tuple(result['classes']) == ('background', ) + SHAPES_CLASSES
    assert tuple(result['classes']) == tuple(meta['classes'])
    pred = np.load(tmp_path / 'pred.npy')
    assert pred.shape == (128, 128)  # the image's size, not the model's 96

    model = init_model(str(SEG_CONFIG), str(checkpoint), device='cpu')
    expected = inference_model(model, str(image)).pred_sem_seg.data[0]
    np.testing.assert_array_equal(pred, expected.numpy())

    drawn = cv2.imread(str(out / 'vis' / image.name))
    assert drawn is not None and drawn.shape == (128, 128, 3)
    saved = cv2.imread(
        str(out / 'pred' / '00000000_pred.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(saved, pred)
