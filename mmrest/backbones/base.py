# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""What ResT (``rest.py``) and ResT v2 (``rest_v2.py``) share.

* :class:`TokenMapsMixin`: the backbone around the stages: arch parsing,
  initialisation, frozen stages, argument and input checks, the layout of
  the maps between the stages, ``train`` with ``norm_eval``;
* :class:`PreNormBlock`: the block's residual sums and the one dispatch
  between its inference path, gradient checkpointing and the plain
  computation (the rule: :mod:`mmrest.backbones.kernels`);
* :class:`Mlp`, :class:`PixelAttention`, :func:`build_token_norm`,
  :func:`reduction_conv`: modules and builders of both generations.

The model files hold only their own modules.
"""
import copy
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import load_pretrained_init_cfg
from . import kernels


def build_token_norm(cfg: dict, num_features: int) -> nn.Module:
    """A norm of tokens (B, N, C) over their C channels, from ``cfg``
    (mmcv's ``build_norm_layer``): a LayerNorm, or a subclass of it."""
    norm = build_norm_layer(cfg, num_features)[1]
    if not isinstance(norm, nn.LayerNorm):
        raise TypeError(
            f'token_norm_cfg must build a LayerNorm (each token normalised '
            f'over its channels), got {type(norm).__name__} from {cfg!r}')
    return norm


def reduction_conv(embed_dims: int, sr_ratio: int) -> nn.Conv2d:
    """The depth-wise convolution that reduces the keys' and values'
    tokens by ``sr_ratio`` in each direction (network.md:
    kernel s + 1, stride s, padding s // 2), in EMSA and in ResT v2's
    attention alike."""
    return nn.Conv2d(
        embed_dims,
        embed_dims,
        kernel_size=sr_ratio + 1,
        stride=sr_ratio,
        padding=sr_ratio // 2,
        groups=embed_dims)


def check_attention_args(embed_dims: int, num_heads: int,
                         sr_ratio: int) -> None:
    """Refuse heads that do not divide the channels and a spatial reduction
    that is not a positive integer (EMSA and ResT v2's attention alike)."""
    if embed_dims % num_heads:
        raise ValueError(f'embed_dims {embed_dims} is not divisible by '
                         f'num_heads {num_heads}')
    if not isinstance(sr_ratio, int) or sr_ratio < 1:
        raise ValueError(
            f'sr_ratio must be a positive integer, got {sr_ratio!r}')


def _check_index(name: str, value: int, low: int, high: int = 3):
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f'{name} must be an integer from {low} to {high}, '
                         f'got {value!r}')


class PixelAttention(nn.Module):
    """Positional encoding as pixel attention: ``x * sigmoid(dwconv(x))``.

    On the inference path (:func:`~mmrest.backbones.kernels.is_inference`)
    the gate is computed and applied in place; otherwise out of place.

    Args:
        channels (int): Number of channels.
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    def __init__(self, channels: int):
        super().__init__()
        self.pa_conv = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.is_inference(self, x):  # the same arithmetic, in place
            return torch.sigmoid_(self.pa_conv(x)).mul_(x)
        return x * torch.sigmoid(self.pa_conv(x))


class Mlp(nn.Module):
    """Linear, activation (GELU, exact, erf, by default), Linear, with
    optional dropout after each Linear (ResT; ResT v2 has none).

    The authors' names ``fc1``, ``act``, ``fc2``; the inference path runs
    it over chunks of tokens
    (:func:`~mmrest.backbones.kernels.add_residual_mlp_`).

    Args:
        in_features (int): Input and output channels.
        hidden_features (int): Hidden channels.
        drop (float): Dropout after each Linear. Defaults to 0.
        act_cfg (dict): Config of the activation. Defaults to
            ``dict(type='GELU')``.
    """

    def __init__(self,
                 in_features: int,
                 hidden_features: int,
                 drop: float = 0.,
                 act_cfg: dict = dict(type='GELU')):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PreNormBlock(nn.Module):
    """A pre-norm Transformer block over tokens (B, N, C)::

        x = x + drop_path(attn(norm1(x), hw_shape))
        x = x + drop_path(mlp(norm2(x)))

    Subclasses build ``norm1``, ``attn``, ``norm2``, ``mlp``, ``drop_path``
    and ``with_cp``, and give the inference path
    (:meth:`_forward_inference`). :meth:`forward` chooses, by the rules of
    :mod:`mmrest.backbones.kernels`: the inference path where
    :func:`~mmrest.backbones.kernels.is_inference`; gradient checkpointing
    with ``with_cp`` wherever autograd records (:func:`torch.is_grad_enabled`,
    in either mode, whatever needs a gradient); the plain computation
    otherwise (the literal one included).
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    with_cp = False

    def _forward(self, x: torch.Tensor,
                 hw_shape: Sequence[int]) -> torch.Tensor:
        x = self._add(x, self.attn(self.norm1(x), hw_shape))
        return self._add(x, self.mlp(self.norm2(x)))

    def _add(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``x + drop_path(branch)``: literally, or with stochastic depth as
        one operator (:func:`~mmrest.backbones.kernels.add_drop_path`, the
        same draws)."""
        if kernels.use_literal(self):
            return x + self.drop_path(branch)
        return kernels.add_drop_path(x, branch, self.drop_path)

    def _forward_inference(self, x: torch.Tensor,
                           hw_shape: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor,
                hw_shape: Sequence[int]) -> torch.Tensor:
        if kernels.is_inference(self, x):
            return self._forward_inference(x, hw_shape)
        if self.with_cp and torch.is_grad_enabled():
            return kernels.checkpoint(self._forward, x, hw_shape)
        return self._forward(x, hw_shape)


def _check_stage_args(out_indices, frozen_stages: int,
                      in_channels: int) -> List[int]:
    """Validate the arguments both backbones share; returns the sorted
    stage indices."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    if not isinstance(out_indices, Sequence) or not out_indices:
        raise TypeError('out_indices must be a non-empty sequence of '
                        f'stage indices, got {out_indices!r}')
    out_indices = sorted(set(out_indices))
    for index in out_indices:
        _check_index('Each of out_indices', index, 0)
    _check_index('frozen_stages', frozen_stages, -1)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(
            f'in_channels must be a positive integer, got {in_channels!r}')
    return out_indices


class TokenMapsMixin:
    """What ResT and ResT v2 share beyond their modules: arch parsing,
    initialisation from scratch and from a checkpoint, frozen stages, input
    and argument checks, the layout of the maps between the stages and
    ``train`` with ``norm_eval``.

    Channels-last maps share the tokens' memory layout (B, H, W, C): maps
    -> tokens -> maps is a view, not a copy. The literal computation
    (:func:`~mmrest.backbones.kernels.literal`) keeps the authors'
    contiguous NCHW maps, flattened to tokens and transposed back as their
    code does.

    A subclass sets the class attributes below and ``_stage_modules``.
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    #: The backbone's name in error messages.
    display_name = 'ResT'
    #: Named variants (aliases as mmpretrain's: 't', 's', 'b', 'l').
    arch_zoo: Dict[str, dict] = {}
    #: Keys an arch dict must have, one value per stage.
    essential_keys: Tuple[str, ...] = ()
    #: Keys an arch dict may have, with their defaults (lists: one value
    #: per stage).
    optional_keys: Dict[str, object] = {}
    #: Per-stage integer keys and their smallest allowed value.
    integer_keys = {
        'embed_dims': 1,
        'depths': 0,
        'num_heads': 1,
        'sr_ratios': 1
    }
    num_stages = 4
    # What init_weights does with type='Pretrained': the checkpoint family,
    # the checkpoint's keys that are not the backbone's, and whether to
    # initialise first what no checkpoint of the family holds.
    checkpoint_family = 'v1'
    checkpoint_ignore: Sequence[str] = ('head.', )
    init_before_loading = False

    # ------------------------------------------------------ map layout
    def _input_layout(self, x: torch.Tensor) -> torch.Tensor:
        """The input image in the layout of the maps."""
        if kernels.use_literal(self):
            return x
        return x.contiguous(memory_format=torch.channels_last)

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) map -> (B, H * W, C) tokens."""
        if kernels.use_literal(self):
            return x.flatten(2).transpose(1, 2)
        B, C, H, W = x.shape
        return x.permute(0, 2, 3, 1).reshape(B, H * W, C)

    def _to_map(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """(B, H * W, C) tokens -> the (B, C, H, W) map of ``shape``."""
        if kernels.use_literal(self):
            return x.transpose(1, 2).reshape(shape)
        return kernels.token_map(x, shape[2:])

    # ------------------------------------------------------ arguments
    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        """The settings of ``arch``: a zoo name or alias, or a dict, with
        the optional keys' defaults filled in and every value checked."""
        if isinstance(arch, str):
            settings = cls._zoo_settings(arch)
        elif isinstance(arch, dict):
            settings = cls._dict_settings(arch)
        else:
            raise TypeError(
                f'arch must be a str or a dict, got {type(arch).__name__}')
        for key, default in cls.optional_keys.items():
            settings.setdefault(key, copy.deepcopy(default))
        for key, value in settings.items():
            if key in cls.essential_keys or \
                    isinstance(cls.optional_keys[key], list):
                settings[key] = cls._check_per_stage(key, value)
        return settings

    @classmethod
    def _zoo_settings(cls, arch: str) -> dict:
        key = arch.lower()
        if key not in cls.arch_zoo:
            raise KeyError(f'Unknown {cls.display_name} arch {arch!r}; '
                           f'choose one of {sorted(set(cls.arch_zoo))} or '
                           f'pass a dict with the keys '
                           f'{list(cls.essential_keys)}')
        return copy.deepcopy(cls.arch_zoo[key])

    @classmethod
    def _dict_settings(cls, arch: dict) -> dict:
        name = cls.display_name
        missing = [k for k in cls.essential_keys if k not in arch]
        if missing:
            raise KeyError(f'The {name} arch dict lacks the keys {missing}; '
                           f'it needs {list(cls.essential_keys)}')
        unknown = set(arch) - set(cls.essential_keys) - set(cls.optional_keys)
        if unknown:
            raise KeyError(f'Unknown keys in the {name} arch dict: '
                           f'{sorted(unknown)}; allowed: '
                           f'{list(cls.essential_keys)} and '
                           f'{list(cls.optional_keys)}')
        return copy.deepcopy(dict(arch))

    @classmethod
    def _check_per_stage(cls, key: str, value) -> list:
        if not isinstance(value, Sequence) or len(value) != cls.num_stages:
            raise ValueError(f'arch[{key!r}] must list one value per stage '
                             f'({cls.num_stages}), got {value!r}')
        value = list(value)
        low = cls.integer_keys.get(key)
        if low is not None and any(not isinstance(v, int) or v < low
                                   for v in value):
            raise ValueError(
                f'arch[{key!r}] must hold integers >= {low}, got {value!r}')
        return value

    def _setup(self, arch: Union[str, dict], in_channels: int,
               out_indices: Sequence[int], frozen_stages: int, norm_eval: bool,
               drop_path_rate: float) -> List[float]:
        """Parse and check the arguments both families share and keep them;
        return each block's stochastic depth rate, rising linearly from 0 to
        ``drop_path_rate``."""
        self.arch_settings = self._parse_arch(arch)
        out_indices = _check_stage_args(out_indices, frozen_stages,
                                        in_channels)
        if not 0 <= drop_path_rate < 1:
            raise ValueError(
                f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
        self.in_channels = in_channels
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.embed_dims = list(self.arch_settings['embed_dims'])
        depths = self.arch_settings['depths']
        # on the CPU whatever the default device (a model built on 'meta')
        return torch.linspace(
            0, drop_path_rate, sum(depths), device='cpu').tolist()

    def _check_input(self, x: torch.Tensor):
        name = self.display_name
        if x.dim() != 4:
            raise ValueError(f'{name} expects an image batch of shape '
                             f'(B, C, H, W), got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'{name} was built for {self.in_channels} input channels, '
                f'got a batch with {x.shape[1]} (shape {tuple(x.shape)})')
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f'Empty input of shape {tuple(x.shape)}')

    # ------------------------------------------------------ weights
    def init_weights(self):
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            if self.init_before_loading:
                self._init_from_scratch()
            load_pretrained_init_cfg(
                self,
                self.init_cfg,
                family=self.checkpoint_family,
                ignore=self.checkpoint_ignore)
            self._is_init = True
            return
        if self.init_cfg is not None:
            super().init_weights()
            return
        self._init_from_scratch()

    def _init_from_scratch(self):
        """Truncated normal (std 0.02) conv and linear weights, zero biases,
        norms 1 and 0 (docs/network.md, both generations)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, _BatchNorm, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------ modes
    def _freeze_stages(self):
        frozen = [self.stem] if self.frozen_stages >= 0 else []
        for i in range(self.frozen_stages):
            frozen += self._stage_modules(i)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
