# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Weights-only loading of checkpoint files, on every torch mmrest supports.

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
import argparse
import codecs
import collections
import contextlib
import io
import os
import pickle
import types
from typing import Dict, Iterator, List, Optional

import _compat_pickle
import numpy as np
import torch

from ..utils import torch_compat

#: ``HistoryBuffer``'s statistics methods that a checkpoint may name.
HISTORY_STATISTICS = ('min', 'max', 'mean', 'current')


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
    if subtype is not np.ndarray or typecode != b'b' or not (isinstance(
            shape, tuple) and all(type(n) is int for n in shape)):
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
    allowed = [
        HistoryBuffer, argparse.Namespace, np.ndarray,
        (_history_buffer_getattr, 'builtins.getattr'),
        (_empty_bytes, 'builtins.bytes'), (_safe_dtype, 'numpy.dtype')
    ]
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
            getattr(dtypes, name)
            for name in dir(dtypes) if name.endswith('DType')
            and isinstance(getattr(dtypes, name), type)
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
        if isinstance(value,
                      (torch.dtype, torch.layout, torch.memory_format)) or (
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
        table[_global_name(entry)] = entry[0] if isinstance(entry,
                                                            tuple) else entry
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


def safe_torch_load(source,
                    map_location='cpu',
                    mmap: bool = False,
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
        return torch.load(
            source,
            map_location=map_location,
            pickle_module=RESTRICTED_PICKLE,
            weights_only=False,
            **extra)
    with safe_loading():
        return torch.load(
            source, map_location=map_location, weights_only=True, **extra)


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
