# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""ResT: An Efficient Transformer for Visual Recognition (NeurIPS 2021).

The network follows ``docs/network.md`` exactly, keeps the authors' state-dict
names, so their ImageNet checkpoints load without conversion. Some things
differ from the authors' code, none changes an output beyond float32
rounding:

* spatial sizes come from the convolution outputs, so any input size works
  (the authors' ``H // 2`` breaks on sizes that are not multiples of 32);
* the attention core of EMSA is computed by an exact reformulation that is
  faster and needs far less memory
  (:func:`mmrest.backbones.kernels.emsa_attention`);
* feature maps between the stages are kept channels-last, the memory
  layout of the tokens, so that going from tokens to maps and back copies
  nothing; the returned feature maps are ordinary contiguous NCHW tensors;
* in inference (eval mode, no autograd) the BatchNorms are folded into the
  convolutions before them, the attention keeps its intermediates in
  reused buffers, the MLP runs over chunks of tokens so that its 4x-wide
  hidden activations stay in cache, the narrower linears use oneDNN's
  kernel (bias and GELU applied as the output is written), the dense
  convolutions read NCHW copies of the maps (oneDNN's channels-last kernel
  is less accurate, see :func:`kernels.run_conv
  <mmrest.backbones.kernels.run_conv>`), and one-head attention has its
  query and output projections folded into its keys and values.

Each module also holds the literal computation, the authors' operators in
the authors' order, beside its fast one: :func:`kernels.literal()
<mmrest.backbones.kernels.literal>` selects it everywhere, and the tests
measure the fast paths against it.
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from . import kernels
from .base import (Mlp, PixelAttention, PreNormBlock, TokenMapsMixin,
                   build_token_norm, check_attention_args, reduction_conv)


class Stem(nn.Module):
    """The stride-4 convolutional stem: three 3x3 convs and pixel attention.

    Args:
        in_channels (int): Input image channels.
        out_channels (int): Output channels (``embed_dims[0]``).
        norm_cfg (dict): Config of the two BatchNorms.
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid, 3, 2, 1, bias=False)
        self.norm1 = build_norm_layer(norm_cfg, mid)[1]
        self.conv2 = nn.Conv2d(mid, mid, 3, 1, 1, bias=False)
        self.norm2 = build_norm_layer(norm_cfg, mid)[1]
        self.conv3 = nn.Conv2d(mid, out_channels, 3, 2, 1, bias=False)
        self.pos = PixelAttention(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.use_literal(self):  # conv, then BatchNorm, then ReLU
            x = F.relu(
                kernels.batch_norm_call(self.norm1, self.conv1(x)),
                inplace=True)
            x = F.relu(
                kernels.batch_norm_call(self.norm2, self.conv2(x)),
                inplace=True)
        else:  # eval-mode BatchNorms folded into the convs
            x = F.relu(
                kernels.conv_norm(self.conv1, self.norm1, x), inplace=True)
            x = F.relu(
                kernels.conv_norm(self.conv2, self.norm2, x), inplace=True)
        return self.pos(kernels.run_conv(self.conv3, x))


class PatchEmbed(nn.Module):
    """Overlapping stride-2 patch embedding: conv 3x3, BatchNorm, PA.

    Args:
        in_channels (int): Channels of the previous stage.
        out_channels (int): Channels of this stage.
        norm_cfg (dict): Config of the BatchNorm.
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.norm = build_norm_layer(norm_cfg, out_channels)[1]
        self.pos = PixelAttention(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.use_literal(self):  # conv, then BatchNorm
            return self.pos(kernels.batch_norm_call(self.norm, self.conv(x)))
        return self.pos(kernels.conv_norm(self.conv, self.norm, x))


class EMSA(nn.Module):
    """Efficient multi-head self-attention.

    Keys and values come from a depth-wise strided convolution of the
    tokens (when ``sr_ratio > 1``); with more than one head, a 1x1
    convolution mixes the heads' attention maps, which are then
    instance-normalised (the "transform").

    :meth:`_literal_forward` computes this as the authors do;
    the fast computation is exact and needs no N x M map
    (:func:`~mmrest.backbones.kernels.emsa_attention`, and in inference
    :meth:`_forward_one_head` for one head).

    Args:
        embed_dims (int): Token channels C.
        num_heads (int): Number of heads h. Defaults to 8.
        sr_ratio (int): Spatial reduction s of keys and values, a positive
            integer. Defaults to 1.
        qkv_bias (bool): Whether q and kv have a bias. Defaults to True.
        qk_scale (float, optional): Overrides the scale ``d ** -0.5``.
            Defaults to None.
        attn_drop (float): Dropout on the attention. Defaults to 0.
        proj_drop (float): Dropout after the output projection. Defaults
            to 0.
        apply_transform (bool): Whether to mix and normalise the heads'
            attention maps (only effective with more than one head).
            Defaults to True.
        token_norm_cfg (dict): Config of the LayerNorm of the reduced
            tokens. Defaults to ``dict(type='LN')``.
    """

    #: Compute literally in every call (set per instance by
    #: :func:`~mmrest.backbones.kernels.to_literal`).
    literal = False

    def __init__(self,
                 embed_dims: int,
                 num_heads: int = 8,
                 sr_ratio: int = 1,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 apply_transform: bool = True,
                 token_norm_cfg: dict = dict(type='LN')):
        super().__init__()
        check_attention_args(embed_dims, num_heads, sr_ratio)
        self.num_heads = num_heads
        self.scale = qk_scale or (embed_dims // num_heads)**-0.5
        self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = reduction_conv(embed_dims, sr_ratio)
            self.sr_norm = build_token_norm(token_norm_cfg, embed_dims)
        self.apply_transform = apply_transform and num_heads > 1
        if self.apply_transform:
            self.transform_conv = nn.Conv2d(num_heads, num_heads, 1)

    def project_qkv(self, x: torch.Tensor, hw_shape: Sequence[int]):
        """Queries (scaled), keys and values, each (B, h, *, d).

        The scale is folded into the query projection's weight and bias
        (C x C numbers instead of N x C).
        """
        B, N, C = x.shape
        h = self.num_heads
        bias = self.q.bias * self.scale if self.q.bias is not None else None
        q = kernels.linear(x, self.q.weight * self.scale, bias)
        q = q.view(B, N, h, C // h).transpose(1, 2)
        k, v = self.keys_values(x, hw_shape)
        return q, k, v

    def keys_values(self, x: torch.Tensor, hw_shape: Sequence[int]):
        """Keys and values, each (B, h, M, d); M = N / sr_ratio^2.

        The strided convolution reads the tokens as a channels-last feature
        map, without a copy (:func:`~mmrest.backbones.kernels.token_map`).
        """
        B, N, C = x.shape
        h = self.num_heads
        if self.sr_ratio > 1:
            x = kernels.token_map(x, hw_shape)
            x = self.sr(x).permute(0, 2, 3, 1).reshape(B, -1, C)
            x = self.sr_norm(x)
        kv = kernels.linear(x, self.kv.weight, self.kv.bias)
        # unbind: in the backward one stack of both gradients, where two
        # indexings each fill a zero tensor of both and add them
        k, v = kv.reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4).unbind()
        return k, v

    def _forward_one_head(self, x: torch.Tensor, hw_shape: Sequence[int]):
        """:meth:`forward` with one head, in inference: the query and the
        output projections folded into the keys and the values.

        With one head the output is ``softmax(q k^T) v Wp^T + bp`` and
        ``q = x Wq^T + bq`` (scale included), so::

            q k^T = x (k Wq)^T + (k bq)^T    # a bias per key, per image
            (A v) Wp^T = A (v Wp^T)

        The two C x C projections of all N tokens become products of the M
        keys and values (M = N / sr_ratio^2), and the attention reads the
        tokens themselves. The per-key bias is the attention's additive
        mask. Exact: the same sums, grouped otherwise.
        """
        k, v = self.keys_values(x, hw_shape)  # (B, 1, M, C)
        keys = k @ (self.q.weight * self.scale)
        mask = None
        if self.q.bias is not None:
            mask = (k @ (self.q.bias * self.scale)).unsqueeze(-2)
        values = v @ self.proj.weight.t()
        out = F.scaled_dot_product_attention(
            x.unsqueeze(1), keys, values, attn_mask=mask, scale=1.0)
        out = out.squeeze(1)
        if self.proj.bias is not None:
            out.add_(self.proj.bias)
        return out

    def _literal_forward(self, x: torch.Tensor, hw_shape: Sequence[int]):
        """EMSA step by step (docs/network.md), the authors' operators: N x M
        attention maps, the 1x1 conv over heads, softmax, InstanceNorm."""
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(B, C, *hw_shape)
            x_ = self.sr(x_).reshape(B, C, -1).permute(0, 2, 1)
            x_ = self.sr_norm(x_)
        else:
            x_ = x
        kv = self.kv(x_).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if self.apply_transform:
            attn = self.transform_conv(attn)
            attn = attn.softmax(dim=-1)
            attn = F.instance_norm(attn, eps=1e-5)
        else:
            attn = attn.softmax(dim=-1)
        attn = F.dropout(attn, self.attn_drop, self.training)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def forward(self, x: torch.Tensor, hw_shape: Sequence[int]):
        if kernels.use_literal(self):
            return self._literal_forward(x, hw_shape)
        if self.num_heads == 1 and kernels.is_inference(self, x):
            return self._forward_one_head(x, hw_shape)
        B, N, C = x.shape
        q, k, v = self.project_qkv(x, hw_shape)
        mix = mix_bias = None
        if self.apply_transform:
            mix = self.transform_conv.weight.view(self.num_heads,
                                                  self.num_heads)
            mix_bias = self.transform_conv.bias
        out = kernels.emsa_attention(q, k, v, mix, mix_bias, self.attn_drop,
                                     self.training)
        out = out.transpose(1, 2).reshape(B, N, C)
        if kernels.is_inference(self, out):
            return kernels.linear(out, self.proj.weight, self.proj.bias)
        return self.proj_drop(self.proj(out))  # the module, hooks and all


class Block(PreNormBlock):
    """A pre-norm Transformer block with EMSA.

    Args:
        embed_dims (int): Token channels.
        num_heads (int): EMSA heads.
        mlp_ratio (float): Hidden channels of the MLP over ``embed_dims``.
            Defaults to 4.
        sr_ratio (int): EMSA spatial reduction. Defaults to 1.
        qkv_bias (bool): Whether q and kv have a bias. Defaults to True.
        drop (float): Dropout after projections. Defaults to 0.
        attn_drop (float): Dropout on the attention. Defaults to 0.
        drop_path (float): Stochastic depth rate of this block. Defaults
            to 0.
        apply_transform (bool): EMSA's head mixing and normalisation.
            Defaults to True.
        with_cp (bool): Gradient checkpointing of the whole block.
            Defaults to False.
        token_norm_cfg (dict): Config of the LayerNorms. Defaults to
            ``dict(type='LN')``.
        act_cfg (dict): Config of the MLP's activation. Defaults to
            ``dict(type='GELU')``.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 sr_ratio: int = 1,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 apply_transform: bool = True,
                 with_cp: bool = False,
                 token_norm_cfg: dict = dict(type='LN'),
                 act_cfg: dict = dict(type='GELU')):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = build_token_norm(token_norm_cfg, embed_dims)
        self.attn = EMSA(
            embed_dims,
            num_heads,
            sr_ratio,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            apply_transform=apply_transform,
            token_norm_cfg=token_norm_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.norm2 = build_token_norm(token_norm_cfg, embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), drop, act_cfg)

    def _forward_inference(self, x: torch.Tensor, hw_shape: Sequence[int]):
        """:meth:`_forward` on the inference path
        (:func:`~mmrest.backbones.kernels.is_inference`).

        The MLP acts on each token alone, so it runs over chunks of tokens
        and adds its output in place: its hidden activations (4x the
        tokens' size) never exist whole, stay in cache and reuse memory
        (:func:`~mmrest.backbones.kernels.add_residual_mlp_`).
        """
        x = (x + self.attn(self.norm1(x), hw_shape)).contiguous()
        return kernels.add_residual_mlp_(x, self.norm2, self.mlp)


_STAGE_SETTINGS = dict(
    num_heads=[1, 2, 4, 8], sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4])


class ResT(TokenMapsMixin, BaseModule):
    """ResT backbone: multi-scale Transformer with efficient attention.

    A PyTorch implementation of `ResT: An Efficient Transformer for Visual
    Recognition <https://arxiv.org/abs/2105.13677>`_ (NeurIPS 2021).

    Args:
        arch (str | dict): A variant name, one of ``'lite'``, ``'small'``
            (``'s'``), ``'base'`` (``'b'``) and ``'large'`` (``'l'``, as in
            mmpretrain; lite has no one-letter alias), or a dict with the keys
            ``embed_dims``, ``depths``, ``num_heads``, ``sr_ratios`` and
            ``mlp_ratios`` (four entries each), and optionally ``qkv_bias``
            (default True) and ``apply_transform`` (default True).
            Defaults to ``'small'``.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int]): Stages (0-3) whose feature maps are
            returned, with strides 4, 8, 16 and 32. Defaults to all four.
        frozen_stages (int): Stages to freeze (eval mode and no gradients):
            -1 freezes nothing, 0 the stem, ``i`` the stem and stages 1 to
            ``i`` (each with its patch embedding and output norm).
            Defaults to -1.
        norm_eval (bool): Keep the BatchNorms in eval mode while training.
            Defaults to False.
        with_cp (bool): Gradient checkpointing of each block: less memory,
            same outputs and gradients. Defaults to False.
        drop_rate (float): Dropout after projections. Defaults to 0.
        attn_drop_rate (float): Dropout on the attention. Defaults to 0.
        drop_path_rate (float): Stochastic depth, rising linearly over the
            blocks to this rate. Defaults to 0.
        norm_cfg (dict): Config of the BatchNorms of the stem and the patch
            embeddings. Defaults to ``dict(type='BN')``.
        token_norm_cfg (dict): Config of the LayerNorms on tokens (blocks,
            reduced keys, stage outputs); it must build a LayerNorm, e.g.
            with another ``eps``. Defaults to ``dict(type='LN')`` (eps
            1e-5, the paper's).
        act_cfg (dict): Config of the MLPs' activation. Defaults to
            ``dict(type='GELU')`` (exact, the paper's).
        out_norms_feed_next_stage (bool): Pass the output of ``norm1`` ..
            ``norm3`` (the normalised feature map of a returned stage) on to
            the next stage, as the authors' detectron2 backbone does
            (``object_detection/restv2/rest.py`` of wofmanaf/ResT reassigns
            the stage's tokens to the normalised ones): the setting of their
            published v1 detectors, which give other detections without
            it. With False the norms only make the returned maps and the
            next stage gets the stage's unnormalised tokens. Defaults to
            False.
        init_cfg (dict | list[dict], optional): Initialisation config. With
            ``dict(type='Pretrained', checkpoint=path)`` the authors'
            ImageNet checkpoints load as they are (a plain state dict or
            one under ``model`` or ``state_dict``; the classifier ``head``
            is dropped); add ``prefix='backbone.'`` to take the backbone of
            a detector checkpoint. Defaults to None: truncated-normal init.

    Example:
        >>> import torch
        >>> from mmrest import ResT
        >>> model = ResT(arch='lite').eval()
        >>> outs = model(torch.rand(1, 3, 97, 131))
        >>> [tuple(o.shape) for o in outs]
        [(1, 64, 25, 33), (1, 128, 13, 17), (1, 256, 7, 9), (1, 512, 4, 5)]
    """

    # Heads, reductions and MLP ratios are those of every variant
    # (network.md); the variants differ in widths and depths.
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['lite'],
                        dict(
                            embed_dims=[64, 128, 256, 512],
                            depths=[2, 2, 2, 2],
                            **_STAGE_SETTINGS)),
        **dict.fromkeys(['s', 'small'],
                        dict(
                            embed_dims=[64, 128, 256, 512],
                            depths=[2, 2, 6, 2],
                            **_STAGE_SETTINGS)),
        **dict.fromkeys(['b', 'base'],
                        dict(
                            embed_dims=[96, 192, 384, 768],
                            depths=[2, 2, 6, 2],
                            **_STAGE_SETTINGS)),
        **dict.fromkeys(['l', 'large'],
                        dict(
                            embed_dims=[96, 192, 384, 768],
                            depths=[2, 2, 18, 2],
                            **_STAGE_SETTINGS)),
    }
    essential_keys = ('embed_dims', 'depths', 'num_heads', 'sr_ratios',
                      'mlp_ratios')
    optional_keys = {'qkv_bias': True, 'apply_transform': True}

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 norm_cfg: dict = dict(type='BN'),
                 token_norm_cfg: dict = dict(type='LN'),
                 act_cfg: dict = dict(type='GELU'),
                 out_norms_feed_next_stage: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        rates = self._setup(arch, in_channels, out_indices, frozen_stages,
                            norm_eval, drop_path_rate)
        embed_dims = self.embed_dims
        depths = self.arch_settings['depths']
        self.out_norms_feed_next_stage = bool(out_norms_feed_next_stage)

        self.stem = Stem(in_channels, embed_dims[0], norm_cfg)
        for i in range(self.num_stages):
            if i > 0:
                self.add_module(
                    f'patch_embed_{i + 1}',
                    PatchEmbed(embed_dims[i - 1], embed_dims[i], norm_cfg))
            start = sum(depths[:i])
            stage = nn.ModuleList([
                Block(
                    embed_dims[i],
                    self.arch_settings['num_heads'][i],
                    self.arch_settings['mlp_ratios'][i],
                    self.arch_settings['sr_ratios'][i],
                    qkv_bias=self.arch_settings['qkv_bias'],
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[start + j],
                    apply_transform=self.arch_settings['apply_transform'],
                    with_cp=with_cp,
                    token_norm_cfg=token_norm_cfg,
                    act_cfg=act_cfg) for j in range(depths[i])
            ])
            self.add_module(f'stage{i + 1}', stage)
            # Output norms: norm1..norm3 for returned stages 1-3, and the
            # final `norm` (the classifier's) always on stage 4.
            if i < 3 and i in self.out_indices:
                self.add_module(
                    f'norm{i + 1}',
                    build_token_norm(token_norm_cfg, embed_dims[i]))
        self.norm = build_token_norm(token_norm_cfg, embed_dims[3])
        self._freeze_stages()

    # ------------------------------------------------------------- forward
    def _stage_modules(self, i: int) -> List[nn.Module]:
        """Modules of stage ``i`` (0-3): the stem or patch embedding, the
        blocks and the output norm."""
        embed = self.stem if i == 0 else getattr(self, f'patch_embed_{i + 1}')
        mods = [embed, getattr(self, f'stage{i + 1}')]
        if i == 3:
            mods.append(self.norm)
        elif hasattr(self, f'norm{i + 1}'):
            mods.append(getattr(self, f'norm{i + 1}'))
        return mods

    def forward(self, x: torch.Tensor):
        if not torch.jit.is_tracing():  # a trace would bake the checks in
            self._check_input(x)
        outs = []
        x = self._input_layout(x)
        for i in range(self.num_stages):
            x = self.stem(x) if i == 0 else \
                getattr(self, f'patch_embed_{i + 1}')(x)
            shape = x.shape
            x = self._to_tokens(x)
            for block in getattr(self, f'stage{i + 1}'):
                x = block(x, shape[2:])
            if i == 3:
                x = self.norm(x)
            if i in self.out_indices:
                out = x if i == 3 else getattr(self, f'norm{i + 1}')(x)
                outs.append(self._to_map(out, shape).contiguous())
                if self.out_norms_feed_next_stage:
                    x = out
            x = self._to_map(x, shape)
        return tuple(outs)
