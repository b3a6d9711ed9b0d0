"""Bad arguments and bad input end in errors that name what was wrong."""
import pytest
import torch
from _helpers import ROOT, TINY_V1, run_program
from torch import nn

from mmrest import ResT

TINY = dict(TINY_V1, depths=[1, 1, 1, 1])  # one block a stage


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(KeyError) as info:
        ResT(arch='medium')
    message = str(info.value)
    assert "'medium'" in message
    for name in ('lite', 'small', 'base', 'large'):
        assert name in message


def test_arch_dict_with_missing_keys():
    arch = dict(TINY)
    del arch['sr_ratios'], arch['mlp_ratios']
    with pytest.raises(KeyError, match=r"\['sr_ratios', 'mlp_ratios'\]"):
        ResT(arch=arch)


def test_arch_dict_with_unknown_keys():
    with pytest.raises(KeyError, match='qk_bias'):
        ResT(arch=dict(TINY, qk_bias=True))


@pytest.mark.parametrize('key,value', [('depths', [1, 1, 1]),
                                       ('num_heads', [1, 2, 4, 8, 8])])
def test_arch_dict_with_wrong_lengths(key, value):
    with pytest.raises(ValueError, match=f"arch\\['{key}'\\].*4"):
        ResT(arch=dict(TINY, **{key: value}))


@pytest.mark.parametrize('key,value', [('depths', [1, -1, 1, 1]),
                                       ('embed_dims', [8, 16, 32, 0]),
                                       ('num_heads', [1, 2.0, 4, 8]),
                                       ('sr_ratios', [8, 4, '2', 1])])
def test_arch_dict_with_values_that_are_not_counts(key, value):
    """Each per-stage count an integer of at least its least value (a
    stage of depth 0 is allowed): one below it, or one that is not an
    integer, is refused alone."""
    with pytest.raises(
            ValueError, match=f"arch\\['{key}'\\] must hold "
            'integers >='):
        ResT(arch=dict(TINY, **{key: value}))
    ResT(arch=dict(TINY, depths=[1, 0, 1, 1]))


def test_heads_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match='not divisible by num_heads 3'):
        ResT(arch=dict(TINY, num_heads=[1, 2, 3, 8]))


@pytest.mark.parametrize('out_indices', [(0, 4), (-1, ), (), 'all'])
def test_out_indices_out_of_range(out_indices):
    with pytest.raises((ValueError, TypeError), match='out_indices'):
        ResT(arch=TINY, out_indices=out_indices)


@pytest.mark.parametrize('frozen_stages', [-2, 4, 1.5])
def test_frozen_stages_out_of_range(frozen_stages):
    with pytest.raises(ValueError, match='frozen_stages .* from -1 to 3'):
        ResT(arch=TINY, frozen_stages=frozen_stages)


@pytest.mark.parametrize('rate', [-0.1, 1, 1.5])
def test_drop_path_rate_out_of_range(rate):
    """A rate of 1 would drop the deepest block always (the authors' own
    DropPath divides by 1 - rate): [0, 1) only."""
    with pytest.raises(ValueError, match=r'drop_path_rate must be in \[0, 1'):
        ResT(arch=TINY, drop_path_rate=rate)
    ResT(arch=TINY, drop_path_rate=0.99)


@pytest.mark.parametrize('shape', [(3, 32, 32), (1, 1, 3, 32, 32)])
def test_input_that_is_not_4d(shape):
    with pytest.raises(
            ValueError,
            match=r'\(B, C, H, W\).*' +
            str(tuple(shape)).replace('(', r'\(').replace(')', r'\)')):
        ResT(arch=TINY)(torch.rand(shape))


def test_wrong_channel_count():
    model = ResT(arch=TINY, in_channels=3)
    with pytest.raises(ValueError, match='3 input channels.*with 1'):
        model(torch.rand(1, 1, 32, 32))
    assert len(
        ResT(arch=TINY, in_channels=1).eval()(torch.rand(1, 1, 32, 32))) == 4
    for bad in (0, -3, 3.0, '3'):  # each refused when built
        with pytest.raises(ValueError, match='in_channels must be a positive'):
            ResT(arch=TINY, in_channels=bad)


def test_no_input_is_too_small():
    """Every conv has padding and kernel <= stride + 1 + 2 * pad, so even a
    1x1 image gives 1x1 maps at every stage: there is no minimum size."""
    model = ResT(arch='lite').eval()
    for h, w in [(1, 1), (2, 3), (5, 1)]:
        with torch.no_grad():
            outs = model(torch.rand(1, 3, h, w))
        assert all(o.shape[2:] == (1, 1) for o in outs[2:])
        assert all(torch.isfinite(o).all() for o in outs)
    with pytest.raises(ValueError, match='Empty input'):
        model(torch.rand(1, 3, 0, 8))


def test_arch_of_wrong_type():
    with pytest.raises(TypeError, match='arch must be a str or a dict'):
        ResT(arch=['small'])


@pytest.mark.parametrize('det', ['retinanet', 'mask_rcnn'])
def test_nan_loss_stops_training_with_a_message(det):
    """The COCO configs check the loss every iteration (mmdet's hook)."""
    from types import SimpleNamespace
    from unittest import mock

    from mmdet.registry import HOOKS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    root = ROOT
    name = det.replace('_', '-')  # mask_rcnn/mask-rcnn_..., retinanet/...
    cfg = Config.fromfile(root /
                          f'configs/{det}/{name}_rest-lite_fpn_1x_coco.py')
    hooks = [
        HOOKS.build(h) for h in cfg.custom_hooks
        if h['type'] == 'CheckInvalidLossHook'
    ]
    assert len(hooks) == 1 and hooks[0].interval == 1
    runner = SimpleNamespace(iter=6, logger=mock.Mock())
    hooks[0].after_train_iter(runner, 6, outputs=dict(loss=torch.tensor(1.)))
    for bad in (float('nan'), float('inf')):
        with pytest.raises(AssertionError):
            hooks[0].after_train_iter(
                runner, 6, outputs=dict(loss=torch.tensor(bad)))
    runner.logger.info.assert_called_with('loss become infinite or NaN!')


# ------------------------------------------------------- import hygiene
def _import_mmrest_in_child(tmp_path, prelude=''):
    """``import mmrest`` in a fresh interpreter, after ``prelude``."""
    import os
    import sys
    code = prelude + '\n' + '\n'.join([
        'import warnings', 'warnings.simplefilter("always")', 'import mmrest',
        'from mmdet.registry import MODELS',
        'model = MODELS.build(dict(type="ResT", arch="lite"))',
        'assert type(model) is mmrest.ResT', 'print("mmdet works")'
    ])
    path = os.pathsep.join([str(tmp_path), os.environ['PYTHONPATH']])
    return run_program([sys.executable, '-c', code],
                       cwd=tmp_path,
                       env=dict(PYTHONPATH=path),
                       timeout=300,
                       ok=False)


def test_broken_mmseg_leaves_mmrest_and_mmdet_working(tmp_path):
    """An mmseg whose import fails (here its mmcv version assertion) turns
    mmseg support off with a one-line warning; nothing else changes."""
    fake = tmp_path / 'mmseg'
    fake.mkdir()
    (fake / '__init__.py').write_text(
        "raise AssertionError('MMCV==2.2.0 is used but incompatible. "
        "Please install mmcv>=2.0.0rc4.')\n")
    out = _import_mmrest_in_child(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'mmdet works' in out.stdout
    lines = [line for line in out.stderr.splitlines() if 'mmrest:' in line]
    assert len(lines) == 1, out.stderr
    assert 'mmsegmentation support is off' in lines[0]
    assert 'AssertionError: MMCV==2.2.0' in lines[0]


@pytest.mark.parametrize('error', [
    AssertionError('mmcv too new'),
    RuntimeError('CUDA extension'),
    ImportError('cannot import name x')
])
def test_any_mmseg_import_failure_is_a_warning(monkeypatch, error):
    import importlib

    import mmrest.registry as registry
    real = importlib.import_module

    def import_module(name, *args):
        if name.startswith('mmseg'):
            raise error
        return real(name, *args)

    monkeypatch.setattr(registry.importlib, 'import_module', import_module)
    with pytest.warns(
            UserWarning,
            match='mmsegmentation support is off.*'
            f'{type(error).__name__}: {error}'):
        registry.register_all()
    from mmdet.registry import MODELS
    assert MODELS.get('ResT') is ResT


def test_mmseg_not_installed_is_silent(monkeypatch):
    import importlib
    import warnings

    import mmrest.registry as registry
    real = importlib.import_module

    def import_module(name, *args):
        if name.startswith('mmseg'):  # as Python says it when not installed
            raise ModuleNotFoundError("No module named 'mmseg'", name='mmseg')
        return real(name, *args)

    monkeypatch.setattr(registry.importlib, 'import_module', import_module)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        registry.register_all()


def test_another_rest_in_mmdet_is_not_replaced(monkeypatch):
    """No force-registration over a different class of the same name."""
    from mmdet.registry import MODELS

    import mmrest.registry as registry

    class ResT(nn.Module):  # someone else's
        pass

    monkeypatch.setitem(MODELS._module_dict, 'ResT', ResT)
    with pytest.raises(registry.RegistryConflictError) as info:
        registry.register_all()
    message = str(info.value)
    assert 'test_errors' in message and 'mmrest.backbones' in message
    assert MODELS.get('ResT') is ResT  # left alone
    # a ResT at the top of another module: the same qualified name as
    # mmrest's, another module
    other = type('ResT', (nn.Module, ), {'__module__': 'someone_else.models'})
    monkeypatch.setitem(MODELS._module_dict, 'ResT', other)
    with pytest.raises(
            registry.RegistryConflictError, match='someone_else.models.ResT'):
        registry.register_all()
    assert MODELS.get('ResT') is other


def test_another_rest_in_mmseg_turns_mmseg_support_off(monkeypatch):
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS

    import mmrest.registry as registry

    class ResT(nn.Module):
        pass

    monkeypatch.setitem(MODELS._module_dict, 'ResT', ResT)
    with pytest.warns(
            UserWarning,
            match='mmsegmentation support is off.*'
            'RegistryConflictError'):
        registry.register_all()
    assert MODELS.get('ResT') is ResT
    assert DET_MODELS.get('ResT') is globals()['ResT']


def test_registering_again_is_fine(monkeypatch):
    """The same class (or the same class of a re-imported mmrest)."""
    from mmdet.registry import MODELS

    import mmrest.registry as registry
    registry.register_all()
    reimported = type('ResT', (nn.Module, ), {
        '__module__': ResT.__module__,
        '__qualname__': ResT.__qualname__
    })
    monkeypatch.setitem(MODELS._module_dict, 'ResT', reimported)
    registry.register_all()
    assert MODELS.get('ResT') is ResT
