"""ResT options that no other test exercises: EMSA without the head-mixing
transform but with several heads (its own attention path), q and kv without
bias, the dropout rates (``drop_rate``, ``attn_drop_rate``), gradient
checkpointing (``with_cp``) under ``torch.compile``, and building on the meta
device.

EMSA is checked against a float64 computation written here from the paper's
formulas (ResT, NeurIPS 2021, Sec. 3.2; the authors' ``models/rest.py``):

    q = x Wq^T (+ bq)
    x' = LN(DWConv_{k=s+1, stride=s, pad=s//2}(x))   (x' = x when s = 1)
    k, v = split(x' Wkv^T (+ bkv))
    A = softmax(q k^T / sqrt(d))                       (no transform)
    A = IN(softmax(Conv1x1_heads(q k^T / sqrt(d))))   (transform)
    out = merge_heads(A v) Wp^T + bp

Where the authors apply dropout (``models/rest.py``): on the normalised
attention (``attn_drop``), after the output projection (``proj_drop``),
and in the MLP after the activation and after ``fc2`` (``Mlp.drop``, both
with ``drop_rate``); ResT v1 has no dropout on the stem's output.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import (GRADIENT_FACTOR, TINY_V1, TINY_V2, CallCounter,
                      assert_float32_close, assert_gradients_close,
                      float32_errors, float32_floor, float64_literal,
                      golden_model, golden_model_v2, literal_attention,
                      relative_error, stage_depths)

from mmrest import ResT, ResTV2
from mmrest.backbones import EMSA, emsa_attention, kernels, to_literal

TINY_ARCH = dict(
    embed_dims=[16, 32, 64, 128],
    depths=[1, 1, 1, 1],
    num_heads=[1, 2, 4, 8],
    sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[2, 2, 2, 2])
HW = (13, 18)


def emsa_reference(module: EMSA, x: torch.Tensor, hw) -> torch.Tensor:
    """The paper's EMSA in float64, from ``module``'s parameters only (its
    code is not called): differentiable in those parameters and ``x``."""
    p = dict(module.named_parameters())
    B, N, C = x.shape
    h = module.num_heads
    d = C // h
    s = module.sr_ratio

    def linear(t, name):
        out = t @ p[f'{name}.weight'].t()
        bias = p.get(f'{name}.bias')
        return out if bias is None else out + bias

    q = linear(x, 'q').view(B, N, h, d).transpose(1, 2) / math.sqrt(d)
    reduced = x
    if s > 1:
        fmap = x.transpose(1, 2).reshape(B, C, *hw)
        fmap = F.conv2d(
            fmap,
            p['sr.weight'],
            p['sr.bias'],
            stride=s,
            padding=s // 2,
            groups=C)
        reduced = F.layer_norm(
            fmap.flatten(2).transpose(1, 2), (C, ),
            p['sr_norm.weight'],
            p['sr_norm.bias'],
            eps=1e-5)
    kv = linear(reduced, 'kv')
    M = kv.shape[1]
    k = kv[..., :C].reshape(B, M, h, d).transpose(1, 2)
    v = kv[..., C:].reshape(B, M, h, d).transpose(1, 2)
    if 'transform_conv.weight' in p:
        out = literal_attention(q, k, v, p['transform_conv.weight'],
                                p['transform_conv.bias'])
    else:
        out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    return linear(out.transpose(1, 2).reshape(B, N, C), 'proj')


def randomised_emsa(embed_dims, num_heads, sr_ratio, **kwargs) -> EMSA:
    """An EMSA with every parameter, biases too, at a non-trivial value."""
    module = EMSA(embed_dims, num_heads, sr_ratio, **kwargs)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.3)
    return module


# (embed_dims, num_heads, sr_ratio, qkv_bias, apply_transform)
EMSA_CASES = [
    (32, 2, 4, True, False),
    (64, 4, 2, True, False),
    (64, 8, 1, True, False),
    (64, 4, 2, False, False),
    (64, 4, 2, False, True),
    (32, 1, 4, False, True),  # one head: the folded inference path
]


@pytest.mark.parametrize('embed_dims,num_heads,sr_ratio,qkv_bias,transform',
                         EMSA_CASES)
def test_emsa_options_against_the_paper_in_float64(embed_dims, num_heads,
                                                   sr_ratio, qkv_bias,
                                                   transform):
    """The fast paths (inference, and training with autograd) and the
    literal path give the paper's EMSA: the literal float32 error against
    the float64 formula is float32 rounding (below the float32 floor), and
    the fast path's is within the usual factor of it; gradients too."""
    fast = randomised_emsa(
        embed_dims,
        num_heads,
        sr_ratio,
        qkv_bias=qkv_bias,
        apply_transform=transform)
    assert (fast.q.bias is None) == (fast.kv.bias is None) == (not qkv_bias)
    assert hasattr(fast, 'transform_conv') == (transform and num_heads > 1)
    literal = to_literal(fast)
    reference = copy.deepcopy(fast).double()
    x = torch.randn(2, HW[0] * HW[1], embed_dims)

    fast.eval(), literal.eval()
    with torch.no_grad():  # the inference paths
        expected = emsa_reference(reference, x.double(), HW)
        out_fast, out_literal = fast(x, HW), literal(x, HW)
    _, err_literal = float32_errors(out_fast, out_literal, expected)
    assert err_literal < float32_floor(), err_literal
    assert_float32_close(out_fast, out_literal, expected, name='inference')

    fast.train(), literal.train()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    xc = x.double().requires_grad_()
    outs = [fast(xa, HW), literal(xb, HW), emsa_reference(reference, xc, HW)]
    assert_float32_close(*outs, name='train-mode output')
    g = torch.randn_like(outs[0])
    for out in outs:
        (out * g.to(out.dtype)).sum().backward()
    assert_float32_close(
        xa.grad,
        xb.grad,
        xc.grad,
        name='input gradient',
        factor=GRADIENT_FACTOR)
    assert_gradients_close(fast, literal, reference)


def test_the_modules_documented_defaults():
    """The attention and block modules built with their required arguments
    only are what their docstrings say: biased q and kv, head mixing (with
    more than one head), no reduction, the ``d ** -0.5`` scale, no dropout,
    a 4x MLP, no stochastic depth, no checkpointing."""
    from mmrest.backbones.rest import Block
    from mmrest.backbones.rest_v2 import LN_EPS, AttentionV2, BlockV2
    emsa = EMSA(32)
    assert emsa.num_heads == 8 and emsa.sr_ratio == 1
    assert not hasattr(emsa, 'sr') and emsa.apply_transform
    assert emsa.q.bias is not None and emsa.kv.bias is not None
    assert emsa.scale == 4**-0.5 and emsa.attn_drop == 0
    assert emsa.proj_drop.p == 0
    for block in (Block(32, 2), BlockV2(32, 2)):
        assert block.with_cp is False
        assert isinstance(block.drop_path, nn.Identity)
        assert block.mlp.fc1.out_features == 128
        assert isinstance(block.mlp.act, nn.GELU)
    block = Block(32, 2)
    assert block.attn.apply_transform and block.attn.q.bias is not None
    assert block.attn.sr_ratio == 1 and block.attn.attn_drop == 0
    assert block.attn.proj_drop.p == 0
    attn = AttentionV2(32, 2)
    assert attn.sr_ratio == 1 and not hasattr(attn, 'sr')
    assert BlockV2(32, 2).norm1.eps == LN_EPS == 1e-6
    assert BlockV2(32, 2).attn.sr_ratio == 1


@pytest.mark.parametrize('sr_ratio', [0, -1, 2.0, '2', None])
def test_attention_refuses_a_reduction_that_is_not_a_positive_integer(
        sr_ratio):
    from mmrest.backbones.rest_v2 import AttentionV2
    for cls in (EMSA, AttentionV2):
        with pytest.raises(
                ValueError,
                match='sr_ratio must be a positive integer, got '
                f'{sr_ratio!r}'):
            cls(32, 2, sr_ratio)


def test_qkv_bias_false_has_no_q_kv_bias_keys():
    """The authors' names: ``stageS.J.attn.q.bias`` and ``.kv.bias`` are
    the only keys that ``qkv_bias=False`` removes; ``apply_transform=False``
    removes ``attn.transform_conv.*`` and nothing else."""

    def keys(**options):
        return set(ResT(arch={**TINY_ARCH, **options}).state_dict())

    full = keys()
    bias_keys = {
        k
        for k in full if k.endswith(('.attn.q.bias', '.attn.kv.bias'))
    }
    assert len(bias_keys) == 2 * sum(TINY_ARCH['depths'])
    assert keys(qkv_bias=False) == full - bias_keys
    transform_keys = {k for k in full if '.attn.transform_conv.' in k}
    # stage 1 has one head: no transform there in any case
    assert len(transform_keys) == 2 * sum(TINY_ARCH['depths'][1:])
    assert keys(apply_transform=False) == full - transform_keys
    assert keys(qkv_bias=False, apply_transform=False) == \
        full - bias_keys - transform_keys


def test_backbone_without_bias_and_transform_matches_float64():
    """A whole ResT with ``qkv_bias=False, apply_transform=False``: eval
    and train-mode outputs, and gradients, as close to the float64 model as
    float32 allows."""
    model = ResT(arch={
        **TINY_ARCH, 'qkv_bias': False,
        'apply_transform': False
    })
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, 0.1)
    literal = to_literal(model)
    exact = float64_literal(model)
    x = torch.randn(2, 3, 64, 96)
    depths = stage_depths(model)
    for m in (model, literal, exact):
        m.eval()
    with torch.no_grad():
        for depth, a, b, c in zip(depths, model(x), literal(x),
                                  exact(x.double())):
            assert_float32_close(a, b, c, depth=depth, name='eval')
    for m in (model, literal, exact):
        m.train()
    results = []
    for m, inp in ((model, x), (literal, x), (exact, x.double())):
        outs = m(inp)
        sum(o.square().mean() for o in outs).backward()
        results.append([o.detach() for o in outs])
    for depth, a, b, c in zip(depths, *results):
        assert_float32_close(a, b, c, depth=depth, name='train')
    assert_gradients_close(model, literal, exact, depth=depths[-1])


# ------------------------------------------------------------ dropout
def _binomial_tolerance(p: float, n: int) -> float:
    """5 standard deviations of the share of successes in ``n`` draws: a
    correct rate fails with probability < 1e-6."""
    return 5 * math.sqrt(p * (1 - p) / n)


def _dropout_modules(model):
    return {
        n: m
        for n, m in model.named_modules() if isinstance(m, nn.Dropout)
    }


def test_drop_rate_is_applied_where_the_authors_apply_it():
    """``drop_rate`` sets the dropout after each block's output projection
    and after the MLP's activation and ``fc2``, nowhere else; in training,
    those zero a share ``drop_rate`` of their inputs (within 5 standard
    deviations over all the activations of a forward pass) and scale the
    rest by 1 / (1 - p)."""
    p = 0.25
    model = ResT(arch=TINY_ARCH, drop_rate=p).train()
    blocks = [
        f'stage{s}.{j}' for s in range(1, 5)
        for j in range(TINY_ARCH['depths'][s - 1])
    ]
    expected = {f'{b}.attn.proj_drop' for b in blocks} | \
        {f'{b}.mlp.drop' for b in blocks}
    dropouts = _dropout_modules(model)
    assert {n for n, m in dropouts.items() if m.p > 0} == expected
    assert all(dropouts[n].p == p for n in expected)

    calls = []
    for name in expected:
        dropouts[name].register_forward_hook(
            lambda m, args, out, name=name: calls.append(
                (name, args[0].detach(), out.detach())))
    x = torch.randn(2, 3, 64, 96)
    model(x)
    # proj_drop once per block; the MLP's dropout twice: on the hidden
    # activation (mlp_ratio x wider), then on fc2's output
    for block, width, ratio in zip(blocks, TINY_ARCH['embed_dims'],
                                   TINY_ARCH['mlp_ratios']):
        widths = [c[1].shape[-1] for c in calls if c[0].startswith(block)]
        names = [c[0] for c in calls if c[0].startswith(block)]
        assert names == [
            f'{block}.attn.proj_drop', f'{block}.mlp.drop', f'{block}.mlp.drop'
        ], names
        assert widths == [width, width * ratio, width], widths
    dropped = kept = 0
    for name, inp, out in calls:
        live = inp != 0
        zero = (out == 0) & live
        dropped += zero.sum().item()
        kept += (live & ~zero).sum().item()
        torch.testing.assert_close(
            out[live & ~zero], inp[live & ~zero] / (1 - p), rtol=1e-6, atol=0)
    n = dropped + kept
    assert n > 20000
    assert abs(dropped / n - p) < _binomial_tolerance(p, n), dropped / n


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('num_heads', [1, 4])
def test_attention_dropout_without_transform_keeps_its_rate(dtype, num_heads):
    """The attention without the head mixing (one head, or
    ``apply_transform=False``) drops a share ``p`` of the softmax
    attention's entries and scales the rest by 1 / (1 - p). With the
    identity as values the output is the attention map itself, read off
    against the float64 softmax."""
    p = 0.3
    B, N, M = 2, 48, 40
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(B, num_heads, N, M, generator=gen, dtype=dtype) / 4
    k = torch.randn(B, num_heads, M, M, generator=gen, dtype=dtype)
    v = torch.eye(M, dtype=dtype).expand(B, num_heads, M, M)
    expected = (q.double() @ k.double().transpose(-2, -1)).softmax(-1)
    out = emsa_attention(q, k, v, attn_drop=p, training=True).double()
    dropped = out == 0
    assert not (expected == 0).any()
    share = dropped.double().mean().item()
    assert abs(share - p) < _binomial_tolerance(p, out.numel()), share
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(
        out[~dropped], expected[~dropped] / (1 - p), rtol=tol, atol=0)
    # no dropout out of training, or at rate 0
    for kwargs in (dict(attn_drop=p,
                        training=False), dict(attn_drop=0., training=True)):
        torch.testing.assert_close(
            emsa_attention(q, k, v, **kwargs).double(),
            expected,
            rtol=tol,
            atol=tol * expected.abs().max().item())


def test_attn_drop_rate_reaches_every_attention(monkeypatch):
    """Each EMSA hands ``attn_drop_rate`` to the attention kernel in
    training (and training=False in eval mode), whatever its heads and
    transform; ``drop_rate`` stays 0 then."""
    p = 0.2
    for arch in (TINY_ARCH, {**TINY_ARCH, 'apply_transform': False}):
        model = ResT(arch=arch, attn_drop_rate=p)
        assert all(m.p == 0 for m in _dropout_modules(model).values())
        counter = CallCounter(
            monkeypatch, kernels, 'emsa_attention', record=True)
        model.train()(torch.randn(1, 3, 64, 64))
        blocks = sum(arch['depths'])
        assert counter.count == blocks
        for args, kwargs in counter.calls:
            assert args[5:7] == (p, True), args[5:]
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, 64, 64))
        # stage 1 (one head) folds its projections in inference
        assert counter.count == 2 * blocks - 1
        for args, kwargs in counter.calls[blocks:]:
            assert args[6] is False
        monkeypatch.undo()


def test_dropout_rates_in_train_and_eval_mode():
    """With a fixed seed, training outputs depend on each rate (and repeat
    with the seed); in eval mode the rates change nothing; at rate 0 the
    training output draws no random numbers."""
    x = torch.randn(2, 3, 64, 96)
    base = ResT(arch=TINY_ARCH, norm_eval=True)
    models = {
        'none': base,
        'drop': ResT(arch=TINY_ARCH, norm_eval=True, drop_rate=0.3),
        'attn': ResT(arch=TINY_ARCH, norm_eval=True, attn_drop_rate=0.3),
    }
    for m in models.values():
        m.load_state_dict(base.state_dict())

    def run(model, seed, train=True):
        torch.manual_seed(seed)
        model.train(train)
        with torch.no_grad():
            return model(x)

    def same(a, b):
        return all(torch.equal(u, v) for u, v in zip(a, b))

    plain = run(base, 0)
    assert same(plain, run(base, 1))  # rate 0: nothing random
    for name in ('drop', 'attn'):
        out = run(models[name], 0)
        assert same(out, run(models[name], 0)), name  # the seed repeats
        assert not same(out, run(models[name], 1)), name
        assert not same(out, plain), name
        assert same(
            run(models[name], 0, train=False), run(base, 1, train=False)), name


# ------------------------------------------------- with_cp and compile
@pytest.mark.parametrize('family', ['v1', 'v2'])
def test_with_cp_under_compile_matches_float64(family, golden, golden_v2,
                                               monkeypatch):
    """A compiled (``aot_eager``) training step with gradient
    checkpointing: outputs and every parameter's gradient within the bound
    of the literal float32 ones, against the float64 literal model; the
    blocks did go through the checkpoint."""
    if family == 'v1':
        model = golden_model(golden, with_cp=True).train()
    else:
        model = golden_model_v2(golden_v2, with_cp=True).train()
    literal = to_literal(model)
    reference = float64_literal(model)
    counter = CallCounter(monkeypatch, kernels, 'checkpoint')
    compiled = torch.compile(model, backend='aot_eager', dynamic=False)
    x = torch.randn(2, 3, 64, 96)
    results = []
    for m, inp in ((compiled, x), (literal, x), (reference, x.double())):
        outs = m(inp)
        gen = torch.Generator().manual_seed(2)
        sum((o * torch.randn(o.shape, generator=gen).to(o.dtype)).sum()
            for o in outs).backward()
        results.append([o.detach() for o in outs])
    blocks = sum(model.arch_settings['depths'])
    assert counter.count >= 2 * blocks  # compiled and literal forwards
    depths = stage_depths(model)
    for i, (a, b, c, depth) in enumerate(zip(*results, depths)):
        assert_float32_close(a, b, c, depth=depth, name=f'stage {i + 1}')
    assert_gradients_close(model, literal, reference, depth=sum(depths))


@pytest.mark.parametrize('cls', [ResT, ResTV2])
def test_with_cp_under_compile_behind_a_frozen_stem(cls):
    """Compiled with gradient checkpointing behind a frozen stem, whose
    output needs no gradient: every trainable parameter, the first
    stage's blocks included, gets the gradient of the eager model without
    checkpointing (float64). (Reentrant checkpointing gives the first
    blocks none under torch 2.1's ``torch.compile``.)"""
    arch = TINY_V1 if cls is ResT else TINY_V2
    torch.manual_seed(0)
    models = [cls(arch, with_cp=cp, frozen_stages=0) for cp in (False, True)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    compiled = torch.compile(models[1], backend='aot_eager', dynamic=False)
    grads = []
    for model, run in zip(models, (models[0], compiled)):
        model.double().train()
        sum((o * o.detach().sign()).sum() for o in run(x)).backward()
        grads.append({
            n: p.grad
            for n, p in model.named_parameters() if p.requires_grad
        })
    assert any(n.startswith('stage1.') for n in grads[0])
    missing = [n for n in grads[0] if grads[1][n] is None]
    assert not missing, missing
    # all gradients as one vector: a conv bias before a BatchNorm has a
    # zero gradient up to rounding, with no relative error of its own
    got, want = (torch.cat([g[n].flatten() for n in grads[0]]) for g in grads)
    assert relative_error(got, want) <= 1e-12


@pytest.mark.parametrize('cls,arch', [(ResT, 'large'), (ResTV2, 'large')])
def test_builds_on_the_meta_device(cls, arch):
    """Built under ``torch.device('meta')`` (to count parameters or for a
    sharded initialisation): the CPU model's parameter and buffer names
    and shapes, and its drop-path rates, with no data allocated."""
    with torch.device('meta'):
        meta = cls(arch=arch, drop_path_rate=0.3)
    cpu = cls(arch=arch, drop_path_rate=0.3)
    assert {k: v.shape for k, v in meta.state_dict().items()} == \
        {k: v.shape for k, v in cpu.state_dict().items()}
    assert {t.device.type for t in meta.state_dict().values()} == {'meta'}

    def rates(model):
        return [
            getattr(m.drop_path, 'drop_prob', 0.) for m in model.modules()
            if hasattr(m, 'drop_path')
        ]

    assert rates(meta) == rates(cpu) and max(rates(cpu)) == \
        pytest.approx(0.3)
