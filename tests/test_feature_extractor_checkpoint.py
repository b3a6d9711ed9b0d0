"""``build_feature_extractor(config, checkpoint=...)`` (what
``tools/export_onnx.py`` exports): the backbone and neck get the
checkpoint's weights, every one of them; a missing, corrupt or foreign
checkpoint is a clear error."""
import pytest
import torch
from _helpers import ROOT, build_detector, random_state_dict

from mmrest.checkpoint import CheckpointError
from mmrest.onnx_export import build_feature_extractor

CONFIG = str(ROOT / 'configs/retinanet/retinanet_rest-lite_fpn_1x_coco.py')


@pytest.fixture(scope='module')
def detector_checkpoint(tmp_path_factory):
    """A checkpoint of the config's whole detector as mmengine saves it
    (``meta`` and ``state_dict``), every weight and BatchNorm statistic
    drawn at random with a fixed seed: its state dict and its path."""
    _, model = build_detector(CONFIG)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp('ckpt') / 'retinanet_lite.pth'
    torch.save(dict(meta=dict(epoch=12), state_dict=state), path)
    return state, path


@pytest.mark.parametrize('with_neck', [False, True])
def test_loads_every_weight_of_the_checkpoint(detector_checkpoint, with_neck):
    state, path = detector_checkpoint
    model = build_feature_extractor(
        CONFIG, checkpoint=str(path), with_neck=with_neck)
    assert not model.training
    got = model.state_dict()
    modules = ('backbone.', 'neck.') if with_neck else ('backbone.', )
    expected = {k for k in state if k.startswith(modules)}
    assert set(got) == expected
    for key in expected:
        assert torch.equal(got[key], state[key]), key
    # its output: the detector's features (backbone, then neck) or the
    # backbone's maps alone
    _, detector = build_detector(CONFIG)
    detector.load_state_dict(state)
    detector.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        want = detector.extract_feat(x) if with_neck else \
            detector.backbone(x)
        out = model(x)
    # RetinaNet: stages 2 to 4 (out_indices), then FPN's 5 levels
    assert isinstance(out, tuple) and len(out) == (5 if with_neck else 3)
    assert all(torch.equal(a, b) for a, b in zip(out, want))
    # without the checkpoint the weights are others (from scratch)
    scratch = build_feature_extractor(CONFIG)
    assert scratch.neck is None  # the backbone alone unless asked
    scratch = scratch.state_dict()
    assert not torch.equal(scratch['backbone.stem.conv1.weight'],
                           state['backbone.stem.conv1.weight'])


def test_a_missing_path_is_named(tmp_path):
    path = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build_feature_extractor(CONFIG, checkpoint=path)


def test_a_corrupt_file_is_named(tmp_path, detector_checkpoint):
    path = tmp_path / 'half.pth'
    data = detector_checkpoint[1].read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        build_feature_extractor(CONFIG, checkpoint=str(path))


def _save(tmp_path, name, state):
    path = tmp_path / name
    torch.save(dict(state_dict=state), path)
    return str(path)


def test_foreign_checkpoints_are_refused(tmp_path, detector_checkpoint, golden,
                                         golden_v2):
    state, _ = detector_checkpoint
    # a ResT v2 detector's backbone for a ResT v1 config
    v2 = {f'backbone.{k}': v for k, v in golden_v2['state_dict'].items()}
    with pytest.raises(
            CheckpointError, match=r'is not a checkpoint of .*lacks'):
        build_feature_extractor(
            CONFIG, checkpoint=_save(tmp_path, 'v2.pth', v2))
    # the authors' ImageNet classifier checkpoint (no backbone. prefix)
    path = tmp_path / 'imagenet.pth'
    torch.save(dict(model=golden['state_dict']), path)
    with pytest.raises(CheckpointError, match='lacks'):
        build_feature_extractor(CONFIG, checkpoint=str(path))
    # a deeper variant: all of ResT-Lite's keys and more blocks
    deeper = dict(state)
    for key in [k for k in state if k.startswith('backbone.stage3.1.')]:
        deeper[key.replace('stage3.1.', 'stage3.2.')] = state[key]
    with pytest.raises(
            CheckpointError,
            match=r'holds \d+ weights that model lacks.*stage3.2'):
        build_feature_extractor(
            CONFIG, checkpoint=_save(tmp_path, 'deeper.pth', deeper))
    # other widths under the same names
    wider = dict(state)
    wider['backbone.stem.conv1.weight'] = torch.zeros(48, 3, 3, 3)
    with pytest.raises(
            CheckpointError, match=r'differ in shape.*stem.conv1.weight'):
        build_feature_extractor(
            CONFIG, checkpoint=_save(tmp_path, 'wider.pth', wider))


def test_a_list_of_necks_runs_in_sequence(tmp_path):
    """A config whose neck is a list (mmdet builds it as an
    ``nn.Sequential``) exports every neck in order, with a whole-model
    checkpoint's weights under the detector's names."""
    import torch.nn as nn
    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG)
    necks = [
        cfg.model.neck.to_dict(),
        dict(
            type='BFP',
            in_channels=256,
            num_levels=5,
            refine_level=2,
            refine_type='conv')
    ]
    options = {'model.neck': necks}
    model = build_feature_extractor(
        CONFIG, with_neck=True, cfg_options=options)
    assert isinstance(model.neck, nn.Sequential)
    assert [type(m).__name__ for m in model.neck] == ['FPN', 'BFP']
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.neck[1](model.neck[0](model.backbone(x)))
        got = model(x)
    assert len(got) == 5 and all(
        torch.equal(a, b) for a, b in zip(got, expected))
    state = random_state_dict(model)
    assert 'neck.1.refine.conv.weight' in state
    loaded = build_feature_extractor(
        CONFIG,
        checkpoint=_save(tmp_path, 'two_necks.pth', state),
        with_neck=True,
        cfg_options=options)
    assert all(
        torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
