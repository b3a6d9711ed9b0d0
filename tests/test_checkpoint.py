"""Checkpoints: the authors' format through init_cfg (the reference weights
themselves), mmengine's own (saved with and without mmrest), files that must
be refused, and a loader that cannot fail silently."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from _helpers import Reduce, relative_error, run_program

from mmrest import ResT
from mmrest.backbones import to_literal
from mmrest.checkpoint import (CheckpointError, checkpoint_safe_globals,
                               load_checkpoint_file, mmengine_safe_loading,
                               restricted_globals, safe_loading,
                               safe_torch_load)
from mmrest.utils import torch_compat

#: Both safe-loading paths: torch's weights-only loader with the scoped
#: allow-list (torch >= 2.6) and mmrest's restricted unpickler (the path of
#: torch < 2.6, forced here on any torch).
LOADERS = [
    pytest.param(
        'torch allow-list',
        marks=pytest.mark.skipif(
            not torch_compat.TORCH_SCOPED_ALLOW_LIST,
            reason='torch < 2.6 has no scoped weights-only allow-list')),
    'restricted unpickler',
]


@pytest.fixture(params=LOADERS)
def loader(request, monkeypatch):
    """Selects the safe-loading path for everything mmrest loads in the
    test (mmrest's loaders read the switch at each load)."""
    restricted = request.param == 'restricted unpickler'
    monkeypatch.setattr(torch_compat, 'TORCH_SCOPED_ALLOW_LIST',
                        not restricted)
    return request.param


ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'sr_ratios', 'mlp_ratios',
             'qkv_bias', 'apply_transform')


@pytest.fixture
def reference(golden):
    """The authors' classifier state dict (head included) and its arch."""
    arch = {k: golden['config'][k] for k in ARCH_KEYS}
    return dict(golden['state_dict']), arch


def pretrained(path, arch, **kwargs):
    model = ResT(
        arch=arch,
        init_cfg=dict(type='Pretrained', checkpoint=str(path), **kwargs))
    model.init_weights()
    return model


@pytest.mark.parametrize('wrap', [None, 'model', 'state_dict'])
def test_reference_weights_load_through_init_cfg(tmp_path, golden, reference,
                                                 wrap):
    """The authors' own tensors, in each of their layouts, give the
    backbone the reference parameters and the reference outputs."""
    state, arch = reference
    path = tmp_path / 'rest_tiny.pth'
    torch.save(state if wrap is None else {wrap: state, 'epoch': 300}, path)
    torch.manual_seed(123)  # random initial weights, to be overwritten
    model = pretrained(path, arch).eval()
    own = model.state_dict()
    assert not any(k.startswith('head.') for k in own)
    assert set(own) == {k for k in state if not k.startswith('head.')}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key

    # Outputs against the float64 reference: the model within 4x the
    # literal (authors') path's own float32 error, and that path within 4x
    # the error of the authors' float32 outputs (another CPU rounds
    # differently), each plus a floor of a few float32 roundings (1e-6 ~ 8
    # eps). Wrong weights fail the second bound.
    data = golden['cases']['224x224']
    literal = to_literal(model)
    with torch.no_grad():
        outs = model(data['input'])
        literal_outs = literal(data['input'])
    for i, (out, lit, authors, exact) in enumerate(
            zip(outs, literal_outs, data['backbone_outputs'],
                data['backbone_outputs_f64'])):
        err = relative_error(out.double(), exact)
        err_literal = relative_error(lit.double(), exact)
        err_authors = relative_error(authors.double(), exact)
        assert err_literal <= 4 * err_authors + 1e-6, (f'stage {i + 1}',
                                                       err_literal,
                                                       err_authors)
        assert err <= 4 * err_literal + 1e-6, (f'stage {i + 1}', err,
                                               err_literal)


def test_detector_checkpoint_with_prefix(tmp_path, reference):
    state, arch = reference
    det = {f'backbone.{k}': v for k, v in state.items()}
    det['neck.lateral.weight'] = torch.zeros(3)
    torch.save({
        'state_dict': det,
        'meta': {
            'epoch': 12
        }
    }, tmp_path / 'det.pth')
    for prefix in ('backbone.', 'backbone'):  # the dot may be left out
        model = pretrained(tmp_path / 'det.pth', arch, prefix=prefix)
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), (prefix, key)


def test_detector_checkpoint_without_prefix_is_an_error(tmp_path, reference):
    """The most common pretrained-weights mistake: nothing would load and
    training would start from random weights."""
    state, arch = reference
    det = {f'backbone.{k}': v for k, v in state.items()}
    torch.save({
        'state_dict': det,
        'meta': {
            'epoch': 12
        }
    }, tmp_path / 'det.pth')
    with pytest.raises(CheckpointError) as info:
        pretrained(tmp_path / 'det.pth', arch)
    message = str(info.value)
    assert "sets 0 of the" in message
    assert "prefix='backbone.'" in message
    assert 'checkpoint keys: backbone.' in message
    assert 'model keys: stem.conv1.weight' in message
    assert 'allow_partial=True' in message


def test_prefix_that_matches_nothing_shows_the_keys(tmp_path, reference):
    state, arch = reference
    torch.save(state, tmp_path / 'cls.pth')
    with pytest.raises(
            CheckpointError,
            match=r"no keys under the prefix "
            r"'backbone\.' \(its keys: head\.bias"):
        pretrained(tmp_path / 'cls.pth', arch, prefix='backbone.')


def test_another_networks_checkpoint_is_an_error(tmp_path, reference):
    _, arch = reference
    torch.manual_seed(0)
    other = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4))
    torch.save({'state_dict': other.state_dict()}, tmp_path / 'other.pth')
    with pytest.raises(CheckpointError) as info:
        pretrained(tmp_path / 'other.pth', arch)
    message = str(info.value)
    assert 'sets 0 of the' in message and 'another network' in message
    assert 'checkpoint keys: 0.weight' in message
    assert 'model keys: stem.conv1.weight' in message
    # one key of the backbone under a prefix is no reason to suggest it
    # (half of the backbone's tensors under it would be)
    state = dict(other.state_dict())
    state['extra.stem.conv1.weight'] = torch.zeros(0)
    torch.save({'state_dict': state}, tmp_path / 'other.pth')
    with pytest.raises(CheckpointError, match='another network') as info:
        pretrained(tmp_path / 'other.pth', arch)
    assert 'prefix=' not in str(info.value)


def test_partial_checkpoint_needs_the_opt_out(tmp_path, reference):
    """Under half of the parameter tensors is an error; allow_partial=True
    loads what there is, and exactly that."""
    state, arch = reference
    params = [k for k, _ in ResT(arch=arch).named_parameters()]
    n = int(0.4 * len(params))
    partial = {k: state[k] for k in params[:n]}
    torch.save(partial, tmp_path / 'part.pth')
    with pytest.raises(
            CheckpointError,
            match=f'sets {n} of the '
            f'{len(params)} parameter tensors'):
        pretrained(tmp_path / 'part.pth', arch)
    torch.manual_seed(5)
    model = pretrained(tmp_path / 'part.pth', arch, allow_partial=True)
    own = dict(model.named_parameters())
    assert all(torch.equal(own[k], state[k]) for k in params[:n])
    assert not any(
        torch.equal(own[k], state[k])
        for k in params[n:] if state[k].numel() > 1 and state[k].std() > 0)
    # over half loads without the opt-out
    torch.save({k: state[k]
                for k in params[:len(params) // 2 + 1]}, tmp_path / 'most.pth')
    pretrained(tmp_path / 'most.pth', arch)


def test_misspelt_init_cfg_key_is_an_error(tmp_path, reference):
    state, arch = reference
    torch.save(state, tmp_path / 'w.pth')
    with pytest.raises(KeyError, match='allow_parital'):
        pretrained(tmp_path / 'w.pth', arch, allow_parital=True)


def test_missing_checkpoint_names_the_path(tmp_path, reference):
    path = tmp_path / 'nowhere' / 'rest_small.pth'
    with pytest.raises(FileNotFoundError, match='rest_small.pth'):
        pretrained(path, reference[1])


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_corrupt_checkpoint_names_the_file(tmp_path, reference, damage):
    state, arch = reference
    path = tmp_path / 'rest_tiny.pth'
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage ==
                     'truncate' else b'not a checkpoint at all' * 100)
    with pytest.raises(CheckpointError, match='rest_tiny.pth'):
        pretrained(path, arch)


def test_checkpoint_of_another_variant_lists_the_keys(tmp_path, reference):
    state, _ = reference  # embed dims 16..128; ResT-Lite's are 64..512
    state = dict(state, **{'stem.norm1.num_batches_tracked': torch.tensor(7)})
    path = tmp_path / 'rest_tiny.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        pretrained(path, 'lite')
    message = str(info.value)
    assert 'rest_tiny.pth' in message
    assert 'stem.conv1.weight: checkpoint (8, 3, 3, 3) vs model ' \
           '(32, 3, 3, 3)' in message
    # strict=False skips what differs, and then too little is left
    with pytest.raises(CheckpointError, match='another variant'):
        pretrained(path, 'lite', strict=False)
    # both opt-outs: what fits loads
    model = pretrained(path, 'lite', strict=False, allow_partial=True)
    assert model.stem.norm1.num_batches_tracked.item() == 7
    assert model.stem.conv1.weight.shape == (32, 3, 3, 3)
    # the function behind init_cfg is as strict by default
    from mmrest.checkpoint import load_backbone_state_dict
    with pytest.raises(CheckpointError, match='does not fit this ResT'):
        load_backbone_state_dict(ResT('lite'), str(path))
    with pytest.raises(CheckpointError, match='another variant'):
        load_backbone_state_dict(ResT('lite'), str(path), strict_shapes=False)


# ------------------------------------------------------ hostile files
def _multiarray():
    core = getattr(np, '_core', None)
    return getattr(core, 'multiarray', None) or np.core.multiarray


def test_pickle_payload_is_refused_and_never_runs(tmp_path, reference):
    state, arch = reference
    marker = tmp_path / 'pwned'
    path = tmp_path / 'rest_tiny.pth'
    torch.save(dict(state, evil=Reduce(os.system, f'touch {marker}')), path)
    with pytest.raises(CheckpointError, match='Refused'):
        pretrained(path, arch)
    assert not marker.exists()
    # the same file through mmengine's loader, as mmrest's hook runs it,
    # is refused too
    from mmengine.runner import load_checkpoint
    with pytest.raises((pickle.UnpicklingError, CheckpointError)):
        with mmengine_safe_loading():
            load_checkpoint(nn.Linear(1, 1), str(path))
    assert not marker.exists()
    if torch_compat.TORCH_SCOPED_ALLOW_LIST:
        # and, torch >= 2.6 loading weights-only by default, without it
        # (mmengine's own torch.load on an older torch runs the payload)
        with pytest.raises(pickle.UnpicklingError):
            load_checkpoint(nn.Linear(1, 1), str(path))
        assert not marker.exists()


def _hostile_cases():
    """Pickles that would reach code or Python objects, and the refusal of
    the stand-in that must stop each."""
    from mmengine.logging import HistoryBuffer
    ma = _multiarray()
    getattr_refused = 'refused getattr.*may only name HistoryBuffer'
    return {
        # getattr reaches anything from an allowed class: only the four
        # statistics methods of HistoryBuffer are answered
        'getattr_init': (Reduce(getattr, HistoryBuffer,
                                '__init__'), getattr_refused),
        'getattr_register': (Reduce(getattr, HistoryBuffer,
                                    'register_statistics'), getattr_refused),
        'getattr_globals': (Reduce(getattr, HistoryBuffer.min,
                                   '__globals__'), getattr_refused),
        'getattr_ndarray': (Reduce(getattr, np.ndarray,
                                   'tofile'), getattr_refused),
        # _reconstruct builds any subtype it is given
        'reconstruct_subtype': (Reduce(ma._reconstruct, HistoryBuffer, (0, ),
                                       b'b'), 'refused numpy _reconstruct'),
        # and each other argument alone: a typecode, shapes
        'reconstruct_typecode': (Reduce(ma._reconstruct, np.ndarray, (0, ),
                                        b'B'), 'refused numpy _reconstruct'),
        'reconstruct_list_shape': (Reduce(ma._reconstruct, np.ndarray, [0],
                                          b'b'), 'refused numpy _reconstruct'),
        'reconstruct_float_shape':
        (Reduce(ma._reconstruct, np.ndarray, (0.5, ),
                b'b'), 'refused numpy _reconstruct'),
        # arrays and scalars of Python objects
        'object_array':
        (np.array([1, 'x'],
                  dtype=object), r'refused numpy.dtype.*Python objects'),
        'object_scalar': (Reduce(ma.scalar, np.dtype(object),
                                 [1]), r'refused numpy.dtype.*Python objects'),
        'scalar_not_bytes': (Reduce(ma.scalar, np.dtype('f8'),
                                    1.5), 'refused numpy scalar'),
        'bytes_call': (Reduce(bytes, 10**6), r'refused bytes\(1000000,\)'),
    }


@pytest.mark.parametrize('case', sorted(_hostile_cases()))
def test_stand_ins_refuse_all_but_data(tmp_path, case, loader):
    """The callables that safe_loading allow-lists (stand-ins for getattr,
    bytes, numpy's _reconstruct, scalar and dtype) refuse every use but
    plain data: each of these pickles would reach code or Python objects,
    and is stopped by the stand-in named in the message, on both paths."""
    obj, refusal = _hostile_cases()[case]
    path = tmp_path / 'ckpt.pth'
    torch.save({'x': obj}, path)
    with pytest.raises(pickle.UnpicklingError, match=refusal):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match='Refused'):
        load_checkpoint_file(path)


def test_encode_and_reconstruct_stand_ins_refuse_other_arguments(tmp_path):
    """The restricted unpickler's ``_codecs.encode`` gives latin-1 text
    only (how pickle protocol 2 writes bytes), also from a file; numpy's
    ``_reconstruct`` refuses a subclass or a bool in the shape (its other
    arguments from a file: ``_hostile_cases``)."""
    import codecs

    import mmrest.checkpoint.safe_load as ck
    assert ck._latin1_encode('\xffa') == b'\xffa'
    assert ck._latin1_encode('\xffa', 'latin-1') == b'\xffa'
    for args in ((b'x', 'latin1'), ('x', 'utf-8'), ('x', 'rot13')):
        with pytest.raises(
                pickle.UnpicklingError, match='refused _codecs.encode'):
            ck._latin1_encode(*args)
    path = tmp_path / 'encode.pth'
    torch.save({'x': Reduce(codecs.encode, 'x', 'rot13')}, path)
    with pytest.raises(pickle.UnpicklingError, match='refused _codecs.encode'):
        safe_torch_load(path, restricted=True)
    empty = ck._safe_reconstruct(np.ndarray, (0, ), b'b')
    assert type(empty) is np.ndarray and empty.shape == (0, )
    # not reachable from a file (no global allows either), refused anyway
    for args in ((np.matrix, (0, ), b'b'), (np.ndarray, (True, ), b'b')):
        with pytest.raises(
                pickle.UnpicklingError, match='refused numpy _reconstruct'):
            ck._safe_reconstruct(*args)


def test_restricted_unpickler_loads_torch_values(tmp_path):
    """A dtype (a mixed-precision run's meta holds one), a layout (torch
    pickles it through ``torch.serialization._get_layout``), a size and a
    sparse tensor load through the restricted unpickler as they were."""
    values = dict(
        dtype=torch.float16,
        layout=torch.sparse_coo,
        size=torch.Size([2, 3]),
        sparse=torch.eye(3).to_sparse())
    path = tmp_path / 'values.pth'
    torch.save(values, path)
    out = safe_torch_load(path, restricted=True)
    assert out['dtype'] is torch.float16
    assert out['layout'] is torch.sparse_coo
    assert out['size'] == torch.Size([2, 3])
    assert out['sparse'].layout is torch.sparse_coo
    assert torch.equal(out['sparse'].to_dense(), torch.eye(3))


@pytest.mark.skipif(
    not os.path.exists('/proc/self/maps'), reason='Linux: /proc/self/maps')
def test_mmap_maps_the_file(tmp_path, loader):
    """``mmap=True`` memory-maps the checkpoint (a path object too), and
    only then: the file is among the process's mappings while the tensors
    live."""
    import gc
    path = tmp_path / 'mapped.pth'
    torch.save({'w': torch.arange(10.)}, path)

    def mapped() -> bool:
        with open('/proc/self/maps') as f:
            return str(path) in f.read()

    out = safe_torch_load(path, mmap=True)
    assert mapped() and torch.equal(out['w'], torch.arange(10.))
    del out
    gc.collect()
    assert not mapped()
    out = safe_torch_load(path)
    assert not mapped() and torch.equal(out['w'], torch.arange(10.))


def test_scalar_stand_in_refuses_objects():
    import mmrest.checkpoint.safe_load as ck
    with pytest.raises(pickle.UnpicklingError, match='refused numpy scalar'):
        ck._safe_scalar(np.dtype(object), b'12345678')
    assert ck._safe_scalar(np.dtype('<f4'), np.float32(2.5).tobytes()) == 2.5


def test_stand_ins_load_plain_numpy_data(tmp_path, loader):
    data = {
        'a': np.arange(6, dtype=np.int32).reshape(2, 3),
        'f': np.float32(1.25),
        'i': np.int64(-3),
        'b': np.bool_(True),
        's': np.array(['ab', 'c']),
        'e': np.zeros((0, 2))
    }
    torch.save(data, tmp_path / 'np.pth')
    out = safe_torch_load(tmp_path / 'np.pth')
    for key, value in data.items():
        assert type(out[key]) is type(value) and out[key].dtype == \
            value.dtype and np.array_equal(out[key], value), key


def test_allow_list_without_numpy_dtypes_module(tmp_path, monkeypatch):
    """numpy < 1.25 has no ``numpy.dtypes``: the dtype classes then come
    from numpy's type codes alone, every one but the object dtype's, and
    numpy data still loads."""
    dtype_classes = {
        type(np.dtype(c))
        for c in np.typecodes['All'] + 'MmV' if c != 'O'
    }
    monkeypatch.delattr(np, 'dtypes', raising=False)
    allowed = set(checkpoint_safe_globals())
    assert dtype_classes <= allowed
    assert type(np.dtype(object)) not in allowed
    data = {'a': np.arange(3, dtype=np.int16), 'f': np.float64(0.5)}
    torch.save(data, tmp_path / 'np.pth')
    out = safe_torch_load(tmp_path / 'np.pth')
    assert out['a'].dtype == np.int16 and out['f'] == 0.5


@pytest.mark.skipif(
    not torch_compat.TORCH_SCOPED_ALLOW_LIST,
    reason='torch < 2.6 has no scoped weights-only '
    'allow-list (safe_loading refuses to run, see '
    'test_safe_loading_on_old_torch_says_so)')
def test_allow_list_is_scoped_and_narrow():
    """Only inside safe_loading, only data classes and mmrest's stand-ins;
    numpy's own _reconstruct / scalar and builtins.getattr never."""
    import argparse
    import builtins

    from mmengine.logging import HistoryBuffer

    import mmrest.checkpoint.safe_load as ck
    before = list(torch.serialization.get_safe_globals())
    with safe_loading():
        during = torch.serialization.get_safe_globals()
    # torch keeps the allow-list in a set, so its order varies between runs
    # (class hashes are addresses); restored means the same entries.
    after = torch.serialization.get_safe_globals()
    assert len(after) == len(before) and set(after) == set(before)
    added = [g for g in during if g not in before]
    assert added
    stand_ins = {
        ck._history_buffer_getattr, ck._safe_reconstruct, ck._safe_scalar,
        ck._safe_dtype, ck._empty_bytes
    }
    ma = _multiarray()
    for entry in added:
        obj = entry[0] if isinstance(entry, tuple) else entry
        assert obj not in (builtins.getattr, builtins.eval, builtins.exec,
                           builtins.bytes, os.system, __import__,
                           ma._reconstruct, ma.scalar, np.dtype,
                           type(np.dtype(object)))
        assert obj in stand_ins or obj in (HistoryBuffer, argparse.Namespace,
                                           np.ndarray) or \
            (isinstance(obj, type) and issubclass(obj, np.dtype)), entry
    assert set(checkpoint_safe_globals()) == set(added)


def _dangerous_globals():
    import builtins
    import codecs
    ma = _multiarray()
    return (builtins.getattr, builtins.eval, builtins.exec, builtins.bytes,
            builtins.open, os.system, __import__, ma._reconstruct, ma.scalar,
            np.dtype, type(np.dtype(object)), codecs.encode, pickle.loads,
            subprocess.Popen)


def test_restricted_unpickler_table_is_narrow():
    """What the restricted unpickler resolves: torch's tensor globals
    (torch's own weights-only list), data classes and mmrest's stand-ins
    under the names they replace; never the real getattr, bytes, numpy
    constructors or anything that runs code."""
    import argparse

    from mmengine.logging import HistoryBuffer

    import mmrest.checkpoint.safe_load as ck
    table = restricted_globals()
    stand_ins = {
        'builtins.getattr': ck._history_buffer_getattr,
        'builtins.bytes': ck._empty_bytes,
        'numpy.dtype': ck._safe_dtype,
        '_codecs.encode': ck._latin1_encode
    }
    for name, obj in stand_ins.items():
        assert table[name] is obj, name
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        assert table[f'{module}._reconstruct'] is ck._safe_reconstruct
        assert table[f'{module}.scalar'] is ck._safe_scalar
    for name, obj in table.items():
        assert not any(obj is bad for bad in _dangerous_globals()), name
        assert (name.startswith(('torch.', 'collections.'))
                or name in ('builtins.set', 'builtins.frozenset',
                            'builtins.complex', 'builtins.bytearray')
                or obj in (HistoryBuffer, argparse.Namespace, np.ndarray)
                or obj in stand_ins.values()
                or obj in (ck._safe_reconstruct, ck._safe_scalar)
                or (isinstance(obj, type) and issubclass(obj, np.dtype))), name
        if name.startswith('torch.') and callable(obj) and \
                not isinstance(obj, type):
            # torch's own rebuild functions only
            assert obj.__name__.startswith(('_rebuild', '_get_layout')), name


def test_restricted_unpickler_refuses_os_system_loads_checkpoint(
        tmp_path, reference, loader):
    """A checkpoint whose pickle calls os.system is refused before the call
    (no marker file), and a real checkpoint (the authors' weights in an
    mmengine-style file with a message hub) loads, on both paths."""
    state, _ = reference
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save(dict(state, evil=Reduce(os.system, f'touch {marker}')), evil)
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(evil)
    with pytest.raises(CheckpointError, match='Refused'):
        load_checkpoint_file(evil)
    assert not marker.exists()
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub.get_instance(f'test_restricted_{loader}')
    hub.update_scalar('train/loss', np.float32(0.5))
    good = tmp_path / 'good.pth'
    torch.save(
        {
            'meta': {
                'iter': np.int64(3)
            },
            'state_dict': state,
            'message_hub': hub.state_dict()
        }, good)
    for ckpt in (safe_torch_load(good), load_checkpoint_file(good),
                 safe_torch_load(good, mmap=True)):
        assert set(ckpt['state_dict']) == set(state)
        for key, value in state.items():
            assert torch.equal(ckpt['state_dict'][key], value), key
        assert ckpt['meta']['iter'] == 3
        buffer = ckpt['message_hub']['log_scalars']['train/loss']
        assert type(buffer) is HistoryBuffer and buffer.current() == 0.5


def test_restricted_unpickler_changes_no_global_state(tmp_path, reference,
                                                      monkeypatch):
    """The restricted path registers nothing: torch's allow-list (where it
    has one) is the same during and after the load, and mmengine's loader
    of local files is back after mmengine_safe_loading."""
    from mmengine.runner.checkpoint import CheckpointLoader

    import mmrest.checkpoint.safe_load as ck
    state, _ = reference
    path = tmp_path / 'w.pth'
    torch.save(state, path)
    get = getattr(torch.serialization, 'get_safe_globals', lambda: [])
    before = (list(get()), CheckpointLoader._schemes.get(''))
    during = []
    find_class = ck.RestrictedUnpickler.find_class

    def spy(self, module, name):  # torch's allow-list in mid-load
        during.append(list(get()))
        return find_class(self, module, name)

    monkeypatch.setattr(ck.RestrictedUnpickler, 'find_class', spy)
    out = safe_torch_load(path, restricted=True)
    assert during and all(d == before[0] for d in during)
    assert set(out) == set(state)
    monkeypatch.setattr(torch_compat, 'TORCH_SCOPED_ALLOW_LIST', False)
    with mmengine_safe_loading():
        assert CheckpointLoader._schemes.get('') is not before[1]
    assert (list(get()), CheckpointLoader._schemes.get('')) == before


def test_safe_loading_on_old_torch_says_so(monkeypatch):
    """On a torch without the scoped allow-list, safe_loading (torch's
    path) refuses to run and names the loader that works there."""
    monkeypatch.setattr(torch_compat, 'TORCH_SCOPED_ALLOW_LIST', False)
    with pytest.raises(
            RuntimeError, match='torch >= 2.6.*load_checkpoint_file'):
        with safe_loading():
            pass


def test_import_mmrest_changes_no_global_state():
    code = textwrap.dedent('''
        import torch
        from mmengine.logging import HistoryBuffer
        from mmengine.runner.checkpoint import CheckpointLoader
        get = getattr(torch.serialization, 'get_safe_globals', lambda: [])
        before = (list(get()),
                  HistoryBuffer.__getstate__, HistoryBuffer.__setstate__,
                  CheckpointLoader._schemes.get(''))
        import mmrest
        after = (list(get()),
                 HistoryBuffer.__getstate__, HistoryBuffer.__setstate__,
                 CheckpointLoader._schemes.get(''))
        assert before[1:] == after[1:], 'HistoryBuffer or mmengine patched'
        # torch registers its own DTensor classes when mmengine / mmdet
        # import torch.distributed.tensor; nothing else may appear
        added = [g for g in after[0] if g not in before[0]]
        names = [g[1] if isinstance(g, tuple) else
                 f'{g.__module__}.{g.__qualname__}' for g in added]
        assert all(n.startswith('torch.') for n in names), names
        print('unchanged')
    ''')
    out = run_program([sys.executable, '-c', code], timeout=300)
    assert 'unchanged' in out.stdout, out.output


# ------------------------------------------------ mmengine checkpoints
TOY = textwrap.dedent('''
    import torch
    import torch.nn as nn
    from mmengine.model import BaseModel
    from torch.utils.data import Dataset


    class RandomImages(Dataset):

        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return dict(inputs=torch.rand(3, 8, 8, generator=g),
                        label=torch.tensor(i % 2))


    class Toy(BaseModel):

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.head = nn.Linear(4, 2)

        def forward(self, inputs, label, mode='loss'):
            logits = self.head(self.backbone(inputs).mean(dim=(2, 3)))
            if mode == 'loss':
                return dict(loss=nn.functional.cross_entropy(logits, label))
            return logits


    def runner(work_dir, max_iters, checkpoint_hook, resume=False,
               load_from=None):
        import uuid

        from mmengine.runner import Runner

        # A name of its own: mmengine names a runner's message hub, logger
        # and visualizer after the second it starts, and hands a later
        # runner of the same second the instances (and lr history) of the
        # earlier one
        return Runner(
            model=Toy(),
            work_dir=str(work_dir),
            experiment_name=f'toy_{uuid.uuid4().hex}',
            train_dataloader=dict(
                dataset=RandomImages(), batch_size=4,
                sampler=dict(type='DefaultSampler', shuffle=True),
                collate_fn=dict(type='default_collate')),
            optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
            param_scheduler=dict(type='MultiStepLR', milestones=[2],
                                 by_epoch=False),
            train_cfg=dict(by_epoch=False, max_iters=max_iters),
            default_hooks=dict(checkpoint=checkpoint_hook),
            randomness=dict(seed=0),
            resume=resume,
            load_from=load_from)
''')
_toy = {}
exec(compile(TOY, 'toy', 'exec'), _toy)


def _save_without_mmrest(work_dir):
    """Two iterations and a checkpoint, by a process that never imports
    mmrest (mmengine's own CheckpointHook)."""
    code = TOY + textwrap.dedent(f'''
        import sys
        runner({str(work_dir)!r}, 2,
               dict(type='CheckpointHook', interval=2, by_epoch=False)
               ).train()
        assert 'mmrest' not in sys.modules
    ''')
    run_program([sys.executable, '-c', code], timeout=300)


def _atomic_hook():
    from mmrest.engine import AtomicCheckpointHook
    return AtomicCheckpointHook(interval=2, by_epoch=False)


@pytest.mark.parametrize('saved_by', ['mmrest', 'plain mmengine'])
def test_mmengine_checkpoint_resumes(tmp_path, saved_by, loader):
    if saved_by == 'mmrest':
        _toy['runner'](tmp_path, 2, _atomic_hook()).train()
    else:
        _save_without_mmrest(tmp_path)
    path = tmp_path / 'iter_2.pth'
    assert path.is_file()
    # more than tensors (message hub: HistoryBuffer, numpy values): a
    # plain weights-only load refuses it, in this process too ...
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint_file(path)
    assert {'meta', 'state_dict', 'optimizer', 'message_hub'} <= set(ckpt)
    # ... and resuming through AtomicCheckpointHook reads all of it back
    resumed = _toy['runner'](tmp_path, 4, _atomic_hook(), resume=True)
    resumed.train()
    assert resumed.iter == 4
    assert resumed.message_hub.get_scalar('train/lr').data[0].size == 4
    assert (tmp_path / 'iter_4.pth').is_file()
    # load_from (no resume) works the same way
    fresh = _toy['runner'](
        tmp_path / 'b', 2, _atomic_hook(), load_from=str(path))
    fresh.call_hook('before_run')  # as train / val / test do, then load
    wrapped = fresh.load_checkpoint
    fresh.call_hook('before_run')  # a second loop (train, then test)
    assert fresh.load_checkpoint is wrapped  # wrapped once, not again
    fresh.load_or_resume()
    assert torch.equal(fresh.model.head.weight,
                       ckpt['state_dict']['head.weight'])
    # and the allow-list is gone again
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_atomic_hook_writes_atomically_only_through_its_own_backend(
        tmp_path, monkeypatch):
    """AtomicCheckpointHook is atomic with a local folder and no deprecated
    ``file_client_args`` (with them it is mmengine's CheckpointHook, which
    refuses both kinds of arguments at once); only the main process removes
    the temporary files of a killed writer."""
    import subprocess

    from mmengine.hooks import CheckpointHook

    import mmrest.engine.hooks as hooks
    from mmrest.engine import AtomicCheckpointHook
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = f'.iter_9.pth.{dead.pid}.tmp'
    for folder, main in (('rank1', False), ('rank0', True)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / stale).write_bytes(b'x')
        hook = _atomic_hook()
        monkeypatch.setattr(hooks, 'is_main_process', lambda m=main: m)
        _toy['runner'](tmp_path / folder, 2, hook).train()
        assert hook.atomic
        assert (tmp_path / folder / stale).exists() is not main
    hook = AtomicCheckpointHook(
        interval=2, by_epoch=False, file_client_args=dict(backend='disk'))
    calls = []
    monkeypatch.setattr(CheckpointHook, '_save_checkpoint_with_step',
                        lambda *args: calls.append(args[2]))
    _toy['runner'](tmp_path / 'deprecated', 2, hook).train()
    assert not hook.atomic and calls == [2]


def test_mmengine_checkpoint_loads_into_a_backbone(tmp_path, reference):
    """A detector-style mmengine checkpoint (message hub and all), loaded
    through init_cfg with a prefix."""
    state, arch = reference
    model = nn.Module()
    model.backbone = ResT(arch=arch)
    model.backbone.load_state_dict({
        k: v
        for k, v in state.items() if not k.startswith('head.')
    })
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('test_checkpoint_hub')
    hub.update_scalar('train/loss', np.float32(0.5))
    torch.save(
        {
            'meta': {
                'iter': np.int64(3)
            },
            'state_dict': model.state_dict(),
            'message_hub': hub.state_dict()
        }, tmp_path / 'det.pth')
    loaded = pretrained(tmp_path / 'det.pth', arch, prefix='backbone.')
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_hook_guard(monkeypatch):
    """AtomicCheckpointHook overrides a private mmengine method: without it
    (another mmengine) the hook says so instead of silently not being
    atomic."""
    from mmengine.hooks import CheckpointHook

    from mmrest.engine import AtomicCheckpointHook
    monkeypatch.delattr(CheckpointHook, '_save_checkpoint_with_step')
    with pytest.raises(
            RuntimeError,
            match='_save_checkpoint_with_step.*'
            r'mmengine>=0\.10\.0,<0\.11'):
        AtomicCheckpointHook(interval=1)


def test_url_checkpoint_is_downloaded_then_loaded_weights_only(
        tmp_path, monkeypatch, reference):
    """mmengine's http loader would load with weights_only=False; mmrest
    downloads the file (here: a stand-in for the download) and loads it
    weights-only."""
    import shutil
    state, arch = reference
    marker = tmp_path / 'pwned'
    files = {
        'good.pth': state,
        'evil.pth': dict(state, evil=Reduce(os.system, f'touch {marker}'))
    }
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(
        torch.hub,
        'download_url_to_file',
        lambda url, dst, progress=True: shutil.copy(
            tmp_path / url.rsplit('/', 1)[1], dst))
    model = pretrained('https://example.com/w/good.pth', arch)
    assert torch.equal(model.stem.conv1.weight, state['stem.conv1.weight'])
    assert (tmp_path / 'hub' / 'checkpoints' / 'good.pth').is_file()
    with pytest.raises(CheckpointError, match='Refused'):
        pretrained('https://example.com/w/evil.pth', arch)
    assert not marker.exists()


def test_load_is_logged_and_key_differences_are_warnings(
        tmp_path, reference, monkeypatch):
    """What a load did is logged: the tensors loaded at INFO, keys missing
    from the file (left as initialised) and keys the backbone does not
    have (ignored) as warnings, each naming the keys."""
    import logging

    from mmrest.checkpoint import backbone_weights
    logged = []
    monkeypatch.setattr(
        backbone_weights,
        'print_log',
        lambda msg, logger=None, level=logging.INFO: logged.append(
            (level, msg)))
    state, arch = reference
    state = dict(state)
    del state['norm.weight']
    state['stem.extra.weight'] = torch.zeros(1)
    path = tmp_path / 'rest_tiny.pth'
    torch.save(state, path)
    pretrained(path, arch)
    levels = {msg.split(' ')[0]: (level, msg) for level, msg in logged}
    assert levels['Loaded'][0] == logging.INFO
    assert levels['Keys'] == (logging.WARNING,
                              f"Keys missing from {str(path)!r} (left as "
                              "initialised): ['norm.weight']")
    assert levels['Unexpected'][0] == logging.WARNING
    assert "'stem.extra.weight'" in levels['Unexpected'][1]
