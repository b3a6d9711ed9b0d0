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

**mmengine's paramwise options.** ``paramwise_cfg`` also takes the options
of mmengine's ``DefaultOptimWrapperConstructor``, applied on top of the
layer-wise decay. With ``lr_d = lr * decay_rate ** (max_id - i)``, the
layer-decayed learning rate of the parameter, and ``wd`` the optimizer's
``weight_decay``:

- ``custom_keys`` (dict): as in mmengine, the longest key that is a
  substring of the parameter's name (``'<module name>.<parameter>'``; ties
  go to the alphabetically first key) decides, and the other options below
  are ignored for that parameter. Its ``lr_mult`` multiplies ``lr_d``
  (default 1); its ``decay_mult``, when given, sets the weight decay to
  ``wd * decay_mult``. Unlike mmengine, a key without ``decay_mult`` keeps
  the weight decay of the rule above (a head's norms and biases stay at 0
  with ``custom_keys={'decode_head': dict(lr_mult=10.)}``); give
  ``decay_mult=1.`` to decay them. Other entries of the key (``momentum``,
  ``betas``, ...) go into the parameter's group, as mmengine does.
- ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``: the
  weight decay of the parameters of norm layers (BatchNorm, InstanceNorm,
  GroupNorm, LayerNorm), of the other biases and of the other 1-D
  parameters is ``wd`` times these; they default to 0 (the rule above), so
  ``norm_decay_mult=1.`` decays the norms.
- ``dwconv_decay_mult``: the weight decay of depth-wise convolutions
  (``groups == in_channels``; their biases follow ``bias_decay_mult``) is
  ``wd`` times it; by default their weights get ``wd``.
- ``bias_lr_mult``: multiplies ``lr_d`` for the biases of modules that are
  not norm layers.
- ``bypass_duplicate``: accepted; a parameter shared by several modules is
  always put in one group (under its first name), whatever its value.

The checks are in mmengine's order: a custom key, then norm, bias,
depth-wise convolution, 1-D. ``dcn_offset_lr_mult`` is not supported.
Example (the head at 10x, no weight decay on the positional encodings)::

    paramwise_cfg=dict(
        decay_rate=0.9, decay_type='stage_wise',
        custom_keys={'decode_head': dict(lr_mult=10.),
                     'pos.pa_conv': dict(decay_mult=0.)})
"""
import numbers
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

DECAY_TYPES = ('stage_wise', 'layer_wise')
PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers')
#: mmengine's ``DefaultOptimWrapperConstructor`` options that it also takes
#: (see the module docstring for how they combine with the decay).
MMENGINE_KEYS = ('custom_keys', 'bias_lr_mult', 'bias_decay_mult',
                 'norm_decay_mult', 'dwconv_decay_mult', 'flat_decay_mult',
                 'bypass_duplicate')
#: The default weight-decay multipliers: the rule (no decay for norms,
#: biases and other 1-D parameters).
DEFAULT_DECAY_MULTS = dict(
    norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.)
#: Norm layers, as mmengine's constructor tells them.
NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


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
    docstring for the exact rule), and no weight decay on norms and biases;
    mmengine's ``custom_keys`` and decay multipliers on top.

    Args:
        optim_wrapper_cfg (dict): The optimizer wrapper's config, with the
            ``optimizer`` (its ``lr`` and ``weight_decay`` are the head's).
        paramwise_cfg (dict): ``decay_rate`` (float in (0, 1], required),
            ``decay_type`` (``'stage_wise'``, the default, or
            ``'layer_wise'``) and optionally ``num_layers`` (checked against
            the backbone: see the module docstring), and mmengine's
            ``custom_keys``, ``bias_lr_mult``, ``bias_decay_mult``,
            ``norm_decay_mult``, ``dwconv_decay_mult``, ``flat_decay_mult``
            and ``bypass_duplicate`` (how they combine with the decay: see
            the module docstring). No other key.
    """

    def __init__(self,
                 optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None):
        name = 'ResTLayerDecayOptimizerConstructor'
        paramwise_cfg = dict(paramwise_cfg or {})
        if 'dcn_offset_lr_mult' in paramwise_cfg:
            raise ValueError(
                f'{name}: paramwise_cfg.dcn_offset_lr_mult is not supported '
                '(use custom_keys with the offset layers\' names instead)')
        unknown = sorted(
            set(paramwise_cfg) - set(PARAMWISE_KEYS) - set(MMENGINE_KEYS))
        if unknown:
            raise ValueError(
                f'{name}: unknown paramwise_cfg keys {unknown}; it takes '
                f'{list(PARAMWISE_KEYS)} and mmengine\'s '
                f'{list(MMENGINE_KEYS)}')
        rate = paramwise_cfg.get('decay_rate')
        if (not isinstance(rate, numbers.Real) or isinstance(rate, bool)
                or not 0 < rate <= 1):
            raise ValueError(
                f'{name}: paramwise_cfg.decay_rate must be a number in '
                f'(0, 1], got {rate!r}')
        decay_type = paramwise_cfg.setdefault('decay_type', 'stage_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(
                f'{name}: paramwise_cfg.decay_type must be one of '
                f'{DECAY_TYPES}, got {decay_type!r}')
        for key in ('bias_lr_mult', ) + tuple(
                k for k in MMENGINE_KEYS if k.endswith('_decay_mult')):
            if key in paramwise_cfg:
                _check_mult(f'paramwise_cfg.{key}', paramwise_cfg[key])
        custom_keys = paramwise_cfg.get('custom_keys', {})
        if not isinstance(custom_keys, dict):
            raise TypeError(f'{name}: paramwise_cfg.custom_keys must be a '
                            f'dict, got {type(custom_keys).__name__}')
        for key, value in custom_keys.items():
            if not isinstance(value, dict):
                raise TypeError(
                    f'{name}: paramwise_cfg.custom_keys[{key!r}] must be a '
                    f'dict (lr_mult, decay_mult, ...), got {value!r}')
            for mult in ('lr_mult', 'decay_mult'):
                if mult in value:
                    _check_mult(f'paramwise_cfg.custom_keys[{key!r}].{mult}',
                                value[mult])
        # mmengine's checks (e.g. a decay multiplier without weight_decay).
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.decay_rate = float(rate)
        self.decay_type = decay_type
        self.num_layers = paramwise_cfg.get('num_layers')
        self.custom_keys = custom_keys
        # mmengine's order: the longest key first, ties alphabetically.
        self.sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        self.decay_mults = {
            k: paramwise_cfg.get(k, DEFAULT_DECAY_MULTS.get(k))
            for k in ('norm_decay_mult', 'bias_decay_mult',
                      'dwconv_decay_mult', 'flat_decay_mult')
        }
        self.bias_lr_mult = paramwise_cfg.get('bias_lr_mult')

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
                prefixes.append(
                    (f'stage{s}.{j}.', s if stage_wise else first_block + j))
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

    def custom_key(self, name: str) -> Optional[str]:
        """The ``custom_keys`` entry that decides for the parameter
        ``name`` (mmengine's match: the longest key that is a substring,
        ties to the alphabetically first), or None."""
        for key in self.sorted_keys:
            if key in name:
                return key
        return None

    def param_settings(self, module_name: str, module: nn.Module,
                       param_name: str, param: nn.Parameter,
                       layer_scale: float) -> dict:
        """The group options of one parameter: ``lr``, ``weight_decay``
        (absent where the optimizer's default applies) and a custom key's
        other entries.

        Args:
            module_name (str): The name of the module that holds it.
            module (nn.Module): That module.
            param_name (str): Its name in the module (``weight``, ...).
            param (nn.Parameter): The parameter.
            layer_scale (float): Its layer's ``decay_rate ** (max_id - i)``.
        """
        # mmengine matches custom keys against '<module>.<param>' (a
        # parameter of the model itself: '.<param>').
        name = f'{module_name}.{param_name}'
        lr = self.base_lr * layer_scale
        settings = {}
        key = self.custom_key(name)
        is_norm = isinstance(module, NORM_TYPES)
        if key is not None:
            custom = self.custom_keys[key]
            settings.update(custom)  # other entries go into the group
            lr *= custom.get('lr_mult', 1.)
            # the weight decay's multiplier
            if 'decay_mult' in custom:
                mult = custom['decay_mult']
            else:
                mult = self._rule_decay_mult(module, param_name, param,
                                             is_norm)
        else:
            if param_name == 'bias' and not is_norm and \
                    self.bias_lr_mult is not None:
                lr *= self.bias_lr_mult
            mult = self._rule_decay_mult(module, param_name, param, is_norm)
        settings['lr'] = lr
        settings.pop('weight_decay', None)
        if self.base_wd is not None:
            settings['weight_decay'] = self.base_wd * mult
        elif mult == 0:
            settings['weight_decay'] = 0.
        return settings

    def _rule_decay_mult(self, module: nn.Module, param_name: str,
                         param: nn.Parameter, is_norm: bool) -> float:
        """The weight-decay multiplier of the options other than custom
        keys, in mmengine's order: norm, bias, depth-wise conv, 1-D."""
        mults = self.decay_mults
        is_dwconv = isinstance(module, nn.Conv2d) and \
            module.in_channels == module.groups
        if is_norm:
            return mults['norm_decay_mult']
        if param_name == 'bias':
            return mults['bias_decay_mult']
        if is_dwconv and mults['dwconv_decay_mult'] is not None:
            return mults['dwconv_decay_mult']
        if param.ndim <= 1:
            return mults['flat_decay_mult']
        return 1.

    # --------------------------------------------------------- the groups
    def add_params(self, params: List[dict], module: nn.Module,
                   **kwargs) -> None:
        """Append one parameter group per distinct setting (layer id,
        weight decay, custom key, bias lr) to ``params``, with its learning
        rate and weight decay.

        Args:
            params (list[dict]): The parameter groups, extended in place.
            module (nn.Module): The model (a segmentor or detector whose
                ``backbone`` is a ResT or ResT v2).
        """
        ids, max_id = self.layer_ids(module)
        # Each parameter once, under its first name (named_parameters'
        # order), with the module that holds it.
        owners = {}
        for mod_name, mod in module.named_modules():
            for p_name, _ in mod.named_parameters(recurse=False):
                full = f'{mod_name}.{p_name}' if mod_name else p_name
                owners[full] = (mod_name, mod, p_name)
        groups: Dict[str, dict] = OrderedDict()
        for name, param in module.named_parameters():
            layer_id = ids[name]
            scale = self.decay_rate**(max_id - layer_id)
            mod_name, mod, p_name = owners[name]
            settings = self.param_settings(mod_name, mod, p_name, param, scale)
            wd = settings.get('weight_decay')
            key = f'layer_{layer_id}_' + ('no_decay' if wd == 0 else 'decay')
            if wd not in (0, None, self.base_wd):
                key += f'_wd{wd:g}'
            custom = self.custom_key(f'{mod_name}.{p_name}')
            if custom is not None:
                key += f'_custom[{custom}]'
            elif settings['lr'] != self.base_lr * scale:
                key += '_bias_lr'
            if key not in groups:
                groups[key] = dict(
                    params=[], lr_scale=scale, group_name=key, **settings)
            groups[key]['params'].append(param)
        params.extend(groups.values())
        rank, _ = get_dist_info()
        if rank == 0:
            lines = [
                f'  {k}: {len(g["params"])} tensors, lr {g["lr"]:.4g} '
                f'(x{g["lr"] / self.base_lr:.4g}), weight decay '
                f'{g.get("weight_decay", "optimizer default")}'
                for k, g in groups.items()
            ]
            print_log(
                f'ResTLayerDecayOptimizerConstructor ({self.decay_type}, '
                f'decay_rate {self.decay_rate}, layer ids 0-{max_id}):\n' +
                '\n'.join(lines),
                logger='current')


def _check_mult(name: str, value) -> None:
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or value < 0):
        raise ValueError(f'ResTLayerDecayOptimizerConstructor: {name} must '
                         f'be a number >= 0, got {value!r}')
