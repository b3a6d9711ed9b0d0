# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""ResT V2: Simpler, Faster and Stronger (NeurIPS 2022).

The network follows the "ResT v2" part of ``docs/network.md`` and keeps the
authors' state-dict names (``stem.proj.*``, ``patch_{2,3,4}``,
``stage{1..4}``, ``attn.up.0``, ``attn.up_norm``, dense output norms
``norm_1..norm_4``), so their ImageNet and dense checkpoints load with a
plain ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

What differs from the authors' code, none of it changing an output beyond
float32 rounding:

* spatial sizes come from the convolution outputs, so any input size works;
  the upsampled value branch has ``ceil(H / s) * s >= H`` rows and columns
  and is cropped to the token grid (the authors' ``H // s`` reshape needs
  multiples of 32; wherever it runs, the crop removes nothing);
* the attention is one fused ``F.scaled_dot_product_attention`` call (no
  N x M matrix is kept for the backward pass);
* feature maps are channels-last between the stages, the memory layout of
  the tokens, so maps -> tokens -> maps copies nothing; the returned maps
  are ordinary contiguous NCHW tensors;
* the channels-first output LayerNorms are computed on the tokens (the
  same normalisation over the channels of each position).

None of these needs a branch for tracing or ONNX export: the forward pass
is the same sequence of operators for every input size (under
``torch.compile`` the maps read from the tokens are copies, not views; see
:func:`~mmrest.backbones.kernels.token_map`).
Only in plain eager inference (eval mode, no autograd, no autocast, not
tracing, compiling or exporting) do the blocks take a leaner route: oneDNN
linears with the bias and GELU applied as the output is written, the
output projection and the MLP accumulated into the tokens in place, and
the MLP run over chunks of tokens (see :meth:`BlockV2._forward_inference`).

Each module also holds the literal computation (the authors' explicit
``softmax(q k^T) @ v``, NCHW maps, explicit reshapes, the channels-first
output LayerNorm), which :func:`kernels.literal()
<mmrest.backbones.kernels.literal>` selects and the tests compare against.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401 (tools patch rest_v2.F)
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from . import kernels
from .base import (Mlp, PixelAttention, PreNormBlock, TokenMapsMixin,
                   build_token_norm, check_attention_args, reduction_conv)

#: LayerNorm epsilon of every norm in ResT v2 (docs/network.md).
LN_EPS = 1e-6
#: The default config of the token norms.
TOKEN_NORM_CFG = dict(type='LN', eps=LN_EPS)


class ConvStemV2(nn.Module):
    """The stride-4 stem: two 3x3 stride-2 convs with BatchNorm and ReLU, a
    1x1 conv, pixel attention, then a LayerNorm on the tokens.

    Keys ``proj.{0,1,3,4,6}``, ``pos.pa_conv`` and ``norm``, as the authors'.

    Args:
        in_channels (int): Input image channels.
        out_channels (int): Output channels (``embed_dims[0]``).
        norm_cfg (dict): Config of the two BatchNorms.
        token_norm_cfg (dict): Config of the token LayerNorm.
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 norm_cfg: dict,
                 token_norm_cfg: dict = TOKEN_NORM_CFG):
        super().__init__()
        mid = out_channels // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, 2, 1, bias=False),
            build_norm_layer(norm_cfg, mid)[1],
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, 2, 1, bias=False),
            build_norm_layer(norm_cfg, out_channels)[1],
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )
        self.pos = PixelAttention(out_channels)
        self.norm = build_token_norm(token_norm_cfg, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map (B, C0, H/4, W/4), before the token norm."""
        if kernels.use_literal(self):
            return self.pos(self.proj(x))
        for layer in self.proj:  # dense convs as kernels.run_conv runs them
            x = kernels.run_conv(layer, x) if isinstance(layer, nn.Conv2d) \
                else layer(x)
        return self.pos(x)


class PatchEmbedV2(nn.Module):
    """Stride-2 patch embedding: conv 3x3 (bias), pixel attention, then a
    LayerNorm on the tokens (keys ``proj``, ``pos.pa_conv``, ``norm``).

    Args:
        in_channels (int): Channels of the previous stage.
        out_channels (int): Channels of this stage.
        token_norm_cfg (dict): Config of the token LayerNorm.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 token_norm_cfg: dict = TOKEN_NORM_CFG):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.pos = PixelAttention(out_channels)
        self.norm = build_token_norm(token_norm_cfg, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map, before the token norm."""
        return self.pos(kernels.run_conv(self.proj, x))


class AttentionV2(nn.Module):
    """ResT v2's attention: plain softmax attention over spatially reduced
    keys and values, plus an upsampled value branch.

    ``proj(softmax(q k^T * scale) v + up_norm(PixelShuffle(dwconv(v))))``,
    with ``v`` seen as a (B, C, ceil(H/s), ceil(W/s)) map whose channels are
    ordered head-major, the upsampled branch cropped to the (H, W) grid.

    :meth:`_literal_attend` computes this as the authors do; the fast
    computation is one fused ``F.scaled_dot_product_attention`` call.

    Args:
        embed_dims (int): Token channels C.
        num_heads (int): Number of heads h (C must be divisible by h).
        sr_ratio (int): Spatial reduction s of keys and values, a positive
            integer. Defaults to 1.
        token_norm_cfg (dict): Config of the LayerNorms of the reduced
            tokens and of the value branch. Defaults to ``TOKEN_NORM_CFG``
            (``dict(type='LN', eps=1e-6)``).
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 sr_ratio: int = 1,
                 token_norm_cfg: dict = TOKEN_NORM_CFG):
        super().__init__()
        check_attention_args(embed_dims, num_heads, sr_ratio)
        self.num_heads = num_heads
        self.scale = (embed_dims // num_heads)**-0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(embed_dims, embed_dims)
        self.kv = nn.Linear(embed_dims, embed_dims * 2)
        if sr_ratio > 1:
            self.sr = reduction_conv(embed_dims, sr_ratio)
            self.sr_norm = build_token_norm(token_norm_cfg, embed_dims)
        self.up = nn.Sequential(
            nn.Conv2d(
                embed_dims,
                sr_ratio * sr_ratio * embed_dims,
                kernel_size=3,
                padding=1,
                groups=embed_dims), nn.PixelShuffle(sr_ratio))
        self.up_norm = build_token_norm(token_norm_cfg, embed_dims)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def _literal_attend(self, x: torch.Tensor,
                        hw_shape: Sequence[int]) -> torch.Tensor:
        """:meth:`attend` as the authors compute it: the N x M matrix
        ``softmax(q k^T * scale)`` built explicitly and multiplied by ``v``,
        the value branch reshaped from ``v`` (cropped, network.md)."""
        B, N, C = x.shape
        H, W = hw_shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
            x_ = self.sr(x_)
            Hs, Ws = x_.shape[2:]
            x_ = x_.reshape(B, C, -1).permute(0, 2, 1)
            x_ = self.sr_norm(x_)
        else:
            x_, Hs, Ws = x, H, W
        kv = self.kv(x_).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)

        identity = v.transpose(-1, -2).reshape(B, C, Hs, Ws)
        identity = self.up(identity)[:, :, :H, :W]
        identity = identity.flatten(2).transpose(1, 2)
        return out + self.up_norm(identity)

    def attend(self, x: torch.Tensor, hw_shape: Sequence[int]) -> torch.Tensor:
        """Everything before the output projection: the attention output
        plus the normalised value branch, (B, N, C)."""
        if kernels.use_literal(self):
            return self._literal_attend(x, hw_shape)
        B, N, C = x.shape
        H, W = hw_shape
        h = self.num_heads
        q = kernels.linear(x, self.q.weight, self.q.bias)
        q = q.view(B, N, h, C // h).transpose(1, 2)
        if self.sr_ratio > 1:
            # Tokens read as a (channels-last) map without a copy.
            kv_map = self.sr(kernels.token_map(x, (H, W)))
            Hs, Ws = kv_map.shape[2:]
            x = self.sr_norm(kv_map.permute(0, 2, 3, 1).reshape(B, -1, C))
        else:
            Hs, Ws = H, W
        kv = kernels.linear(x, self.kv.weight, self.kv.bias).view(B, -1, 2, C)
        # views, as reshape (not unflatten: ONNX has it from opset 13 only,
        # and mmdeploy's ONNX Runtime configs export at opset 11)
        k = kv[:, :, 0].view(B, -1, h, C // h).transpose(1, 2)
        v_tokens = kv[:, :, 1]  # (B, M, C)
        v = v_tokens.view(B, -1, h, C // h).transpose(1, 2)
        out = kernels.sdpa(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, N, C)

        # The value branch: v as a map (channel = head * d + j), depth-wise
        # 3x3 to s*s*C channels, PixelShuffle(s), cropped to (H, W).
        up = self.up(kernels.token_map(v_tokens, (Hs, Ws)))
        branch = self.up_norm(kernels.crop_to_tokens(up, (H, W)))
        if kernels.is_inference(self, out):  # the same sum, in place
            return branch.add_(out)
        return out + branch

    def forward(self, x: torch.Tensor,
                hw_shape: Sequence[int]) -> torch.Tensor:
        return self.proj(self.attend(x, hw_shape))


class BlockV2(PreNormBlock):
    """A pre-norm Transformer block with :class:`AttentionV2`.

    Args:
        embed_dims (int): Token channels.
        num_heads (int): Attention heads.
        mlp_ratio (float): Hidden channels of the MLP over ``embed_dims``.
            Defaults to 4.
        sr_ratio (int): Spatial reduction of keys and values. Defaults to
            1.
        drop_path (float): Stochastic depth rate of this block. Defaults
            to 0.
        with_cp (bool): Gradient checkpointing of the whole block.
            Defaults to False.
        token_norm_cfg (dict): Config of the LayerNorms. Defaults to
            ``TOKEN_NORM_CFG``.
        act_cfg (dict): Config of the MLP's activation. Defaults to
            ``dict(type='GELU')``.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 sr_ratio: int = 1,
                 drop_path: float = 0.,
                 with_cp: bool = False,
                 token_norm_cfg: dict = TOKEN_NORM_CFG,
                 act_cfg: dict = dict(type='GELU')):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = build_token_norm(token_norm_cfg, embed_dims)
        self.attn = AttentionV2(embed_dims, num_heads, sr_ratio,
                                token_norm_cfg)
        self.norm2 = build_token_norm(token_norm_cfg, embed_dims)
        self.mlp = Mlp(
            embed_dims, int(embed_dims * mlp_ratio), act_cfg=act_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()

    def _forward_inference(self, x: torch.Tensor,
                           hw_shape: Sequence[int]) -> torch.Tensor:
        """:meth:`_forward` on the inference path
        (:func:`~mmrest.backbones.kernels.is_inference`).

        The output projection (a :func:`~mmrest.backbones.kernels.linear`)
        and the MLP are added to the tokens in place, and the MLP runs over
        chunks of tokens: it acts on each token alone, so its 4x wide
        hidden activations never exist whole and stay in cache
        (:func:`~mmrest.backbones.kernels.add_residual_mlp_`). Each
        product is rounded before it is added to the residual, as in
        ``x + proj(y)``. The same sums, grouped otherwise.
        """
        y = self.attn.attend(self.norm1(x), hw_shape)
        proj = self.attn.proj
        x = x.contiguous()
        x.add_(kernels.linear(y, proj.weight, proj.bias))
        return kernels.add_residual_mlp_(x, self.norm2, self.mlp)


#: Widths and heads of ResT v2 tiny, small and base.
_WIDTHS_96 = dict(embed_dims=[96, 192, 384, 768], num_heads=[1, 2, 4, 8])


class ResTV2(TokenMapsMixin, BaseModule):
    """ResT v2 backbone for dense prediction.

    A PyTorch implementation of `ResT V2: Simpler, Faster and Stronger
    <https://arxiv.org/abs/2204.07366>`_ (NeurIPS 2022): ResT with plain
    softmax attention over spatially reduced keys and values, plus an
    upsampled value branch that restores the detail the reduction removes.
    Each returned stage goes through a channels-first LayerNorm
    ``norm_{i+1}``, as in the authors' detection and segmentation code.

    Args:
        arch (str | dict): A variant, one of ``'tiny'`` (``'t'``),
            ``'small'`` (``'s'``), ``'base'`` (``'b'``) and ``'large'``
            (``'l'``, as in mmpretrain), or a dict with the keys
            ``embed_dims``, ``depths`` and ``num_heads`` (four entries each)
            and optionally
            ``sr_ratios`` (default ``[8, 4, 2, 1]``) and ``mlp_ratios``
            (default ``[4, 4, 4, 4]``). Defaults to ``'tiny'``.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int]): Stages (0-3) whose feature maps are
            returned, with strides 4, 8, 16 and 32. Defaults to all four.
        frozen_stages (int): Stages to freeze (eval mode and no gradients):
            -1 freezes nothing, 0 the stem, ``i`` the stem and stages 1 to
            ``i`` (each with its patch embedding and output norm).
            Defaults to -1.
        norm_eval (bool): Keep the stem's BatchNorms in eval mode while
            training. Defaults to False.
        with_cp (bool): Gradient checkpointing of each block: less memory,
            same outputs and gradients. Defaults to False.
        drop_path_rate (float): Stochastic depth, rising linearly over the
            blocks to this rate. Defaults to 0.
        norm_cfg (dict): Config of the stem's BatchNorms. Defaults to
            ``dict(type='BN')``.
        token_norm_cfg (dict): Config of the LayerNorms on tokens (stem,
            patch embeddings, blocks, attention, stage outputs); it must
            build a LayerNorm. Defaults to ``dict(type='LN', eps=1e-6)``
            (the paper's).
        act_cfg (dict): Config of the MLPs' activation. Defaults to
            ``dict(type='GELU')`` (exact, the paper's).
        init_cfg (dict | list[dict], optional): Initialisation config. With
            ``dict(type='Pretrained', checkpoint=path)`` the authors'
            ImageNet checkpoints (under ``model``; the classifier's ``norm``
            and ``head`` are dropped, ``norm_1..norm_4`` keep their init)
            and their dense checkpoints load as they are; add
            ``prefix='backbone.'`` to take the backbone of a detector
            checkpoint. A ResT v1 checkpoint is refused. Defaults to None:
            truncated-normal init.

    Example:
        >>> import torch
        >>> from mmrest import ResTV2
        >>> model = ResTV2(arch='tiny').eval()
        >>> outs = model(torch.rand(1, 3, 97, 131))
        >>> [tuple(o.shape) for o in outs]
        [(1, 96, 25, 33), (1, 192, 13, 17), (1, 384, 7, 9), (1, 768, 4, 5)]
    """

    display_name = 'ResTV2'

    # sr_ratios and mlp_ratios are the defaults (optional_keys) in every
    # variant; tiny, small and base differ only in depth.
    # yapf: disable
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['t', 'tiny'],
                        dict(depths=[1, 2, 6, 2], **_WIDTHS_96)),
        **dict.fromkeys(['s', 'small'],
                        dict(depths=[1, 2, 12, 2], **_WIDTHS_96)),
        **dict.fromkeys(['b', 'base'],
                        dict(depths=[1, 3, 16, 3], **_WIDTHS_96)),
        # The ImageNet checkpoint decides (network.md): depths 2, 3, 16, 2 and
        # heads 2, 4, 8, 16, as in the authors' classifier.
        **dict.fromkeys(['l', 'large'],
                        dict(embed_dims=[128, 256, 512, 1024],
                             depths=[2, 3, 16, 2],
                             num_heads=[2, 4, 8, 16])),
    }
    # yapf: enable
    essential_keys = ('embed_dims', 'depths', 'num_heads')
    optional_keys = {'sr_ratios': [8, 4, 2, 1], 'mlp_ratios': [4, 4, 4, 4]}
    # The ImageNet checkpoints hold neither the dense output norms norm_1..4
    # (initialised first) nor use for the classifier's norm and head.
    checkpoint_family = 'v2'
    checkpoint_ignore = ('head.', 'norm.')
    init_before_loading = True

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.,
                 norm_cfg: dict = dict(type='BN'),
                 token_norm_cfg: dict = TOKEN_NORM_CFG,
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        rates = self._setup(arch, in_channels, out_indices, frozen_stages,
                            norm_eval, drop_path_rate)
        embed_dims = self.embed_dims
        depths = self.arch_settings['depths']

        self.stem = ConvStemV2(in_channels, embed_dims[0], norm_cfg,
                               token_norm_cfg)
        for i in range(self.num_stages):
            if i > 0:
                self.add_module(
                    f'patch_{i + 1}',
                    PatchEmbedV2(embed_dims[i - 1], embed_dims[i],
                                 token_norm_cfg))
            start = sum(depths[:i])
            self.add_module(
                f'stage{i + 1}',
                nn.ModuleList([
                    BlockV2(
                        embed_dims[i],
                        self.arch_settings['num_heads'][i],
                        self.arch_settings['mlp_ratios'][i],
                        self.arch_settings['sr_ratios'][i],
                        drop_path=rates[start + j],
                        with_cp=with_cp,
                        token_norm_cfg=token_norm_cfg,
                        act_cfg=act_cfg) for j in range(depths[i])
                ]))
        # Dense output norms (channels-first LayerNorms in the authors'
        # code), only for the returned stages, as theirs.
        for i in self.out_indices:
            self.add_module(f'norm_{i + 1}',
                            build_token_norm(token_norm_cfg, embed_dims[i]))
        self._freeze_stages()

    # ------------------------------------------------------------- forward
    def _stage_modules(self, i: int) -> List[nn.Module]:
        """Modules of stage ``i`` (0-3): the stem or patch embedding, the
        blocks and the output norm (when the stage is returned)."""
        embed = self.stem if i == 0 else getattr(self, f'patch_{i + 1}')
        mods = [embed, getattr(self, f'stage{i + 1}')]
        if hasattr(self, f'norm_{i + 1}'):
            mods.append(getattr(self, f'norm_{i + 1}'))
        return mods

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if not torch.jit.is_tracing():  # a trace would bake the checks in
            self._check_input(x)
        outs = []
        x = self._input_layout(x)
        for i in range(self.num_stages):
            embed = self.stem if i == 0 else getattr(self, f'patch_{i + 1}')
            x = embed(x)
            shape = x.shape
            x = embed.norm(self._to_tokens(x))
            for block in getattr(self, f'stage{i + 1}'):
                x = block(x, shape[2:])
            if i in self.out_indices:
                outs.append(self._output_norm(i, x, shape))
            x = self._to_map(x, shape)
        return tuple(outs)

    def _output_norm(self, i: int, x: torch.Tensor,
                     shape: Sequence[int]) -> torch.Tensor:
        """``norm_{i+1}`` of stage ``i``'s tokens, as a contiguous NCHW map.

        The authors' channels-first LayerNorm normalises each position over
        its channels: on the tokens that is an ordinary LayerNorm. The
        literal computation applies their formula to the map.
        """
        norm = getattr(self, f'norm_{i + 1}')
        if kernels.use_literal(self):
            return channels_first_layer_norm(self._to_map(x, shape), norm)
        return self._to_map(norm(x), shape).contiguous()


def channels_first_layer_norm(x: torch.Tensor,
                              norm: nn.LayerNorm) -> torch.Tensor:
    """The authors' channels-first LayerNorm of a (B, C, H, W) map: each
    position normalised over its channels, with the weight, bias and
    epsilon of ``norm``.

    Args:
        x (Tensor): The map, (B, C, H, W).
        norm (nn.LayerNorm): The LayerNorm over C whose parameters apply.
    """
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + norm.eps)
    return norm.weight[:, None, None] * x + norm.bias[:, None, None]
