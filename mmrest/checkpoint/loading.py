# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Safe checkpoint loading, and loading a backbone's weights from one.

Every checkpoint mmrest loads is loaded weights-only: a file carrying a
pickled payload is refused and the payload never runs. Two paths, chosen by
what torch offers (:data:`mmrest.utils.torch_compat.TORCH_SCOPED_ALLOW_LIST`):

- torch >= 2.6: ``torch.load(weights_only=True)``, torch's own restricted
  unpickler, with the allow-list below added for the duration of the load
  (:func:`safe_loading`);
- torch 2.1 to 2.5 (no scoped allow-list with stand-ins): ``torch.load``
  with ``pickle_module=`` :data:`RESTRICTED_PICKLE`, mmrest's restricted
  unpickler, which resolves a global only from a fixed table: the tensor,
  storage and dtype globals torch's weights-only loader accepts plus the
  same allow-list. Nothing is registered anywhere: the table exists only in
  that unpickler, which only mmrest's loads use.

mmengine 0.10.7 checkpoints hold a few non-tensor objects: its message hub's
``HistoryBuffer`` (pickled with a table of its statistics methods, written
as ``getattr(HistoryBuffer, 'min')`` and so on), numpy arrays, scalars and
dtypes. torch's weights-only loader refuses them. :func:`safe_loading`
allow-lists stand-ins for exactly those, for the duration of a load that
mmrest performs, and removes them afterwards: ``import mmrest`` changes
nothing in torch or mmengine, and a ``torch.load`` made elsewhere in the
process never sees the allow-list (except while one of mmrest's loads runs:
torch's allow-list is one per process, not per thread).

The allow-list holds data classes (``HistoryBuffer``, ``argparse.Namespace``,
numpy's non-object dtype classes) and five functions of mmrest's own that
stand in for the globals such files name, each refusing anything but plain
data (see ``tests/test_checkpoint.py``, which feeds them hostile pickles):

- ``builtins.getattr`` -> :func:`_history_buffer_getattr`: only
  ``HistoryBuffer``'s four default statistics methods;
- ``numpy.core.multiarray._reconstruct`` -> :func:`_safe_reconstruct`: an
  empty plain ``numpy.ndarray`` (its data comes from ``__setstate__``);
- ``numpy.core.multiarray.scalar`` -> :func:`_safe_scalar`: a numeric scalar
  from raw bytes;
- ``numpy.dtype`` -> :func:`_safe_dtype`: a dtype from its string code,
  never the object dtype (object arrays are refused);
- ``builtins.bytes`` -> :func:`_empty_bytes`: ``bytes()`` only (protocol 2
  writes an empty array's data so);
- ``_codecs.encode`` -> :func:`_latin1_encode` (restricted unpickler only;
  torch's loader has its own): a ``str`` to bytes in latin-1, the way
  protocol 2 writes bytes.

The real ``getattr``, ``bytes``, ``numpy.dtype``, ``_reconstruct`` and
``scalar`` are never allow-listed.
"""
import _compat_pickle
import argparse
import codecs
import collections
import contextlib
import io
import os
import pickle
import types
import zipfile
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..utils import torch_compat

#: ``HistoryBuffer``'s statistics methods that a checkpoint may name.
HISTORY_STATISTICS = ('min', 'max', 'mean', 'current')
#: :func:`load_backbone_state_dict` refuses a checkpoint that sets fewer
#: than this share of the module's parameter tensors (see there).
MIN_MATCHED_SHARE = 0.5
#: The keys a ``type='Pretrained'`` init_cfg may hold for mmrest backbones.
PRETRAINED_CFG_KEYS = ('type', 'checkpoint', 'prefix', 'strict',
                       'allow_partial', 'map_location')


def _multiarray():
    core = getattr(np, '_core', None)
    multiarray = getattr(core, 'multiarray', None) if core else None
    if multiarray is None:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


def _history_buffer_getattr(obj, name):
    """Stands in for ``builtins.getattr`` in mmrest's loads.

    mmengine pickles ``HistoryBuffer``'s table of statistics methods as
    ``getattr(HistoryBuffer, 'min')`` calls (pickle protocol 2 writes a
    method that way). Only those lookups are answered; any other (the way a
    hostile file would reach ``os.system`` or a method that writes files)
    is refused.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in HISTORY_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refused getattr({obj!r}, {name!r}): a checkpoint may only name '
        f'HistoryBuffer.{"/".join(HISTORY_STATISTICS)}')


def _safe_reconstruct(subtype, shape, typecode):
    """Stands in for numpy's ``_reconstruct``: an empty plain ndarray."""
    if subtype is not np.ndarray or typecode != b'b' or not (
            isinstance(shape, tuple)
            and all(type(n) is int for n in shape)):
        raise pickle.UnpicklingError(
            f'refused numpy _reconstruct{(subtype, shape, typecode)!r}: '
            'only a plain numpy.ndarray may be rebuilt')
    return _multiarray()._reconstruct(np.ndarray, shape, typecode)


def _safe_dtype(spec, align=False, copy=False):
    """Stands in for ``numpy.dtype``: a dtype from its string code, never
    one that holds Python objects."""
    if type(spec) is not str:
        raise pickle.UnpicklingError(
            f'refused numpy.dtype({spec!r}): only string codes are loaded')
    dtype = np.dtype(spec, bool(align), bool(copy))
    if dtype.hasobject:
        raise pickle.UnpicklingError(
            f'refused numpy.dtype({spec!r}): arrays of Python objects are '
            'not loaded')
    return dtype


def _safe_scalar(dtype, data=None):
    """Stands in for numpy's ``scalar``: a number from its raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or \
            type(data) is not bytes:
        raise pickle.UnpicklingError(
            f'refused numpy scalar({dtype!r}, {type(data).__name__}): only '
            'numbers from raw bytes are loaded')
    return _multiarray().scalar(dtype, data)


def _empty_bytes(*args):
    """Stands in for ``builtins.bytes``: pickle protocol 2 writes ``b''``
    (the data of an empty numpy array) as ``bytes()``; nothing else."""
    if args:
        raise pickle.UnpicklingError(
            f'refused bytes{args!r}: only bytes() is loaded')
    return b''


def _latin1_encode(obj, encoding='latin1'):
    """Stands in for ``_codecs.encode`` (restricted unpickler): pickle
    protocol 2 writes ``bytes`` as ``encode(str, 'latin1')``; nothing else.
    """
    if type(obj) is not str or encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(
            f'refused _codecs.encode({type(obj).__name__}, {encoding!r}): '
            'only latin-1 text is loaded')
    return codecs.encode(obj, 'latin1')


def checkpoint_safe_globals() -> List:
    """What :func:`safe_loading` allow-lists (see the module docstring).

    Returns:
        list: Classes, and ``(stand-in, 'module.name')`` pairs.
    """
    from mmengine.logging import HistoryBuffer
    allowed = [HistoryBuffer, argparse.Namespace, np.ndarray,
               (_history_buffer_getattr, 'builtins.getattr'),
               (_empty_bytes, 'builtins.bytes'),
               (_safe_dtype, 'numpy.dtype')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed += [(_safe_reconstruct, f'{module}._reconstruct'),
                    (_safe_scalar, f'{module}.scalar')]
    # The classes of dtype instances, so that their state can be set;
    # the object dtype's class is left out.
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    classes = {
        type(np.dtype(code))
        for code in np.typecodes['All'] + 'MmV' if code != 'O'
    }
    if dtypes is not None:
        classes |= {
            getattr(dtypes, name) for name in dir(dtypes)
            if name.endswith('DType') and isinstance(getattr(dtypes, name),
                                                     type)
        }
    classes.discard(type(np.dtype(object)))
    allowed += sorted(classes, key=lambda c: c.__qualname__)
    return allowed


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """Allow-list :func:`checkpoint_safe_globals` for the loads inside.

    ``torch.load(weights_only=True)`` inside the ``with`` block accepts
    mmengine checkpoints (saved by a process that imported mmrest or not);
    afterwards the allow-list is as before (entries the caller had added
    themselves stay). Needs torch >= 2.5 (``torch.serialization
    .safe_globals``).

    Example:
        >>> with safe_loading():
        ...     ckpt = torch.load('iter_100.pth', weights_only=True)
    """
    if not torch_compat.TORCH_SCOPED_ALLOW_LIST:
        raise RuntimeError(
            f'safe_loading needs torch >= 2.6 (a scoped weights-only '
            f'allow-list, torch.serialization.safe_globals); this is torch '
            f'{torch.__version__}. Load with '
            'mmrest.checkpoint.load_checkpoint_file, which uses mmrest\'s '
            'restricted unpickler on this torch.')
    current = torch.serialization.get_safe_globals()
    new = [g for g in checkpoint_safe_globals() if g not in current]
    with torch.serialization.safe_globals(new):
        yield


def _global_name(entry) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


def _torch_globals() -> Dict[str, object]:
    """The tensor, storage, dtype and layout globals of torch's weights-only
    loader (``torch._weights_only_unpickler``), those this torch has."""
    found = {
        'collections.OrderedDict': collections.OrderedDict,
        'collections.Counter': collections.Counter,
        'torch.nn.parameter.Parameter': torch.nn.Parameter,
        'torch.Size': torch.Size,
        'torch.Tensor': torch.Tensor,
        'torch.device': torch.device,
        'builtins.set': set,
        'builtins.frozenset': frozenset,
        'builtins.complex': complex,
        'builtins.bytearray': bytearray,
    }
    layout = getattr(torch.serialization, '_get_layout', None)
    if layout is not None:
        found['torch.serialization._get_layout'] = layout
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, (torch.dtype, torch.layout,
                              torch.memory_format)) or (
                type(value).__name__ == 'qscheme'):
            found[f'torch.{name}'] = value
    for cls in list(torch._tensor_classes) + list(torch._storage_classes):
        found[f'{cls.__module__}.{cls.__name__}'] = cls
    for name in ('_rebuild_parameter', '_rebuild_parameter_with_state',
                 '_rebuild_qtensor', '_rebuild_tensor', '_rebuild_tensor_v2',
                 '_rebuild_tensor_v3', '_rebuild_sparse_tensor',
                 '_rebuild_meta_tensor_no_storage', '_rebuild_nested_tensor',
                 '_rebuild_device_tensor_from_numpy',
                 '_rebuild_device_tensor_from_cpu_tensor'):
        function = getattr(torch._utils, name, None)
        if function is not None:
            found[f'torch._utils.{name}'] = function
    found['torch._tensor._rebuild_from_type_v2'] = \
        torch._tensor._rebuild_from_type_v2
    return found


def restricted_globals() -> Dict[str, object]:
    """What :class:`RestrictedUnpickler` resolves, by ``'module.name'``:
    torch's tensor globals and :func:`checkpoint_safe_globals` (stand-ins
    under the names they replace), plus ``_codecs.encode`` ->
    :func:`_latin1_encode`."""
    table = _torch_globals()
    for entry in checkpoint_safe_globals():
        table[_global_name(entry)] = entry[0] if isinstance(
            entry, tuple) else entry
    table['_codecs.encode'] = _latin1_encode
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of
    :func:`restricted_globals`: any other (``os.system``, ``eval``, a class
    with side effects) is an :class:`pickle.UnpicklingError` before anything
    runs. mmrest's loads on torch < 2.6 use it through
    ``torch.load(pickle_module=RESTRICTED_PICKLE)`` (see the module
    docstring); it can be used on any torch.
    """

    def find_class(self, module: str, name: str):
        # Python 2 names (pickle protocol 2 writes builtins as
        # __builtin__), mapped as pickle's own find_class does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = _RESTRICTED.get(f'{module}.{name}')
        if found is None:
            raise pickle.UnpicklingError(
                f'refused global {module}.{name}: not a tensor, number or '
                'the data of an mmengine checkpoint')
        return found


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data, **kwargs):
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


#: A stand-in ``pickle`` module for ``torch.load(pickle_module=...)``:
#: :class:`RestrictedUnpickler` as its ``Unpickler``.
RESTRICTED_PICKLE = types.ModuleType('mmrest_restricted_pickle')
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler
RESTRICTED_PICKLE.load = _restricted_load
RESTRICTED_PICKLE.loads = _restricted_loads
RESTRICTED_PICKLE.UnpicklingError = pickle.UnpicklingError
RESTRICTED_PICKLE.__version__ = pickle.format_version
_RESTRICTED = restricted_globals()


def safe_torch_load(source, map_location='cpu', mmap: bool = False,
                    restricted: Optional[bool] = None):
    """``torch.load`` weights-only with mmrest's allow-list, on any torch.

    Args:
        source (str | file): What :func:`torch.load` reads.
        map_location: As for :func:`torch.load`. Defaults to ``'cpu'``.
        mmap (bool): Memory-map the file (a path). Defaults to False.
        restricted (bool, optional): True: mmrest's restricted unpickler;
            False: torch's weights-only loader under :func:`safe_loading`
            (torch >= 2.6). Defaults to None: the latter where torch has
            it (:data:`~mmrest.utils.torch_compat.TORCH_SCOPED_ALLOW_LIST`).

    Raises:
        pickle.UnpicklingError: The file names a global outside the
            allow-list (its code never runs).
    """
    if restricted is None:
        restricted = not torch_compat.TORCH_SCOPED_ALLOW_LIST
    extra = {}
    if mmap:  # torch < 2.2 memory-maps str paths only
        source, extra = os.fspath(source), dict(mmap=True)
    if restricted:
        return torch.load(source, map_location=map_location,
                          pickle_module=RESTRICTED_PICKLE, weights_only=False,
                          **extra)
    with safe_loading():
        return torch.load(source, map_location=map_location,
                          weights_only=True, **extra)


@contextlib.contextmanager
def mmengine_safe_loading() -> Iterator[None]:
    """mmengine's checkpoint loads (``runner.load_checkpoint``, ``resume``,
    ``mmengine.runner.load_checkpoint``) of local files are weights-only
    inside the ``with`` block, with mmrest's allow-list, on every torch:
    :func:`safe_loading` on torch >= 2.6 (mmengine's ``torch.load`` is
    weights-only by default there); before, mmengine's loader of local
    files is replaced by :func:`safe_torch_load` for the duration of the
    block (like torch's allow-list, that is process-wide while it lasts).
    """
    if torch_compat.TORCH_SCOPED_ALLOW_LIST:
        with safe_loading():
            yield
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    previous = CheckpointLoader._schemes.get('')

    def load_from_local(filename, map_location):
        filename = os.path.expanduser(filename)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return safe_torch_load(filename, map_location=map_location)

    CheckpointLoader._schemes[''] = load_from_local
    try:
        yield
    finally:
        if previous is None:
            CheckpointLoader._schemes.pop('', None)
        else:
            CheckpointLoader._schemes[''] = previous


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: corrupt, unsafe or mismatched.
    """


def is_http_url(path) -> bool:
    """Whether ``path`` is an http(s) URL."""
    return isinstance(path, str) and path.startswith(('http://', 'https://'))


def download_checkpoint(url: str) -> str:
    """Download ``url`` into torch hub's checkpoint cache (the folder that
    ``torch.hub.load_state_dict_from_url`` uses) unless it is there; return
    the local path. Loading it stays the caller's business, so that it can
    be weights-only (mmengine's http loader and
    ``load_state_dict_from_url`` load with ``weights_only=False``)."""
    from urllib.parse import urlparse
    folder = os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(urlparse(url).path))
    if not os.path.isfile(path):
        torch.hub.download_url_to_file(url, path, progress=False)
    return path


def load_checkpoint_file(path: str, map_location='cpu') -> Dict:
    """Load a checkpoint weights-only (:func:`safe_torch_load`) with clear
    errors; mmengine checkpoints load too.

    Args:
        path (str): A local file, an http(s) URL (downloaded into torch
            hub's cache first), or a path of another mmengine file backend
            (``s3://`` and the like; read as bytes).
        map_location: As for :func:`torch.load`. Defaults to ``'cpu'``.

    Returns:
        dict: The checkpoint.
    """
    path = str(path)
    if is_http_url(path):
        path = download_checkpoint(path)
    if '://' in path:
        from mmengine.fileio import get
        try:
            source = io.BytesIO(get(path))
        except Exception as e:
            raise CheckpointError(
                f'Cannot read {path!r} ({type(e).__name__}: {e}). mmrest '
                'loads local files, http(s) URLs and mmengine file backends '
                '(s3:// and the like); for another scheme, download the file '
                'and give its path.') from e
    else:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Checkpoint file not found: {path!r}')
        source = path
    try:
        return safe_torch_load(source, map_location=map_location)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'Refused to load {path!r}: it holds objects other than weights '
            f'(possibly code), and weights_only loading does not run them. '
            f'Details: {str(e).splitlines()[0]}') from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            f'Cannot read checkpoint {path!r}: the file is truncated or '
            f'corrupt ({type(e).__name__}: {str(e).splitlines()[0]})') from e


def _examples(keys: Sequence[str], n: int = 4) -> str:
    keys = list(keys)
    shown = ', '.join(keys[:n])
    return shown + (f', ... ({len(keys)} in all)' if len(keys) > n else '')


def extract_state_dict(checkpoint: Dict, prefix: Optional[str] = None,
                       source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint, as a flat state dict.

    Args:
        checkpoint (dict): A plain state dict, or a checkpoint holding one
            under ``state_dict`` or ``model`` (the authors' layouts and
            mmengine's).
        prefix (str, optional): Keep only the keys under this prefix (for
            example ``'backbone.'`` for a detector checkpoint), prefix
            removed. Defaults to None.
        source (str): How to name the checkpoint in errors.

    Returns:
        dict: Tensor entries, a ``module.`` wrapper prefix stripped.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{source} holds a {type(checkpoint).__name__}'
                              ', not a state dict')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = {
        (k[len('module.'):] if k.startswith('module.') else k): v
        for k, v in checkpoint.items() if isinstance(v, torch.Tensor)
    }
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        kept = {
            k[len(prefix):]: v
            for k, v in state_dict.items() if k.startswith(prefix)
        }
        if not kept:
            raise CheckpointError(
                f'{source} has no keys under the prefix {prefix!r} (its keys: '
                f'{_examples(state_dict)}). Drop prefix from init_cfg for a '
                'classifier checkpoint, or give the prefix its keys use.')
        state_dict = kept
    return state_dict


def _likely_prefix(keys: Sequence[str], wanted: Mapping) -> Optional[str]:
    """The leading ``name.`` under which most of ``wanted`` lies."""
    best, best_count = None, 0
    for prefix in {k.split('.', 1)[0] + '.' for k in keys if '.' in k}:
        count = sum(k[len(prefix):] in wanted for k in keys
                    if k.startswith(prefix))
        if count > best_count:
            best, best_count = prefix, count
    return best if best_count >= MIN_MATCHED_SHARE * len(wanted) else None


def load_backbone_state_dict(module: nn.Module,
                             path: str,
                             prefix: Optional[str] = None,
                             strict_shapes: bool = True,
                             allow_partial: bool = False,
                             map_location='cpu',
                             ignore=('head.', )) -> None:
    """Load a (classifier or detector) checkpoint into a backbone.

    The call behind ``init_cfg=dict(type='Pretrained', ...)`` of mmrest's
    backbones (see :func:`load_pretrained_init_cfg`).

    A checkpoint that sets fewer than half (:data:`MIN_MATCHED_SHARE`) of
    the module's parameter tensors is an error, naming the likely cause:
    keys under a prefix (a detector or segmentor checkpoint given without
    ``prefix='backbone.'``) or another network's file, with example keys of
    both. Half, because the two cases lie far apart: a checkpoint of the
    right network sets every parameter but those of layers the backbone adds
    for its outputs (ResT's ``norm1``-``norm3``: 6 of 146 tensors for
    ResT-Lite, 96%), while a file of another network or variant sets none
    or a few (norms of matching width).

    Args:
        module (nn.Module): The backbone.
        path (str): The checkpoint (local path or URL).
        prefix (str, optional): Load only the keys under this prefix,
            prefix removed (``'backbone.'`` for a detector checkpoint).
            Defaults to None.
        strict_shapes (bool): Keys whose shapes differ from the module's
            (a checkpoint of another variant, say) raise a
            :class:`CheckpointError` that lists them; with False they are
            skipped with a warning. Defaults to True.
        allow_partial (bool): Load whatever matches, however little, with a
            warning instead of the error above (for example to start only
            the first stages from a checkpoint). Defaults to False.
        map_location: As for :func:`torch.load`. Defaults to ``'cpu'``.
        ignore (tuple[str]): Key prefixes dropped before matching (the
            classifier ``head.``).
    """
    state_dict = extract_state_dict(
        load_checkpoint_file(path, map_location), prefix, repr(path))
    state_dict = {
        k: v
        for k, v in state_dict.items() if not k.startswith(tuple(ignore))
    }
    own = module.state_dict()
    mismatched = [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        listing = '\n  '.join(mismatched)
        if strict_shapes:
            raise CheckpointError(
                f'{path!r} does not fit this {type(module).__name__} '
                f'(another variant?). {len(mismatched)} keys differ in '
                f'shape:\n  {listing}\nPass strict=False in init_cfg to load '
                f'the rest anyway.')
        print_log(
            f'Skipped {len(mismatched)} keys of {path!r} whose shapes '
            f'differ:\n  {listing}',
            logger='current',
            level=30)
        state_dict = {
            k: v
            for k, v in state_dict.items()
            if k not in own or v.shape == own[k].shape
        }
    params = dict(module.named_parameters())
    matched = [k for k in params if k in state_dict]
    share = len(matched) / max(len(params), 1)
    if share < MIN_MATCHED_SHARE:
        found = (f'{path!r} sets {len(matched)} of the {len(params)} '
                 f'parameter tensors of this {type(module).__name__} '
                 f'({share:.0%}; at least {MIN_MATCHED_SHARE:.0%} expected)')
        if not allow_partial:
            likely = _likely_prefix(list(state_dict), params)
            if likely is not None:
                cause = (f'its weights lie under {likely!r} (a detector or '
                         f'segmentor checkpoint?): add prefix={likely!r} to '
                         'init_cfg')
            elif mismatched:
                cause = ('most of its tensors have other shapes: a '
                         'checkpoint of another variant')
            else:
                cause = ('it is the checkpoint of another network (or '
                         'another prefix of it)')
            raise CheckpointError(
                f'{found}. Likely cause: {cause}.\n  checkpoint keys: '
                f'{_examples(list(state_dict))}\n  model keys: '
                f'{_examples(list(own))}\nPass allow_partial=True in '
                'init_cfg to load what matches anyway.')
        print_log(f'{found}; loading them as allow_partial=True asks.',
                  logger='current', level=30)
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    print_log(
        f'Loaded {len(state_dict) - len(unexpected)} tensors from {path!r}',
        logger='current')
    if missing:
        print_log(f'Keys missing from {path!r} (left as initialised): '
                  f'{missing}', logger='current', level=30)
    if unexpected:
        print_log(f'Unexpected keys in {path!r} (ignored): {unexpected}',
                  logger='current', level=30)


def load_pretrained_init_cfg(module: nn.Module,
                             init_cfg: Mapping,
                             family: Optional[str] = None,
                             ignore: Sequence[str] = ('head.', )) -> None:
    """Apply a ``type='Pretrained'`` init_cfg to an mmrest backbone.

    Args:
        module (nn.Module): The backbone.
        family (str, optional): ``'v1'`` or ``'v2'``: a checkpoint of the
            other ResT generation is refused with a message that says so.
        ignore (Sequence[str]): Key prefixes of the checkpoint that are
            not the backbone's (the classifier).
        init_cfg (dict): ``type='Pretrained'`` and ``checkpoint`` (a path or
            URL), optionally ``prefix`` (e.g. ``'backbone.'`` for a
            detector checkpoint), ``strict`` (default True: keys of another
            shape are an error), ``allow_partial`` (default False: a
            checkpoint that sets under half the parameters is an error) and
            ``map_location`` (default ``'cpu'``); see
            :func:`load_backbone_state_dict`. Any other key is an error (a
            misspelt option would otherwise be ignored).
    """
    from .pretrained import check_pretrained_file
    unknown = sorted(set(init_cfg) - set(PRETRAINED_CFG_KEYS))
    if unknown:
        raise KeyError(f'Unknown keys {unknown} in the Pretrained init_cfg of '
                       f'{type(module).__name__}; valid keys: '
                       f'{list(PRETRAINED_CFG_KEYS)}')
    if 'checkpoint' not in init_cfg:
        raise KeyError('The Pretrained init_cfg of '
                       f'{type(module).__name__} has no checkpoint')
    check_pretrained_file(init_cfg['checkpoint'])
    map_location = init_cfg.get('map_location', 'cpu')
    if family is not None:
        from .family import check_checkpoint_family
        check_checkpoint_family(init_cfg['checkpoint'], family,
                                init_cfg.get('prefix'), map_location)
    load_backbone_state_dict(
        module,
        init_cfg['checkpoint'],
        prefix=init_cfg.get('prefix'),
        strict_shapes=init_cfg.get('strict', True),
        allow_partial=init_cfg.get('allow_partial', False),
        map_location=map_location,
        ignore=tuple(ignore))
