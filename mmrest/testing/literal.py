# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""ResT computed literally, step by step, as SPEC.md and the authors do.

It is the yardstick for :mod:`mmrest.backbones.rest`: the tests check that
both give the same outputs and gradients, and ``tools/benchmark.py``
measures both. It is never used by the model.

:func:`to_literal` swaps, in place of the model's fast paths, the literal
computation of each part that has one:

* :class:`LiteralEMSA`: N x M attention maps, the 1x1 conv over heads, the
  softmax and the InstanceNorm (the authors' EMSA);
* :class:`LiteralBlock`: the MLP on all tokens at once;
* :class:`LiteralStem`, :class:`LiteralPatchEmbed` and
  :class:`LiteralPixelAttention`: conv, then BatchNorm, then the pixel
  attention, each as its own module call;
* :class:`LiteralResT`: contiguous NCHW feature maps between the stages,
  flattened to tokens and reshaped back with copies.

The BatchNorms' incoming gradients are laid out as their inputs (see
:func:`batch_norm_call`): PyTorch's CPU BatchNorm backward gets them wrong
otherwise, for a batch of one.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones.rest import (EMSA, Block, PatchEmbed, PixelAttention, ResT,
                              Stem)


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is dense in (NCHW where it is both or none)."""
    if (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def batch_norm_call(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, the module call, its gradient laid out as ``x`` is.

    Works around a bug of PyTorch's CPU ``native_batch_norm_backward`` (seen
    in torch 2.13): its fast path runs when input and gradient are each
    dense in some format and ``suggest_memory_format()`` names the same one
    for both, then reads both buffers in that format. For a batch of one, a
    channels-last gradient whose batch stride is not ``C * H * W`` (legal
    for a dimension of size one; what reaches a patch embedding from the
    tokens here) is suggested NCHW: it is read in the wrong order, and the
    input, weight and bias gradients are wrong (eval and train modes) while
    the output is right. A gradient dense in the input's own layout avoids
    this; the forward computation is untouched.
    """
    out = norm(x)
    if out.requires_grad:
        layout = _layout_of(x)
        out.register_hook(lambda grad: grad.contiguous(memory_format=layout))
    return out


class LiteralEMSA(EMSA):
    """EMSA computed literally: N x M maps, a 1x1 conv, InstanceNorm."""

    def forward(self, x, hw_shape):
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
            attn = nn.functional.instance_norm(attn, eps=1e-5)
        else:
            attn = attn.softmax(dim=-1)
        attn = nn.functional.dropout(attn, self.attn_drop, self.training)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class LiteralPixelAttention(PixelAttention):
    """``x * sigmoid(dwconv(x))``, out of place."""

    def forward(self, x):
        return x * torch.sigmoid(self.pa_conv(x))


class LiteralStem(Stem):
    """The stem with its BatchNorms applied as modules of their own."""

    def forward(self, x):
        x = F.relu(batch_norm_call(self.norm1, self.conv1(x)), inplace=True)
        x = F.relu(batch_norm_call(self.norm2, self.conv2(x)), inplace=True)
        return self.pos(self.conv3(x))


class LiteralPatchEmbed(PatchEmbed):
    """Conv, BatchNorm and PA, each a module call."""

    def forward(self, x):
        return self.pos(batch_norm_call(self.norm, self.conv(x)))


class LiteralBlock(Block):
    """The pre-norm block on all tokens at once, in every mode."""

    def _forward_inference(self, x, hw_shape):
        return self._forward(x, hw_shape)


class LiteralLayoutMixin:
    """Contiguous NCHW maps between the stages, flattened to tokens and
    reshaped back with copies (the authors' code), in place of
    :class:`~mmrest.backbones.rest.TokenMapsMixin`'s channels-last views."""

    @staticmethod
    def _input_layout(x):
        return x

    @staticmethod
    def _to_tokens(x):
        return x.flatten(2).transpose(1, 2)

    @staticmethod
    def _to_map(x, shape):
        return x.transpose(1, 2).reshape(shape)


class LiteralResT(LiteralLayoutMixin, ResT):
    """ResT with contiguous NCHW maps between the stages (authors' code)."""


_LITERAL = {
    EMSA: LiteralEMSA,
    PixelAttention: LiteralPixelAttention,
    Stem: LiteralStem,
    PatchEmbed: LiteralPatchEmbed,
    Block: LiteralBlock,
    ResT: LiteralResT,
}


def to_literal(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """The same model (a copy by default) computed literally.

    Every EMSA, block, stem, patch embedding, pixel attention and ResT in
    ``model`` (the model itself included) gets the literal computation of
    its class; parameters, buffers and modes are kept.
    """
    return swap_classes(model, _LITERAL, copy_model)


def swap_classes(model: nn.Module, table: dict,
                 copy_model: bool = True) -> nn.Module:
    """``model`` (a copy by default) with each module whose type is a key
    of ``table`` given the class it maps to (its literal computation)."""
    if copy_model:
        model = copy.deepcopy(model)
    for module in model.modules():
        literal = table.get(type(module))
        if literal is not None:
            module.__class__ = literal
    return model
