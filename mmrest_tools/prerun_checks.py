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
  (and its evaluator) will read and names all the missing ones at once,
  and the image files that a COCO-format annotation file lists.
* :func:`check_classes`: mmdet builds and trains a detector whose heads
  have another number of classes than its data set without a word (more
  outputs than classes go unused; fewer end in an index error or a CUDA
  assertion mid-run), and a COCO-format data set silently drops the
  categories that its ``metainfo`` misspells and numbers the classes in the
  annotation file's order, not in the config's. It compares every head's
  ``num_classes`` with the classes of each data set the run reads, and
  those classes with the annotation file's categories.
"""
import json
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmrest.checkpoint import (extract_state_dict, is_local_path,
                               load_checkpoint_file, missing_weights_message,
                               safe_torch_load)

# Config keys of the datasets that wrap other datasets.
_WRAPPED = ('dataset', 'datasets')


def _is_remote(path: str) -> bool:
    return '://' in str(path)


def _is_local(backend_args) -> bool:
    return not backend_args or backend_args.get('backend', 'local') == 'local'


def _describe(path: str) -> str:
    if osp.isabs(path):
        return repr(path)
    return f'{path!r} (resolved as {osp.abspath(path)!r})'


def _join(data_root: str, path: str) -> str:
    # As mmengine's BaseDataset: relative paths are under data_root.
    if data_root and not osp.isabs(path):
        return osp.join(data_root, path)
    return path


# COCO-format annotation files read by these checks, by path, size and
# modification time (the train and val splits may share one, and
# check_data_paths and check_classes both read it): the few last ones.
_COCO_FILES: Dict[tuple, Optional[dict]] = {}
_COCO_FILES_KEPT = 4


def coco_summary(path: str) -> Optional[dict]:
    """What the checks need of a COCO-format annotation file: its category
    names in the file's order (``categories``) and the ``file_name`` of each
    image (``images``).

    Returns None for a file that is not local JSON in COCO's layout (an
    ``images`` and a ``categories`` list): the annotation files of other
    data sets, and files that mmdet will reject itself when it reads them.
    The file is read whole, as pycocotools will read it again.
    """
    path = str(path)
    if not path.endswith('.json') or not osp.isfile(path):
        return None
    stat = os.stat(path)
    key = (osp.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _COCO_FILES:
        return _COCO_FILES[key]
    try:
        with open(path, 'rb') as f:
            data = json.load(f)
    except (OSError, ValueError):  # unreadable: pycocotools will say so
        data = None
    summary = None
    if isinstance(data, dict) and isinstance(data.get('images'), list) \
            and isinstance(data.get('categories'), list):
        summary = dict(
            categories=[
                c.get('name') if isinstance(c, dict) else None
                for c in data['categories']
            ],
            images=[
                i.get('file_name') if isinstance(i, dict) else None
                for i in data['images']
            ])
    del data
    while len(_COCO_FILES) >= _COCO_FILES_KEPT:
        _COCO_FILES.pop(next(iter(_COCO_FILES)))
    _COCO_FILES[key] = summary
    return summary


def _examples(names: Sequence, n: int = 5) -> str:
    shown = ', '.join(repr(v) for v in list(names)[:n])
    return shown + (f', ... ({len(names)} in all)' if len(names) > n else '')


def _check_listed_images(ann_file: str, img_dir: str, key: str,
                         missing: List[str]) -> None:
    """The image files that a COCO-format ``ann_file`` lists and
    ``img_dir`` lacks (mmdet would fail at the first one a worker reads)."""
    summary = coco_summary(ann_file)
    if summary is None or not osp.isdir(img_dir or '.'):
        return  # not COCO's format, or the folder is named already
    absent, listings = [], {}
    for name in summary['images']:
        if not isinstance(name, str) or not name:
            absent.append(name)
            continue
        folder, base = osp.split(osp.join(img_dir, name))
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder or '.'))
            except OSError:
                listings[folder] = set()
        if base not in listings[folder]:
            absent.append(name)
    if absent:
        missing.append(
            f'{key}.data_prefix.img: {len(absent)} of the '
            f'{len(summary["images"])} images that {ann_file!r} lists are '
            f'not in {_describe(img_dir or ".")}: {_examples(absent)}')


def _check_dataset(cfg, key: str, missing: List[str]) -> None:
    """The files of each dataset a (wrapped) dataset config reads; a built
    dataset is not checked."""
    leaves: list = []
    _leaf_datasets(cfg, key, leaves)
    for leaf_key, leaf in leaves:
        _check_leaf_dataset(leaf, leaf_key, missing)


def _check_leaf_dataset(cfg: dict, key: str, missing: List[str]) -> None:
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
            if name == 'seg' and 'Panoptic' not in str(cfg.get('type')):
                # mmdet's instance CocoDataset ignores it (Mask2Former's
                # instance config inherits the panoptic config's)
                continue
            path = _join(data_root, prefix)
            if not osp.isdir(path):
                missing.append(
                    f'{key}.data_prefix.{name}: {_describe(path)} ' +
                    ('is not a folder' if osp.exists(path
                                                     ) else 'does not exist'))
    img_prefix = prefixes.get('img', '') if isinstance(prefixes, dict) \
        else ''
    if isinstance(ann_file, str) and ann_file and \
            not _is_remote(ann_file) and isinstance(img_prefix, str) and \
            not _is_remote(img_prefix):
        _check_listed_images(
            _join(data_root, ann_file), _join(data_root, img_prefix), key,
            missing)


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
                'is not a file' if osp.exists(ann_file) else 'does not exist'))


def check_data_paths(cfg, splits: Sequence[str] = ('train', 'val')) -> None:
    """Raise if a dataset file or folder the splits will read is missing.

    For each split (``'train'``, ``'val'`` or ``'test'``) whose loop the
    Runner would build (``<split>_dataloader`` and ``<split>_cfg`` set),
    checks the dataset's ``data_root``, ``ann_file`` and ``data_prefix``
    folders, through dataset wrappers (``dataset`` / ``datasets`` keys), and
    the evaluator's ``ann_file``; for a COCO-format (JSON) ``ann_file``, also
    every image file it lists, under ``data_prefix.img``. Remote paths
    (``s3://``...) and datasets read through a non-local file backend are
    not checked.

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
        _check_dataset(
            loader.get('dataset'), f'{split}_dataloader.dataset', missing)
        _check_evaluator(
            cfg.get(f'{split}_evaluator'), f'{split}_evaluator', missing)
    if missing:
        listing = '\n  '.join(missing)
        raise FileNotFoundError(
            f'Dataset paths not found:\n  {listing}\nPoint data_root (or '
            f'these entries) at your copy of the data, in the config or with '
            f'--cfg-options.')


# Keys of a model config under which a num_classes is not the data set's:
# the RPN is class-agnostic (one "object" class), a semantic head (HTC's,
# Panoptic FPN's) predicts stuff classes of its own, and the train / test
# settings and the data preprocessor hold no head.
_NOT_CLASS_HEADS = ('rpn_head', 'semantic_head', 'train_cfg', 'test_cfg',
                    'data_preprocessor', 'init_cfg')


def head_class_counts(model_cfg: Any,
                      path: str = 'model') -> List[Tuple[str, int]]:
    """Each head's number of classes in a model config, with its key:
    ``num_classes`` (mmdet's box and mask heads, a Cascade R-CNN's list of
    box heads, RetinaNet's and DINO's heads, mmseg's decode and auxiliary
    heads) and ``num_things_classes + num_stuff_classes`` (MaskFormer and
    Mask2Former heads); not the RPN's nor a semantic head's."""
    counts: List[Tuple[str, int]] = []
    if isinstance(model_cfg, dict):
        count = model_cfg.get('num_classes')
        if isinstance(count, int) and not isinstance(count, bool):
            counts.append((f'{path}.num_classes', count))
        things = model_cfg.get('num_things_classes')
        stuff = model_cfg.get('num_stuff_classes', 0)
        if isinstance(things, int) and isinstance(stuff, int):
            counts.append((f'{path}.num_things_classes + num_stuff_classes',
                           things + stuff))
        for key, value in model_cfg.items():
            if key not in _NOT_CLASS_HEADS:
                counts += head_class_counts(value, f'{path}.{key}')
    elif isinstance(model_cfg, (list, tuple)):
        for i, value in enumerate(model_cfg):
            counts += head_class_counts(value, f'{path}[{i}]')
    return counts


def _registered_classes(dataset_type, scope: Optional[str]):
    """The ``METAINFO['classes']`` of a dataset class given by name (looked
    up in ``scope``'s DATASETS, ``mmdet`` by default) or as a class; None
    where it cannot be found."""
    cls = dataset_type
    if isinstance(dataset_type, str):
        import importlib
        name = dataset_type
        if '.' in name:
            scope, name = name.split('.', 1)
        try:
            registry = importlib.import_module(
                f'{scope or "mmdet"}.registry').DATASETS
            cls = registry.get(name)
        except Exception:  # another scope, not installed: not checked
            return None
    metainfo = getattr(cls, 'METAINFO', None)
    return metainfo.get('classes') if isinstance(metainfo, dict) else None


def _leaf_datasets(cfg, key: str, found: list) -> None:
    """``(key, dataset config)`` of each dataset a (wrapped) config reads."""
    if not isinstance(cfg, dict):
        return
    if any(k in cfg for k in _WRAPPED):
        inner = cfg.get('datasets', cfg.get('dataset'))
        if isinstance(inner, (list, tuple)):
            for i, sub in enumerate(inner):
                _leaf_datasets(sub, f'{key}.datasets[{i}]', found)
        else:
            _leaf_datasets(inner, f'{key}.dataset', found)
        return
    found.append((key, cfg))


def _dataset_classes(dataset: dict,
                     scope: Optional[str]) -> Tuple[Optional[tuple], str]:
    """The classes a dataset config gives its data set and where they come
    from: ``metainfo.classes`` in the config, else the dataset class's
    ``METAINFO``."""
    metainfo = dataset.get('metainfo')
    classes = metainfo.get('classes') if isinstance(metainfo, dict) else None
    if classes is not None:
        where = 'metainfo.classes'
    else:
        classes = _registered_classes(dataset.get('type'), scope)
        where = f'the classes of {dataset.get("type")}'
    if isinstance(classes, (list, tuple)) and \
            all(isinstance(c, str) for c in classes):
        return tuple(classes), where
    return None, where  # a file name, or none known: not checked


def _check_categories(classes: tuple, dataset: dict, key: str,
                      problems: List[str]) -> None:
    """A COCO-format data set's classes against its annotation file's
    categories. mmdet (CocoDataset) keeps the categories whose name is in
    ``classes`` and numbers them in the file's order: a misspelt class has
    no annotation (and shifts the labels of the classes after it), and
    classes listed in another order than the file's get each other's
    names in every prediction."""
    ann_file = dataset.get('ann_file')
    if not isinstance(ann_file, str) or not ann_file or \
            _is_remote(ann_file) or not _is_local(dataset.get('backend_args')):
        return
    path = _join(dataset.get('data_root') or '', ann_file)
    summary = coco_summary(path)
    if summary is None:
        return
    names = summary['categories']
    absent = [c for c in classes if c not in names]
    kept = [n for n in names if n in classes]
    twice = sorted({n for n in kept if kept.count(n) > 1})
    where = f'{key}.metainfo.classes'
    if absent:
        problems.append(
            f'{where}: {_examples(absent)} not among the categories '
            f'({_examples(names, 100)}) of {path!r}; mmdet would drop the '
            'class without a word. Write the names as the file does.')
    elif twice:
        problems.append(
            f'{path!r} has more than one category named {_examples(twice)}'
            f'; mmdet would give them separate labels beyond {where}.')
    elif kept != list(classes):
        problems.append(
            f'{where} lists {_examples(classes, 100)}, but mmdet numbers '
            'the classes in the order of the categories '
            f'({_examples(kept, 100)}) of {path!r}: predictions would carry '
            'each other\'s names. List the classes in the file\'s order.')


def check_classes(cfg, splits: Sequence[str] = ('train', 'val')) -> None:
    """Raise if the model's heads and the data sets disagree on the
    classes, before anything is built.

    For each split whose loop the Runner would build (as
    :func:`check_data_paths`), takes the classes of each dataset it reads
    (``metainfo.classes`` in the config, else the dataset class's own, e.g.
    COCO's 80 for ``CocoDataset``) and checks that

    * every head of the model has as many classes
      (:func:`head_class_counts`: a Mask R-CNN's box and mask heads, each
      box head of a Cascade R-CNN, RetinaNet's or DINO's head,
      Mask2Former's things + stuff, mmseg's decode and auxiliary heads);
    * every split has the same classes, in the same order;
    * for a COCO-format annotation file that exists, each class is one of
      its categories (by name, once), listed in the file's order, which is
      the order mmdet numbers them in.

    Missing files are :func:`check_data_paths`'s to report; their contents
    are not checked here.

    Args:
        cfg (Config | dict): The full config.
        splits (Sequence[str]): The splits to check.

    Raises:
        ValueError: Naming every disagreement, the config keys and the
            classes involved.
    """
    scope = cfg.get('default_scope')
    problems: List[str] = []
    seen: List[Tuple[str, tuple, str]] = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or cfg.get(f'{split}_cfg') is None:
            continue
        leaves: list = []
        _leaf_datasets(
            loader.get('dataset'), f'{split}_dataloader.dataset', leaves)
        for key, dataset in leaves:
            classes, where = _dataset_classes(dataset, scope)
            if classes is None:
                continue
            seen.append((key, classes, where))
            _check_categories(classes, dataset, key, problems)
    if seen:
        key, classes, where = seen[0]
        for other, other_classes, _ in seen[1:]:
            if other_classes != classes:
                problems.append(
                    f'{other} has the classes {_examples(other_classes, 100)}'
                    f', {key} {_examples(classes, 100)}: a model is trained '
                    'and evaluated on one list of classes.')
        wrong = [(head, n) for head, n in head_class_counts(cfg.get('model'))
                 if n != len(classes)]
        if wrong:
            heads = '\n    '.join(f'{head} = {n}' for head, n in wrong)
            problems.append(
                f'{key} has {len(classes)} classes ({where}: '
                f'{_examples(classes, 10)}), but\n    {heads}\n  Set '
                f'num_classes={len(classes)} in every head listed (or give '
                'the data set the classes the heads were built for).')
    if problems:
        listing = '\n  '.join(problems)
        raise ValueError(
            f'The classes of the model and the data disagree:\n  {listing}')


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
    try:  # weights-only on every torch (torch's loader or mmrest's)
        checkpoint = safe_torch_load(osp.expanduser(path), mmap=True)
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
               if is_local_path(init.get('checkpoint'))
               and not osp.isfile(osp.expanduser(str(init['checkpoint'])))]
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
