# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Checks of a config's files, run before anything is built (by
:mod:`mmrest_tools.launch`, behind ``tools/train.py`` and ``tools/test.py``).

A missing file should stop a run at once, with a message that names it,
not after minutes of building or at the first batch:

* :func:`check_pretrained_files`: the backbone's pretrained checkpoints
  (``type='Pretrained'`` init configs). The loader would name a missing one
  too (:func:`mmrest.checkpoint.check_pretrained_file`, same message), but
  only once the model is built and initialised, after the datasets.
  A run that loads (``load_from``) or resumes a checkpoint takes the
  backbone's weights from it: :func:`skip_pretrained_loaded_over` drops the
  pretrained init configs whose file is missing when that checkpoint holds
  the weights of their modules.
* :func:`check_data_paths`: mmdet names a missing COCO annotation file when
  the Runner builds the dataset (pycocotools' ``FileNotFoundError``), but a
  missing image folder only surfaces at the first image a dataloader worker
  reads, after the run has started, and mmseg's folder-scanning datasets
  fail in their own ways. It looks at every local path a split's dataset
  (and its evaluator) will read and names all the missing ones at once.
"""
import os.path as osp
from typing import Any, List, Optional, Sequence

import torch

from mmrest.checkpoint import (extract_state_dict, is_local_path,
                               load_checkpoint_file, missing_weights_message,
                               safe_loading)

# Config keys of the datasets that wrap other datasets.
_WRAPPED = ('dataset', 'datasets')


def _is_remote(path: str) -> bool:
    return '://' in str(path)


def _is_local(backend_args) -> bool:
    return not backend_args or backend_args.get('backend',
                                                 'local') == 'local'


def _describe(path: str) -> str:
    if osp.isabs(path):
        return repr(path)
    return f'{path!r} (resolved as {osp.abspath(path)!r})'


def _join(data_root: str, path: str) -> str:
    # As mmengine's BaseDataset: relative paths are under data_root.
    if data_root and not osp.isabs(path):
        return osp.join(data_root, path)
    return path


def _check_dataset(cfg, key: str, missing: List[str]) -> None:
    if not isinstance(cfg, dict):  # a built dataset: nothing to check
        return
    if any(k in cfg for k in _WRAPPED):
        inner = cfg.get('datasets', cfg.get('dataset'))
        if isinstance(inner, (list, tuple)):
            for i, sub in enumerate(inner):
                _check_dataset(sub, f'{key}.datasets[{i}]', missing)
        else:
            _check_dataset(inner, f'{key}.dataset', missing)
        return
    if not _is_local(cfg.get('backend_args')):
        return
    data_root = cfg.get('data_root') or ''
    if _is_remote(data_root):
        return
    if data_root and not osp.isdir(data_root):
        missing.append(f'{key}.data_root: {_describe(data_root)} is not a '
                       f'folder' if osp.exists(data_root) else
                       f'{key}.data_root: {_describe(data_root)} does not '
                       'exist')
    ann_file = cfg.get('ann_file')
    if isinstance(ann_file, str) and ann_file and not _is_remote(ann_file):
        path = _join(data_root, ann_file)
        if not osp.isfile(path):
            missing.append(f'{key}.ann_file: {_describe(path)} ' + (
                'is not a file' if osp.exists(path) else 'does not exist'))
    prefixes = cfg.get('data_prefix') or {}
    if isinstance(prefixes, dict):
        for name, prefix in prefixes.items():
            if not isinstance(prefix, str) or not prefix or \
                    _is_remote(prefix):
                continue  # '' is data_root itself, checked above
            path = _join(data_root, prefix)
            if not osp.isdir(path):
                missing.append(
                    f'{key}.data_prefix.{name}: {_describe(path)} ' +
                    ('is not a folder'
                     if osp.exists(path) else 'does not exist'))


def _check_evaluator(cfg, key: str, missing: List[str]) -> None:
    evaluators = cfg if isinstance(cfg, (list, tuple)) else [cfg]
    for i, evaluator in enumerate(evaluators):
        if not isinstance(evaluator, dict):
            continue
        name = key if len(evaluators) == 1 else f'{key}[{i}]'
        ann_file = evaluator.get('ann_file')
        if isinstance(ann_file, str) and ann_file and \
                not _is_remote(ann_file) and \
                _is_local(evaluator.get('backend_args')) and \
                not osp.isfile(ann_file):
            missing.append(f'{name}.ann_file: {_describe(ann_file)} ' + (
                'is not a file' if osp.exists(ann_file) else
                'does not exist'))


def check_data_paths(cfg, splits: Sequence[str] = ('train', 'val')) -> None:
    """Raise if a dataset file or folder the splits will read is missing.

    For each split (``'train'``, ``'val'`` or ``'test'``) whose loop the
    Runner would build (``<split>_dataloader`` and ``<split>_cfg`` set),
    checks the dataset's ``data_root``, ``ann_file`` and ``data_prefix``
    folders, through dataset wrappers (``dataset`` / ``datasets`` keys), and
    the evaluator's ``ann_file``. Remote paths (``s3://``...) and datasets
    read through a non-local file backend are not checked.

    Args:
        cfg (Config | dict): The full config.
        splits (Sequence[str]): The splits to check. Training reads
            ``('train', 'val')``, testing ``('test', )``.

    Raises:
        FileNotFoundError: Naming every missing path and its config key.
    """
    missing: List[str] = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or cfg.get(f'{split}_cfg') is None:
            continue
        _check_dataset(loader.get('dataset'), f'{split}_dataloader.dataset',
                       missing)
        _check_evaluator(
            cfg.get(f'{split}_evaluator'), f'{split}_evaluator', missing)
    if missing:
        listing = '\n  '.join(missing)
        raise FileNotFoundError(
            f'Dataset paths not found:\n  {listing}\nPoint data_root (or '
            f'these entries) at your copy of the data, in the config or with '
            f'--cfg-options.')


def find_missing_pretrained(cfg: Any) -> List[str]:
    """Local checkpoints named by ``type='Pretrained'`` init configs
    anywhere in ``cfg`` (a config, dict or list) that do not exist."""
    missing = []
    if isinstance(cfg, dict):
        if cfg.get('type') == 'Pretrained' and is_local_path(
                cfg.get('checkpoint')):
            path = str(cfg['checkpoint'])
            if not osp.isfile(osp.expanduser(path)):
                missing.append(path)
        for value in cfg.values():
            missing += find_missing_pretrained(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            missing += find_missing_pretrained(value)
    return missing


def check_pretrained_files(model_cfg: Any) -> None:
    """Raise FileNotFoundError for the first missing local ``Pretrained``
    checkpoint in a model config, naming the path and where to get it."""
    missing = find_missing_pretrained(model_cfg)
    if missing:
        raise FileNotFoundError(missing_weights_message(missing[0]))


def checkpoint_to_load(cfg) -> Optional[str]:
    """The checkpoint that mmengine's Runner will load or resume from once
    it has initialised the weights, as ``Runner.load_or_resume`` decides:
    ``load_from`` (with ``resume`` or not); with ``resume`` and no
    ``load_from``, the checkpoint that ``<work_dir>/last_checkpoint``
    names; None when there is none (mmengine then starts afresh).

    Args:
        cfg (Config | dict): The full config, ``work_dir`` set.
    """
    load_from = cfg.get('load_from')
    if load_from:
        return str(load_from)
    if not cfg.get('resume') or not cfg.get('work_dir'):
        return None
    pointer = osp.join(cfg['work_dir'], 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        latest = f.read().strip()
    return latest or None


def _state_dict_keys(path: str) -> List[str]:
    """The weight names of a local checkpoint; its tensors memory-mapped,
    not read, where the format allows. Raises a clear error for a file that
    cannot be read."""
    checkpoint = None
    try:
        with safe_loading():
            checkpoint = torch.load(
                osp.expanduser(path), map_location='cpu', weights_only=True,
                mmap=True)
    except Exception:  # legacy format, unsafe or corrupt: the loader says
        checkpoint = load_checkpoint_file(path)
    return list(extract_state_dict(checkpoint, source=repr(path)))


def _pretrained_init_cfgs(node, module: tuple, found: list) -> None:
    """``(module path, holder, init)`` for each ``type='Pretrained'`` entry
    of an ``init_cfg`` (a dict or a list) in a model config; the module
    path is the config keys (and list indices) that lead to it, as the
    built model names the module."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'init_cfg':
                inits = value if isinstance(value, (list, tuple)) else [value]
                for init in inits:
                    if isinstance(init, dict) and \
                            init.get('type') == 'Pretrained':
                        found.append((module, node, init))
            else:
                _pretrained_init_cfgs(value, module + (str(key), ), found)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _pretrained_init_cfgs(value, module + (str(i), ), found)


def skip_pretrained_loaded_over(cfg) -> List[str]:
    """Drop the pretrained init configs whose file is missing and whose
    weights the run loads from its checkpoint anyway.

    mmengine initialises the model (loading ``type='Pretrained'``
    checkpoints such as the backbone's ImageNet weights) and then loads
    ``load_from`` or resumes (:func:`checkpoint_to_load`), which replaces
    those weights. So when the checkpoint holds weights of the module an
    init config initialises (keys under ``backbone.`` for
    ``model.backbone.init_cfg``), a missing pretrained file is not needed:
    that init config is removed (the module starts from its default
    initialisation, then gets the checkpoint's weights). A remote checkpoint
    (``https://``, ``s3://``...) is not read beforehand and is taken to hold
    them (mmengine's loader warns about missing keys). Init configs whose
    file exists are left as they are.

    Args:
        cfg (Config): The full config, changed in place.

    Returns:
        list[str]: One line per init config removed, for the log.

    Raises:
        FileNotFoundError: A missing pretrained file that is still needed:
            there is no checkpoint to load (also ``resume`` with no
            checkpoint in the work dir), or it holds no weights of that
            module. The message names both.
    """
    model = cfg.get('model')
    found: list = []
    _pretrained_init_cfgs(model, (), found)
    missing = [(module, holder, init) for module, holder, init in found
               if is_local_path(init.get('checkpoint')) and
               not osp.isfile(osp.expanduser(str(init['checkpoint'])))]
    if not missing:
        return []
    checkpoint = checkpoint_to_load(cfg)
    if checkpoint is None:
        if cfg.get('resume'):
            raise FileNotFoundError(
                missing_weights_message(missing[0][2]['checkpoint']) +
                f' (--resume found no checkpoint in the work dir '
                f'{cfg.get("work_dir")!r}: the run starts afresh and needs '
                'it.)')
        return []  # check_pretrained_files names it
    keys = _state_dict_keys(checkpoint) if is_local_path(checkpoint) \
        else None
    notes = []
    for module, holder, init in missing:
        prefix = '.'.join(module) + '.' if module else ''
        name = '.'.join(('model', ) + module)
        if keys is not None and not any(k.startswith(prefix) for k in keys):
            raise FileNotFoundError(
                missing_weights_message(init['checkpoint']) +
                f' The checkpoint this run loads, {checkpoint!r}, holds no '
                f'weights of {name} (no key starts with {prefix!r}), so '
                'that module still needs its pretrained file.')
        inits = holder['init_cfg']
        if isinstance(inits, (list, tuple)):
            rest = [i for i in inits if i is not init]
            holder['init_cfg'] = rest or None
        else:
            holder['init_cfg'] = None
        notes.append(
            f'{name}.init_cfg: {init["checkpoint"]!r} is missing and not '
            f'needed: the run loads the weights of {name} from '
            f'{checkpoint!r}.')
    return notes
