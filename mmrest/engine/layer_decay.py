# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Layer-wise learning-rate decay for a model with a ResT / ResT v2
backbone (the authors' ADE20K recipe for ResT v2 small and base).

The authors' UperNet configs name a ``LearningRateDecayOptimizerConstructor``
with ``decay_type='stage_wise'`` and ``decay_rate=0.9``, but their
constructor is not in their release, and mmseg's of that name raises
``NotImplementedError`` for backbones other than ConvNeXt, BEiT and MAE.
:class:`ResTLayerDecayOptimizerConstructor` implements the rule below for
both generations of ResT.

**Layer ids.** Every parameter of the model gets a layer id ``i`` from 0 to
``max_id``; its learning rate is ``lr * decay_rate ** (max_id - i)``:

``stage_wise`` (``max_id = num_stages + 1 = 5``):

- the stem (``backbone.stem.*``): 0;
- stage ``s`` (1-4): its patch embedding (``backbone.patch_embed_s.*`` in
  ResT, ``backbone.patch_s.*`` in ResT v2; stage 1 has none, the stem is
  its embedding) and its blocks (``backbone.stage<s>.*``): ``s``;
- everything else: the backbone's output norms (ResT's ``norm1``-``norm3``
  and ``norm``, ResT v2's ``norm_1``-``norm_4``), the decode and auxiliary
  heads, a neck: ``max_id``, so the full ``lr``.

``layer_wise`` (``max_id = sum(depths) + 1``): the stem 0; block ``j``
(from 0) of stage ``s`` gets ``1 + depths[0] + ... + depths[s-2] + j``, so
the blocks count 1, 2, ..., ``sum(depths)`` from the input; the patch
embedding of stage ``s`` gets the id of that stage's first block; everything
else ``max_id``.

**Weight decay** (ConvNeXt's and BEiT's rule): no weight decay for 1-D
parameters (the weights and biases of every BatchNorm and LayerNorm) and for
every bias; every other parameter (the convolution and linear weights,
the pixel-attention positional encoding's depth-wise kernel included: it is
a 4-D convolution weight, not an embedding table) gets the optimizer's
``weight_decay``.

Config::

    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1.5e-4, weight_decay=0.05),
        constructor='ResTLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'))

``num_layers`` may be given as a check: the number of stages (4) for
``stage_wise``, the number of blocks ``sum(depths)`` for ``layer_wise``, or
the depths per stage (the authors wrote ``num_layers=(1, 2, 12, 2)``); a
value that does not match the backbone is an error.
"""
import numbers
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

DECAY_TYPES = ('stage_wise', 'layer_wise')
PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers')


def _rest_backbone(model: nn.Module) -> nn.Module:
    """The model's ResT or ResT v2 backbone (a clear error otherwise)."""
    from ..backbones import ResT, ResTV2
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, (ResT, ResTV2)):
        found = ('no attribute "backbone"' if backbone is None else
                 f'a {type(backbone).__name__} backbone')
        raise TypeError(
            'ResTLayerDecayOptimizerConstructor needs a model with a ResT or '
            f'ResTV2 backbone (model.backbone); got a '
            f'{type(model).__name__} with {found}')
    return backbone


class ResTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Learning rates that decay from the head to the stem of a ResT / ResT
    v2 backbone, stage by stage or block by block (see the module
    docstring for the exact rule), and no weight decay on norms and biases.

    Args:
        optim_wrapper_cfg (dict): The optimizer wrapper's config, with the
            ``optimizer`` (its ``lr`` and ``weight_decay`` are the head's).
        paramwise_cfg (dict): ``decay_rate`` (float in (0, 1], required),
            ``decay_type`` (``'stage_wise'``, the default, or
            ``'layer_wise'``) and optionally ``num_layers`` (checked against
            the backbone: see the module docstring). No other key.
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(
                f'ResTLayerDecayOptimizerConstructor: unknown paramwise_cfg '
                f'keys {unknown}; it takes {list(PARAMWISE_KEYS)} (norms and '
                'biases never get weight decay)')
        rate = paramwise_cfg.get('decay_rate')
        if (not isinstance(rate, numbers.Real) or isinstance(rate, bool)
                or not 0 < rate <= 1):
            raise ValueError(
                'ResTLayerDecayOptimizerConstructor: paramwise_cfg.decay_rate '
                f'must be a number in (0, 1], got {rate!r}')
        decay_type = paramwise_cfg.setdefault('decay_type', 'stage_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(
                'ResTLayerDecayOptimizerConstructor: paramwise_cfg.decay_type '
                f'must be one of {DECAY_TYPES}, got {decay_type!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.decay_rate = float(rate)
        self.decay_type = decay_type
        self.num_layers = paramwise_cfg.get('num_layers')

    # ----------------------------------------------------------- the rule
    def _check_num_layers(self, depths: Sequence[int]) -> None:
        given = self.num_layers
        if given is None:
            return
        expected = len(depths) if self.decay_type == 'stage_wise' else sum(
            depths)
        if isinstance(given, Sequence) and not isinstance(given, str):
            ok = [int(d) for d in given] == list(depths)
        else:
            ok = isinstance(given, int) and given == expected
        if not ok:
            raise ValueError(
                f'ResTLayerDecayOptimizerConstructor: paramwise_cfg.'
                f'num_layers={given!r} does not match the backbone (depths '
                f'{list(depths)}): for {self.decay_type!r} give {expected} or '
                f'the depths {tuple(depths)}, or leave it out')

    def layer_ids(self, model: nn.Module) -> Tuple[Dict[str, int], int]:
        """The layer id of each parameter name of ``model``, and ``max_id``.
        """
        backbone = _rest_backbone(model)
        depths = list(backbone.arch_settings['depths'])
        self._check_num_layers(depths)
        stage_wise = self.decay_type == 'stage_wise'
        max_id = (len(depths) if stage_wise else sum(depths)) + 1
        # The prefix of each module that decays: stem, patch embeddings and
        # the blocks of each stage.
        embed = 'patch_embed_' if hasattr(backbone,
                                          'patch_embed_2') else 'patch_'
        prefixes: List[Tuple[str, Optional[int]]] = [('stem.', None)]
        first_block = 1
        for s, depth in enumerate(depths, start=1):
            stage_id = s if stage_wise else first_block
            if s > 1:
                prefixes.append((f'{embed}{s}.', stage_id))
            for j in range(depth):
                prefixes.append((f'stage{s}.{j}.',
                                 s if stage_wise else first_block + j))
            first_block += depth

        ids = OrderedDict()
        for name, _ in model.named_parameters():
            layer_id = max_id
            if name.startswith('backbone.'):
                sub = name[len('backbone.'):]
                for prefix, pid in prefixes:
                    if sub.startswith(prefix):
                        layer_id = 0 if pid is None else pid
                        break
            ids[name] = layer_id
        return ids, max_id

    @staticmethod
    def no_weight_decay(name: str, param: nn.Parameter) -> bool:
        """Norms (1-D) and biases get no weight decay."""
        return param.ndim <= 1 or name.endswith('.bias')

    # --------------------------------------------------------- the groups
    def add_params(self, params: List[dict], module: nn.Module,
                   **kwargs) -> None:
        """Append one parameter group per (layer id, decay or not) to
        ``params``, with its learning rate and weight decay.

        Args:
            params (list[dict]): The parameter groups, extended in place.
            module (nn.Module): The model (a segmentor or detector whose
                ``backbone`` is a ResT or ResT v2).
        """
        ids, max_id = self.layer_ids(module)
        groups: Dict[str, dict] = OrderedDict()
        for name, param in module.named_parameters():
            layer_id = ids[name]
            no_decay = self.no_weight_decay(name, param)
            key = f'layer_{layer_id}_{"no_decay" if no_decay else "decay"}'
            if key not in groups:
                scale = self.decay_rate**(max_id - layer_id)
                group = dict(params=[], lr=self.base_lr * scale,
                             lr_scale=scale, group_name=key)
                if no_decay:
                    group['weight_decay'] = 0.
                elif self.base_wd is not None:
                    group['weight_decay'] = self.base_wd
                groups[key] = group
            groups[key]['params'].append(param)
        params.extend(groups.values())
        rank, _ = get_dist_info()
        if rank == 0:
            lines = [
                f'  {k}: {len(g["params"])} tensors, lr {g["lr"]:.4g} '
                f'(x{g["lr_scale"]:.4g}), weight decay '
                f'{g.get("weight_decay", "optimizer default")}'
                for k, g in groups.items()
            ]
            print_log(
                f'ResTLayerDecayOptimizerConstructor ({self.decay_type}, '
                f'decay_rate {self.decay_rate}, layer ids 0-{max_id}):\n' +
                '\n'.join(lines),
                logger='current')
