"""model-index.yml and the configs' metafile.yml (OpenMMLab's model-index
format, read by ``mim search``): every file they name exists, every config
builds, and every figure they state is what the config builds.

The metafiles' parameter counts (2 decimals) and FLOPs were computed with
this repository's code and written in: checking them against the same code
only guards against drift (a config or the code changing without its
metafile). The independent check is against the papers: where a parameter
count was published, the metafile's rounds to it (the papers' 0.1 M). No
FLOPs were published for these detectors, so the FLOPs have no
independent check."""

import os

import pytest
import yaml
from _helpers import ROOT, build_detector
from mmengine.config import Config

INDEX = ROOT / 'model-index.yml'
# The figures and the decimals they are stated to (see a metafile's header).
PARAMS, PARAMS_DECIMALS = 'Parameters (M)', 2
FLOPS, FLOPS_DECIMALS = 'FLOPs (G)', 1
FLOPS_SHAPE = (800, 1280)  # H x W
METRICS = {
    'Object Detection': {'box AP'},
    'Instance Segmentation': {'mask AP'},
    'Semantic Segmentation': {'mIoU', 'mIoU(ms+flip)'}
}
# The detection metafiles' figures are checked here; configs/upernet's
# (mmseg's format) in test_segmentation.py.
DETECTION = ('mask_rcnn', 'retinanet', 'cascade_rcnn', 'dino', 'mask2former')
# Counting the FLOPs of a Cascade Mask R-CNN takes minutes on a CPU (mmdet's
# mode='tensor' forward runs its three mask heads on all 1000 proposals):
# those drift guards run when this variable is set.
SLOW_FLOPS_ENV = 'MMREST_CASCADE_FLOPS'
SLOW_FLOPS = ('cascade_rcnn', )
# Millions of parameters of the detectors as published: the ResT paper's
# COCO 1x results (arXiv:2105.13677) and the ResT v2 paper's Mask R-CNN 3x
# results (arXiv:2204.07366).
PUBLISHED_PARAMS_M = {
    'retinanet_rest-small_fpn_1x_coco': 23.4,
    'retinanet_rest-base_fpn_1x_coco': 40.5,
    'mask-rcnn_rest-small_fpn_1x_coco': 33.3,
    'mask-rcnn_rest-base_fpn_1x_coco': 49.8,
    'mask-rcnn_restv2-tiny_fpn_3x_coco': 49.9,
    'mask-rcnn_restv2-small_fpn_3x_coco': 60.7,
    'mask-rcnn_restv2-base_fpn_3x_coco': 75.5,
}


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def _metafiles():
    return [ROOT / p for p in _load(INDEX)['Import']]


def _models(folders=None):
    return [
        pytest.param(model, id=model['Name']) for path in _metafiles()
        if path.is_file() and (folders is None or path.parent.name in folders)
        for model in _load(path)['Models']
    ]


def _with_metadata(key):
    return [p for p in _models(DETECTION) if key in p.values[0]['Metadata']]


def _flops_params():
    slow = pytest.mark.skipif(
        not os.environ.get(SLOW_FLOPS_ENV),
        reason=f'minutes on a CPU: set {SLOW_FLOPS_ENV}=1 to run')
    return [
        pytest.param(*p.values, id=p.id, marks=slow)
        if p.values[0]['Config'].split('/')[1] in SLOW_FLOPS else p
        for p in _with_metadata(FLOPS)
    ]


def test_index_imports_every_metafile():
    imported = _metafiles()
    assert imported, 'model-index.yml imports nothing'
    missing = [str(p) for p in imported if not p.is_file()]
    assert not missing, f'model-index.yml imports missing files: {missing}'
    on_disk = sorted((ROOT / 'configs').glob('*/metafile.yml'))
    assert sorted(imported) == on_disk, (
        'model-index.yml must import exactly the configs/*/metafile.yml')


def test_collections():
    names = []
    for path in _metafiles():
        for collection in _load(path)['Collections']:
            names.append(collection['Name'])
            assert collection['Metadata']['Training Data']
            paper = collection['Paper']
            assert paper['URL'].startswith('https://') and paper['Title']
            assert (ROOT / collection['README']).is_file(), collection
            assert collection['Code']['URL'].startswith('https://')
    assert len(names) == len(set(names)), f'a collection twice: {names}'


def test_models_name_their_config_and_collection():
    collections = {
        c['Name']
        for path in _metafiles()
        for c in _load(path)['Collections']
    }
    names = []
    for param in _models():
        model = param.values[0]
        names.append(model['Name'])
        config = ROOT / model['Config']
        assert config.is_file(), f'{model["Name"]}: no {config}'
        # mmdet's convention: a model is named after its config file
        assert config.stem == model['Name']
        assert model['In Collection'] in collections, model['Name']
        results = model.get('Results', [])
        for result in [results] if isinstance(results, dict) else results:
            assert result['Dataset'] in ('COCO', 'ADE20K'), model['Name']
            assert set(result['Metrics']) <= METRICS[result['Task']]
    assert len(names) == len(set(names)), f'a model twice: {names}'


@pytest.mark.parametrize('model', _models(DETECTION))
def test_config_builds_and_matches_its_metadata(model):
    """The config builds with its ResT backbone; its epochs (iterations for
    an iteration-based schedule) and its number of parameters are the
    metafile's (a drift guard: the metafile's count was made by this code;
    see test_published_parameter_counts, and for the configs without a
    published count, test_more_detectors.py's count from the authors'
    backbone and mmdet's heads)."""
    cfg, detector = build_detector(ROOT / model['Config'])
    assert type(detector.backbone).__name__ in ('ResT', 'ResTV2')
    metadata = model['Metadata']
    if cfg.train_cfg.type == 'IterBasedTrainLoop':
        assert 'Epochs' not in metadata
        assert metadata['Iterations'] == cfg.train_cfg.max_iters
    else:
        assert metadata['Epochs'] == cfg.train_cfg.max_epochs
    params = sum(p.numel() for p in detector.parameters())
    assert round(params / 1e6, PARAMS_DECIMALS) == metadata[PARAMS], (
        f'{model["Name"]}: the config builds {params} parameters')
    if model.get('Results') and 'mask' in model['Name']:  # Mask R-CNN
        assert {r['Task']
                for r in model['Results']
                } == {'Object Detection', 'Instance Segmentation'}


def test_published_parameter_counts():
    """Where the papers published a detector's parameter count, the
    metafile's rounds to it: an independent check of the count (the
    backbone, FPN and heads the config builds are the paper's model)."""
    models = {p.values[0]['Name']: p.values[0] for p in _models(DETECTION)}
    assert set(PUBLISHED_PARAMS_M) <= set(models)
    for name, published in PUBLISHED_PARAMS_M.items():
        assert round(models[name]['Metadata'][PARAMS], 1) == published, name


@pytest.mark.parametrize('model', _flops_params())
def test_flops_drift_guard(model):
    """The FLOPs the metafile states are tools/get_flops.py's current
    figure for the config at 800 x 1280. A drift guard only: the figure was
    made by this code (no FLOPs were published for these detectors)."""
    from mmrest_tools.analysis import detector_complexity
    cfg = Config.fromfile(ROOT / model['Config'])
    flops = detector_complexity(cfg, FLOPS_SHAPE)['flops']
    assert round(flops / 1e9, FLOPS_DECIMALS) == model['Metadata'][FLOPS], (
        f'{model["Name"]}: {flops / 1e9:.2f} G at {FLOPS_SHAPE}')
