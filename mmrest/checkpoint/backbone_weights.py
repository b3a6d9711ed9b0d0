# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""A backbone's weights from a (classifier, detector or segmentor)
checkpoint: the call behind ``init_cfg=dict(type='Pretrained', ...)`` of
mmrest's backbones, with errors that name the likely cause of a mismatch.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.logging import print_log

from .family import check_checkpoint_family
from .files import (CheckpointError, extract_state_dict, key_examples,
                    load_checkpoint_file)
from .pretrained import check_pretrained_file

#: :func:`load_backbone_state_dict` refuses a checkpoint that sets fewer
#: than this share of the module's parameter tensors (see there).
MIN_MATCHED_SHARE = 0.5
#: The keys a ``type='Pretrained'`` init_cfg may hold for mmrest backbones.
PRETRAINED_CFG_KEYS = ('type', 'checkpoint', 'prefix', 'strict',
                       'allow_partial', 'map_location')


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
    state_dict, mismatched = _drop_other_shapes(module, state_dict, path,
                                                strict_shapes)
    _check_matched_share(module, state_dict, path, bool(mismatched),
                         allow_partial)
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    _log_loaded(path, len(state_dict), missing, unexpected)


def _drop_other_shapes(module: nn.Module, state_dict: Dict, path: str,
                       strict_shapes: bool) -> Tuple[Dict, List[str]]:
    """The entries whose shapes fit the module, and a description of each
    that does not; with ``strict_shapes`` any misfit is an error."""
    own = module.state_dict()
    mismatched = [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    ]
    if not mismatched:
        return state_dict, mismatched
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
    return state_dict, mismatched


def _check_matched_share(module: nn.Module, state_dict: Dict, path: str,
                         shapes_differed: bool, allow_partial: bool) -> None:
    """Refuse (or, with ``allow_partial``, warn about) a checkpoint that
    sets under :data:`MIN_MATCHED_SHARE` of the module's parameters, naming
    the likely cause."""
    params = dict(module.named_parameters())
    matched = [k for k in params if k in state_dict]
    share = len(matched) / max(len(params), 1)
    if share >= MIN_MATCHED_SHARE:
        return
    found = (f'{path!r} sets {len(matched)} of the {len(params)} '
             f'parameter tensors of this {type(module).__name__} '
             f'({share:.0%}; at least {MIN_MATCHED_SHARE:.0%} expected)')
    if allow_partial:
        print_log(
            f'{found}; loading them as allow_partial=True asks.',
            logger='current',
            level=30)
        return
    cause = _likely_cause(list(state_dict), params, shapes_differed)
    raise CheckpointError(
        f'{found}. Likely cause: {cause}.\n  checkpoint keys: '
        f'{key_examples(list(state_dict))}\n  model keys: '
        f'{key_examples(list(module.state_dict()))}\nPass '
        'allow_partial=True in init_cfg to load what matches anyway.')


def _likely_cause(keys: Sequence[str], params: Mapping,
                  shapes_differed: bool) -> str:
    """Why a checkpoint sets few of the parameters, as the error says it."""
    likely = _likely_prefix(keys, params)
    if likely is not None:
        return (f'its weights lie under {likely!r} (a detector or '
                f'segmentor checkpoint?): add prefix={likely!r} to '
                'init_cfg')
    if shapes_differed:
        return ('most of its tensors have other shapes: a '
                'checkpoint of another variant')
    return ('it is the checkpoint of another network (or '
            'another prefix of it)')


def _log_loaded(path: str, loaded: int, missing: Sequence[str],
                unexpected: Sequence[str]) -> None:
    print_log(
        f'Loaded {loaded - len(unexpected)} tensors from {path!r}',
        logger='current')
    if missing:
        print_log(
            f'Keys missing from {path!r} (left as initialised): '
            f'{missing}',
            logger='current',
            level=30)
    if unexpected:
        print_log(
            f'Unexpected keys in {path!r} (ignored): {unexpected}',
            logger='current',
            level=30)


def load_pretrained_init_cfg(
    module: nn.Module,
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
