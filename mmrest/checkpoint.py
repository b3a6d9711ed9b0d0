# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Safe checkpoint loading.

Every checkpoint mmrest loads goes through ``torch.load(weights_only=True)``:
a file carrying a pickled payload is refused and the payload never runs.
mmengine 0.10.7 checkpoints hold a few non-tensor types (its message hub's
``HistoryBuffer`` and the numpy arrays and scalars inside it); importing
mmrest allow-lists exactly those (and keeps ``HistoryBuffer`` from pickling
functions), so ``resume`` and ``load_from`` work under torch >= 2.6 without
switching the safety check off.
"""
import argparse
import os
import pickle
import zipfile
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log


def _numpy_globals() -> List:
    """The numpy types that numpy arrays and scalars pickle as."""
    core = getattr(np, '_core', None)
    multiarray = getattr(core, 'multiarray', None) if core else None
    if multiarray is None:  # numpy < 2
        from numpy.core import multiarray
    types = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles dtypes through their own classes.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        types += [
            getattr(dtypes, name) for name in dir(dtypes)
            if name.endswith('DType') and isinstance(
                getattr(dtypes, name), type)
        ]
    return types


def checkpoint_safe_globals() -> List:
    """Types allowed in checkpoints beside tensors and plain containers."""
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, argparse.Namespace] + _numpy_globals()


def _history_buffer_state(self) -> dict:
    """``HistoryBuffer.__getstate__`` without the statistics functions.

    mmengine pickles the class-level table of statistics methods with every
    buffer, as ``getattr(HistoryBuffer, 'min')`` calls; allowing ``getattr``
    in a weights-only load would let any file reach any attribute. The table
    is rebuilt by ``__setstate__`` anyway (defaults, plus what the running
    process registered), so the checkpoint does not need it.
    """
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def allow_mmengine_checkpoints() -> None:
    """Let mmengine checkpoints load with ``weights_only=True``.

    Allow-lists the types they hold (mmengine's ``HistoryBuffer`` and numpy
    arrays and scalars) and stops ``HistoryBuffer`` from pickling functions
    (see :func:`_history_buffer_state`). The check itself stays on: a pickle
    that names any other global (a function to call, a class to build) is
    still refused.
    """
    from mmengine.logging import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_state
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch >= 2.4
        add(checkpoint_safe_globals())


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: corrupt, unsafe or mismatched.
    """


def load_checkpoint_file(path: str, map_location='cpu') -> Dict:
    """Load a checkpoint with ``weights_only=True`` and clear errors.

    Args:
        path (str): A local file, or a URL / other mmengine backend path.
        map_location: As for :func:`torch.load`.

    Returns:
        dict: The checkpoint.
    """
    if '://' in str(path):
        from mmengine.runner import CheckpointLoader
        return CheckpointLoader.load_checkpoint(path, map_location)
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Checkpoint file not found: {path!r}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'Refused to load {path!r}: it holds objects other than weights '
            f'(possibly code), and weights_only loading does not run them. '
            f'Details: {str(e).splitlines()[0]}') from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            f'Cannot read checkpoint {path!r}: the file is truncated or '
            f'corrupt ({type(e).__name__}: {str(e).splitlines()[0]})') from e


def extract_state_dict(checkpoint: Dict, prefix: Optional[str] = None,
                       source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint, as a flat state dict.

    Accepts a plain state dict or one under ``state_dict`` or ``model``;
    strips a ``module.`` wrapper prefix; with ``prefix`` (for example
    ``'backbone.'``) keeps only the keys under it, prefix removed.
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
        state_dict = {
            k[len(prefix):]: v
            for k, v in state_dict.items() if k.startswith(prefix)
        }
        if not state_dict:
            raise CheckpointError(f'{source} has no keys under the prefix '
                                  f'{prefix!r}')
    return state_dict


def load_backbone_state_dict(module: nn.Module,
                             path: str,
                             prefix: Optional[str] = None,
                             strict_shapes: bool = True,
                             map_location='cpu',
                             ignore=('head.', )) -> None:
    """Load a (classifier or detector) checkpoint into a backbone.

    The classifier ``head`` is dropped. Keys whose shapes differ (a
    checkpoint of another variant, say) raise a :class:`CheckpointError`
    that lists them, unless ``strict_shapes=False``, which skips them with a
    warning. Missing and unexpected keys are reported in the log.
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
