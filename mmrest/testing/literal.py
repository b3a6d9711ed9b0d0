# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The literal EMSA of SPEC.md, step by step, as the authors compute it.

It is the yardstick for :func:`mmrest.backbones.rest.emsa_attention`: the
tests check that both give the same outputs and gradients, and
``tools/benchmark.py`` measures both. It is never used by the model.
"""
import copy

import torch
import torch.nn as nn

from ..backbones.rest import EMSA


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


def to_literal(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """The same model (a copy by default) with every EMSA made literal."""
    if copy_model:
        model = copy.deepcopy(model)
    for module in model.modules():
        if type(module) is EMSA:
            module.__class__ = LiteralEMSA
    return model
