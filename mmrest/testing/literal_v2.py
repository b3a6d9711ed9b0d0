# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""ResT v2 computed literally, step by step, as SPEC.md and the authors do.

The yardstick for :mod:`mmrest.backbones.rest_v2`: tests check that both
give the same outputs and gradients. Never used by the model.

:func:`to_literal_v2` swaps in, in place of the model's computation:

* :class:`LiteralAttentionV2`: the N x M attention matrix
  ``softmax(q k^T * scale)`` built explicitly and multiplied by ``v``, the
  value branch reshaped from ``v`` as the authors do (generalised to any
  size by the crop of SPEC);
* :class:`LiteralBlockV2`: the MLP on all tokens at once, out of place;
* :class:`LiteralPixelAttention`: ``x * sigmoid(dwconv(x))`` out of place;
* :class:`LiteralResTV2`: contiguous NCHW maps, flattened to tokens and
  reshaped back with copies, and the dense outputs through the authors'
  channels-first LayerNorm formula.
"""

import torch
import torch.nn as nn

from ..backbones.rest import PixelAttention
from ..backbones.rest_v2 import AttentionV2, BlockV2, ResTV2
from .literal import (LiteralLayoutMixin, LiteralPixelAttention,
                      swap_classes)


class LiteralAttentionV2(AttentionV2):
    """The authors' attention: explicit softmax(q k^T) @ v, explicit maps."""

    def attend(self, x, hw_shape):
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

    def forward(self, x, hw_shape):
        return self.proj(self.attend(x, hw_shape))


class LiteralBlockV2(BlockV2):
    """The pre-norm block on all tokens at once, out of place, in every
    mode."""

    def _forward_inference(self, x, hw_shape):
        return self._forward(x, hw_shape)


def channels_first_layer_norm(x: torch.Tensor, norm: nn.LayerNorm):
    """The authors' channels-first LayerNorm of a (B, C, H, W) map."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + norm.eps)
    return norm.weight[:, None, None] * x + norm.bias[:, None, None]


class LiteralResTV2(LiteralLayoutMixin, ResTV2):
    """ResTV2 with contiguous NCHW maps (the authors' layout) and their
    channels-first output norms."""

    def _output_norm(self, i, x, shape):
        return channels_first_layer_norm(
            self._to_map(x, shape), getattr(self, f'norm_{i + 1}'))


_LITERAL = {
    AttentionV2: LiteralAttentionV2,
    BlockV2: LiteralBlockV2,
    PixelAttention: LiteralPixelAttention,
    ResTV2: LiteralResTV2,
}


def to_literal_v2(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """The same model (a copy by default) computed literally.

    Every attention, pixel attention and ResTV2 in ``model`` (the model
    itself included) gets the literal computation of its class;
    parameters, buffers and modes are kept.
    """
    return swap_classes(model, _LITERAL, copy_model)
