# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""How far the eval fast path is from float64, against the literal
(authors') float32 computation, per variant and stage
(``tools/precision_report.py``).

For each variant: a model with the authors' initialisation (truncated normal
0.02, zero biases, norms 1 and 0), seeded; its outputs in float32 on the
eval fast path (eval mode, no autograd), in float32 on the literal path
(:func:`mmrest.backbones.kernels.literal`, the authors' computation) and in
float64 on the literal path (the exact result). The error of a float32
result is ``||out - exact|| / ||exact||`` per stage (the measure of the
tests, ``tests/_helpers.py``); the maximum absolute difference is printed
too. ``factor`` is the fast error over the literal one.

With ``components``, one fast component at a time is replaced by its literal
counterpart (the others stay fast), to find where an error enters:

* ``onednn``: oneDNN's fused linear -> ``F.linear`` (+ ``F.gelu``);
* ``bn_fold``: BatchNorm folded into its conv -> ``norm(conv(x))``;
* ``mlp_chunks``: the chunked in-place block inference -> the plain block;
* ``emsa_core``: EMSA's chunked core -> the N x M maps, 1x1 conv,
  softmax, InstanceNorm, ``@ v``;
* ``one_head``: one-head EMSA with folded projections -> the general path;
* ``sdpa_v2``: ResT v2's fused attention -> explicit softmax.
"""
import contextlib
import copy
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F

V1_ARCHS = ('lite', 'small', 'base', 'large')
V2_ARCHS = ('tiny', 'small', 'base', 'large')
COMPONENTS = ('onednn', 'bn_fold', 'mlp_chunks', 'emsa_core', 'one_head',
              'sdpa_v2')


def build(family: str, arch: str, seed: int = 0) -> torch.nn.Module:
    """The backbone of ``family`` ('v1' or 'v2') and ``arch`` with the
    authors' initialisation drawn from ``seed``, in eval mode."""
    from mmrest import ResT, ResTV2
    torch.manual_seed(seed)
    cls = ResT if family == 'v1' else ResTV2
    model = cls(arch=arch)
    model.init_weights()
    return model.eval()


def _literal_emsa_core(q,
                       k,
                       v,
                       mix=None,
                       mix_bias=None,
                       attn_drop=0.,
                       training=False,
                       eps=1e-5,
                       chunk_elements=None):
    """EMSA's core as the authors compute it (on scaled queries)."""
    attn = q @ k.transpose(-2, -1)
    if mix is not None:
        h = q.shape[1]
        attn = F.conv2d(attn, mix.reshape(h, h, 1, 1), mix_bias)
        attn = F.instance_norm(attn.softmax(dim=-1), eps=eps)
    else:
        attn = attn.softmax(dim=-1)
    return attn @ v


@contextlib.contextmanager
def literal_component(name: Optional[str]):
    """Within the block, the fast component ``name`` (see the module
    docstring) computes literally; None changes nothing."""
    from mmrest.backbones import kernels, rest, rest_v2
    saved = []

    def patch(owner, attr, value):
        saved.append((owner, attr, owner.__dict__[attr]))
        setattr(owner, attr, value)

    if name is None:
        pass
    elif name == 'onednn':
        patch(kernels, 'ONEDNN_LINEAR', None)
    elif name == 'bn_fold':
        patch(kernels, 'conv_norm', lambda conv, norm, x: norm(conv(x)))
    elif name == 'mlp_chunks':
        patch(rest.Block, '_forward_inference',
              lambda self, x, hw: self._forward(x, hw))
        patch(rest_v2.BlockV2, '_forward_inference',
              lambda self, x, hw: self._forward(x, hw))
    elif name == 'emsa_core':
        patch(kernels, 'emsa_attention', _literal_emsa_core)
        patch(rest.kernels, 'emsa_attention', _literal_emsa_core)
    elif name == 'one_head':

        def general(self, x, hw_shape):
            B, N, C = x.shape
            q, k, v = self.project_qkv(x, hw_shape)
            out = kernels.emsa_attention(q, k, v)
            out = out.transpose(1, 2).reshape(B, N, C)
            return kernels.linear(out, self.proj.weight, self.proj.bias)

        patch(rest.EMSA, '_forward_one_head', general)
    elif name == 'sdpa_v2':

        def sdpa(q, k, v, scale=None, **kwargs):
            attn = (q @ k.transpose(-2, -1)) * scale
            return attn.softmax(dim=-1) @ v

        patch(rest_v2.F, 'scaled_dot_product_attention', sdpa)
    else:
        raise ValueError(f'unknown component {name!r}; choose from '
                         f'{COMPONENTS}')
    try:
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def stage_errors(outs: Sequence[torch.Tensor],
                 exact: Sequence[torch.Tensor]) -> List[Dict[str, float]]:
    """Per stage: relative (norm) error and maximum absolute difference of
    ``outs`` against the float64 ``exact``."""
    rows = []
    for out, ref in zip(outs, exact):
        diff = out.double() - ref
        rows.append(
            dict(
                rel=(diff.norm() / ref.norm()).item(),
                max_abs=diff.abs().max().item()))
    return rows


def measure(family: str,
            arch: str,
            size: Sequence[int] = (224, 224),
            seed: int = 0,
            components: Iterable[Optional[str]] = (None, ),
            model: Optional[torch.nn.Module] = None) -> dict:
    """The errors of the fast path (with each of ``components`` computed
    literally; None: all fast) and of the literal path against float64.

    Returns:
        dict: ``{'literal': [per stage], 'fast': {component: [per
        stage]}}``, each stage a dict of ``rel`` and ``max_abs``.
    """
    from mmrest.backbones import kernels
    if model is None:
        model = build(family, arch, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 3, *size, generator=gen)
    with torch.no_grad():
        exact_model = copy.deepcopy(model).double()
        with kernels.literal():
            exact = exact_model(x.double())
            literal = model(x)
        del exact_model
        result = dict(literal=stage_errors(literal, exact), fast={})
        for name in components:
            with literal_component(name):
                result['fast'][name
                               or 'all fast'] = stage_errors(model(x), exact)
    return result


def autocast_errors(family: str,
                    arch: str,
                    dtype: torch.dtype,
                    size: Sequence[int] = (224, 288),
                    batch: int = 2,
                    seed: int = 0,
                    model: Optional[torch.nn.Module] = None) -> dict:
    """Each path's outputs under CPU autocast in ``dtype`` against the same
    path's float32 outputs (eval mode, no autograd): the literal path is
    the authors' code under autocast, the fast path mmrest's (its attention
    core runs in float32 under autocast).

    Returns:
        dict: ``{'literal': [per stage], 'fast': [per stage]}``, each stage
        a dict of ``rel`` and ``max_abs`` (:func:`stage_errors`).
    """
    from mmrest.backbones import kernels
    if model is None:
        model = build(family, arch, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, *size, generator=gen)
    result = {}
    with torch.no_grad():
        for path in ('literal', 'fast'):
            with kernels.literal(path == 'literal'):
                ref = [out.double() for out in model(x)]
                with torch.autocast('cpu', dtype=dtype):
                    result[path] = stage_errors(model(x), ref)
    return result


def format_cell(stage: Dict[str, float]) -> str:
    """One stage's ``rel (max_abs)`` as the report's tables print it."""
    return f'{stage["rel"]:.2e} ({stage["max_abs"]:.1e})'


def format_rows(family: str, arch: str, result: dict) -> List[str]:
    """Markdown rows: variant, path, per stage ``rel (factor)``."""
    lit = result['literal']
    rows = [
        f'| {family} {arch} | literal fp32 | ' +
        ' | '.join(format_cell(s) for s in lit) + ' |'
    ]
    for name, errs in result['fast'].items():
        rows.append(f'| {family} {arch} | fast: {name} | ' +
                    ' | '.join(f'{format_cell(s)} x{s["rel"] / l["rel"]:.2f}'
                               for s, l in zip(errs, lit)) + ' |')
    return rows
