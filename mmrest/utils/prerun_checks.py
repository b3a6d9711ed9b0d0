# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Checks of a config's files, run before anything is built.

A missing file should stop a run at once, with a message that names it,
not after minutes of building or at the first batch:

* :func:`check_pretrained_files`: the backbone's pretrained checkpoints
  (``type='Pretrained'`` init configs). The loader would name a missing one
  too (:func:`mmrest.checkpoint.check_pretrained_file`, same message), but
  only once the model is built and initialised, after the datasets.
* :func:`check_data_paths`: mmdet names a missing COCO annotation file when
  the Runner builds the dataset (pycocotools' ``FileNotFoundError``), but a
  missing image folder only surfaces at the first image a dataloader worker
  reads, after the run has started, and mmseg's folder-scanning datasets
  fail in their own ways. It looks at every local path a split's dataset
  (and its evaluator) will read and names all the missing ones at once.
"""
import os.path as osp
from typing import Any, List, Sequence

from ..checkpoint.pretrained import is_local_path, missing_weights_message

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
