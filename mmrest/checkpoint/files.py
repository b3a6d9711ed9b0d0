# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Reading a checkpoint file (local, http(s) or an mmengine file backend)
and the model weights in it, with errors that say what is wrong.

The file itself is loaded weights-only (:mod:`.safe_load`).
"""
import io
import os
import pickle
import zipfile
from typing import Dict, Optional, Sequence

import torch

from .safe_load import safe_torch_load


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


def key_examples(keys: Sequence[str], n: int = 4) -> str:
    """The first ``n`` keys, and how many there are, for an error."""
    keys = list(keys)
    shown = ', '.join(keys[:n])
    return shown + (f', ... ({len(keys)} in all)' if len(keys) > n else '')


def extract_state_dict(checkpoint: Dict,
                       prefix: Optional[str] = None,
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
                f'{source} has no keys under the prefix {prefix!r} (its '
                f'keys: {key_examples(state_dict)}). Drop prefix from '
                'init_cfg for a classifier checkpoint, or give the prefix '
                'its keys use.')
        state_dict = kept
    return state_dict
