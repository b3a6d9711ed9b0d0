"""The other formulations of EMSA's multi-head core (kernels.use_emsa_core,
candidates for CUDA that the prepared GPU check times): each against the
literal computation of docs/network.md (N x M maps, the 1x1 conv over heads
with its bias, softmax, InstanceNorm, ``@ v``), outputs and gradients, in
float64 to 1e-8 and in float32 against the float64 result as accurately as
the literal float32 computation."""
import math
import types

import pytest
import torch
from _helpers import (GRADIENT_FACTOR, CallCounter, assert_float32_close,
                      assert_float64_equal, literal_attention, relative_error)
from test_emsa import HW, make_pair

from mmrest.backbones import emsa_triton, kernels, mixed_heads

# (B, h, N, M, d): h in {2, 4, 8}, N != M both ways, odd sizes, M = 2
SHAPES = [(2, 2, 13, 7, 5), (1, 4, 31, 9, 3), (3, 8, 11, 17, 4),
          (1, 2, 6, 2, 2)]
CORES = ('sdpa', 'sdpa_padded', 'sdpa_lse_kernel', 'triton', 'literal', 'maps')


def _inputs(shape, dtype, seed=0, q_scale=1.0):
    B, h, N, M, d = shape
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(B, h, n, d, generator=gen, dtype=dtype) for n in (N, M, M))
    k = k + 3.0  # keys far from centred: a shift the softmax cannot see
    mix = torch.randn(h, h, generator=gen, dtype=dtype)
    bias = torch.randn(h, generator=gen, dtype=dtype)
    return [q * q_scale, k, v, mix, bias]


def _core(name, chunk_elements=None):
    """The core ``name`` as a function of (q, k, v, mix, bias)."""
    if name == 'literal':
        return lambda q, k, v, w, b: kernels.literal_attention_core(
            q, k, v, w, b)
    if name == 'maps':
        return lambda q, k, v, w, b: kernels.maps_attention_core(q, k, v, w, b)
    if name == 'triton':  # tiles of 16 rows: several blocks of N and M
        return lambda q, k, v, w, b: emsa_triton.attention_core(
            q, k, v, w, b, block=16 if chunk_elements else None)
    return lambda q, k, v, w, b: kernels.mixed_query_attention(
        q,
        k,
        v,
        w,
        b,
        pad_values=name == 'sdpa_padded',
        lse_source='kernel' if name == 'sdpa_lse_kernel' else 'chunks',
        chunk_elements=chunk_elements)


def _refused_here(core) -> bool:
    """``'sdpa_lse_kernel'`` on a torch without the CPU flash attention
    kernel (torch 2.1), ``'triton'`` without triton 3 (the oldest stack's
    torch 2.1 brings triton 2.1): it refuses, naming what is missing (and
    the test asking for it ends there)."""
    if core == 'sdpa_lse_kernel' and \
            not kernels.cpu_flash_attention_available():
        error, match = NotImplementedError, 'no CPU flash attention'
    elif core == 'triton' and not emsa_triton.available():
        error, match = ImportError, 'triton >= 3'
    else:
        return False
    inputs = _inputs(SHAPES[0], torch.float32)
    with pytest.raises(error, match=match):
        _core(core)(*inputs)
    return True


def _run(fn, inputs, weight):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(), inputs)
    return out.detach(), grads


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('core', CORES)
@pytest.mark.parametrize('chunks', ['one', 'many'])
def test_core_matches_literal_in_float64(core, shape, chunks):
    """Output and the gradients of q, k, v, the mixing weight and bias:
    equal to the literal computation to 1e-8 in float64; the bias's
    gradient is an exact zero (the literal one is zero up to rounding)."""
    if chunks == 'many' and core in ('literal', 'maps'):
        pytest.skip(f'the {core} core has no chunks')
    if _refused_here(core):
        return
    B, h, N, M, d = shape
    rows = 3  # several query chunks of the log-sum-exps, the last shorter
    inputs = _inputs(shape, torch.float64)
    want = literal_attention(*inputs)
    weight = torch.randn(
        want.shape,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _run(literal_attention, inputs, weight)
    out, grads = _run(
        _core(core, rows * B * h * M if chunks == 'many' else None), inputs,
        weight)
    assert out.dtype == torch.float64 and out.shape == (B, h, N, d)
    assert_float64_equal(out, ref_out, 'output')
    for name, g, r in zip(('q', 'k', 'v', 'mix'), grads, ref_grads):
        assert_float64_equal(g, r, f'grad {name}')
    total = torch.cat([g.flatten() for g in ref_grads[:4]]).norm()
    assert ref_grads[4].norm() < 1e-12 * total  # rounding noise
    assert grads[4].norm() < 1e-12 * total


@pytest.mark.parametrize('shape', [(2, 4, 64, 49, 8), (1, 8, 50, 17, 4)])
@pytest.mark.parametrize('q_scale', [1.0, 0.02])
@pytest.mark.parametrize('core', ('sdpa', 'sdpa_lse_kernel', 'triton', 'maps'))
def test_core_float32_as_accurate_as_literal(core, shape, q_scale):
    """Float32: against the float64 literal result, as accurate as the
    literal float32 computation (the tests' criterion, _helpers), also
    for almost uniform attention (small queries), where the variance from
    log-sum-exps is a small difference."""
    if _refused_here(core):
        return
    inputs = _inputs(shape, torch.float64, seed=2, q_scale=q_scale)
    weight = torch.randn(
        shape[:3] + shape[4:],
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(3))
    ref_out, ref_grads = _run(literal_attention, inputs, weight)
    in32 = [t.float() for t in inputs]
    lit_out, lit_grads = _run(literal_attention, in32, weight)
    out, grads = _run(_core(core), in32, weight)
    assert out.dtype == torch.float32
    assert_float32_close(out, lit_out, ref_out, name='output')
    for name, g, lg, r in zip(('q', 'k', 'v', 'mix'), grads, lit_grads,
                              ref_grads):
        assert_float32_close(
            g, lg, r, name=f'grad {name}', factor=GRADIENT_FACTOR)


@pytest.mark.parametrize('core', CORES)
def test_one_key_gives_zeros(core):
    """With one key (M = 1) every softmax is 1 and the InstanceNorm of a
    constant map is 0: the output and every gradient are zero, finite."""
    if _refused_here(core):
        return
    inputs = _inputs((2, 4, 5, 1, 3), torch.float64)
    weight = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    ref_out, ref_grads = _run(literal_attention, inputs, weight)
    out, grads = _run(_core(core), inputs, weight)
    assert ref_out.abs().max() == 0
    assert out.abs().max() == 0
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().max() < 1e-12


def test_row_lse_gap_gradcheck():
    """RowLseGap = log sum_m softmax(q k^T)^2 per row: its value from
    torch.logsumexp, its backward by finite differences (float64), with
    per-head keys and with one set of keys shared by all heads."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    for k in (torch.randn(2, 3, 7, 4, generator=gen, dtype=torch.float64),
              torch.randn(2, 1, 7, 4, generator=gen, dtype=torch.float64)):
        logits = q @ k.transpose(-2, -1)
        want = torch.log(logits.softmax(-1).square().sum(-1))
        for source in ('chunks', 'kernel'):
            if source == 'kernel' and _refused_here('sdpa_lse_kernel'):
                continue
            got = kernels.RowLseGap.apply(q, k, 2, source)
            assert_float64_equal(got, want, source)
        assert torch.autograd.gradcheck(
            lambda a, b: kernels.RowLseGap.apply(a, b, 2, 'chunks'),
            (q.clone().requires_grad_(), k.clone().requires_grad_()))


@pytest.mark.parametrize('core, source, width',
                         [('sdpa', '_row_lse_chunks', 8),
                          ('sdpa_padded', '_row_lse_chunks', 16),
                          ('sdpa_lse_kernel', '_row_lse_kernel', 8)])
def test_sdpa_cores_differ_where_their_names_say(monkeypatch, core, source,
                                                 width):
    """What distinguishes the 'sdpa' cores (their results are the same, so
    only the calls can tell): 'sdpa_lse_kernel' takes the row log-sum-exps
    from the fused kernel, the others by chunks; 'sdpa_padded' gives the
    attention kernel values of all C = h d channels (zero-padded), the
    others of d."""
    if _refused_here(core):
        pytest.skip(f'{core} is refused here')
    from _helpers import CallCounter
    calls = {
        name: CallCounter(monkeypatch, kernels, name)
        for name in ('_row_lse_chunks', '_row_lse_kernel')
    }
    attention = CallCounter(
        monkeypatch, kernels.F, 'scaled_dot_product_attention', record=True)
    gen = torch.Generator().manual_seed(6)
    q, k, v = (
        torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float64)
        for n in (6, 4, 4))
    mix = torch.randn(2, 2, generator=gen, dtype=torch.float64)
    with kernels.use_emsa_core(core):
        kernels.emsa_attention(q, k, v, mix.requires_grad_(), None)
    assert {
        n: c.count
        for n, c in calls.items()
    } == {
        n: int(n == source)
        for n in calls
    }
    widths = [args[2].shape[-1] for args, _ in attention.calls]
    assert widths[:1] == [width], widths


def test_mixed_query_attention_under_autocast():
    """Under bfloat16 autocast (CPU): the attention in bfloat16, the result
    in the queries' dtype, as close to the float64 result as the literal
    computation under the same autocast (the autocast criterion of
    docs/precision_and_export.md)."""
    shape = (2, 4, 40, 25, 8)
    inputs = _inputs(shape, torch.float64, seed=5)
    ref = literal_attention(*inputs)
    in32 = [t.float() for t in inputs]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        lit = kernels.literal_attention_core(*in32)
        out = kernels.mixed_query_attention(
            *[t.bfloat16() if i < 3 else t for i, t in enumerate(in32)])
    assert out.dtype == torch.bfloat16
    err_fast, err_lit = (relative_error(o, ref) for o in (out, lit))
    assert err_fast <= 1.5 * err_lit + 1e-3, (err_fast, err_lit)


@pytest.mark.parametrize('grad', [False, True])
def test_mixed_heads_inputs_in_float64(grad):
    """The mixed-query form's inputs that both cores share
    (mmrest/backbones/mixed_heads.py), against their definitions in float64,
    with autograd recording and without: ``Q_g = concat_j(W[g, j] q_j)``
    (an einsum; gradients by gradcheck), keys and values minus their mean
    over M, contiguous, the keys' heads side by side."""
    B, h, N, M, d = 2, 3, 5, 7, 4
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, N, h, d, generator=gen, dtype=torch.float64)
    q = q.transpose(1, 2).requires_grad_(grad)  # the projection's layout
    mix = torch.randn(h, h, generator=gen, dtype=torch.float64)
    mix.requires_grad_(grad)
    k = torch.randn(B, M, h, d, generator=gen, dtype=torch.float64) + 3
    k = k.transpose(1, 2).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        got = mixed_heads.mixed_queries(q, mix)
        keys = mixed_heads.centred(k, torch.float64, heads_last=True)
        values = mixed_heads.centred(k, torch.float64)
    want = torch.einsum('gj,bjnd->bgnjd', mix, q).reshape(B, h, N, h * d)
    assert_float64_equal(got, want, 'mixed queries')
    centred = k - k.mean(2, keepdim=True)
    assert_float64_equal(values, centred, 'centred values')
    assert values.is_contiguous() and keys.is_contiguous()
    assert_float64_equal(keys,
                         centred.transpose(1, 2).reshape(B, M, h * d),
                         'centred keys, heads side by side')
    assert got.requires_grad == keys.requires_grad == grad
    if grad:
        assert torch.autograd.gradcheck(mixed_heads.mixed_queries, (q, mix))
        assert torch.autograd.gradcheck(
            lambda k: mixed_heads.centred(k, torch.float64, True), (k, ))
    with pytest.raises(ValueError, match=r'mix must be \(3, 3\).*\(2, 2\)'):
        mixed_heads.mixed_queries(q, mix[:2, :2])


@pytest.mark.parametrize('grad', [False, True])
def test_maps_core_without_and_with_autograd(grad):
    """The 'maps' core in both of its ways (in place without autograd, out
    of place with it): in float64 the literal result to 1e-8; under
    bfloat16 autocast (CPU) the output in bfloat16 and as close to the
    float64 result as the literal core under the same autocast (the
    autocast criterion of docs/precision_and_export.md)."""
    shape = (2, 4, 40, 25, 8)
    inputs = _inputs(shape, torch.float64, seed=6)
    ref = literal_attention(*inputs)
    with torch.set_grad_enabled(grad):
        inputs = [t.clone().requires_grad_(grad) for t in inputs]
        assert_float64_equal(
            kernels.maps_attention_core(*inputs), ref, 'float64 output')
        in32 = [t.float() for t in inputs]
        with torch.autocast('cpu', dtype=torch.bfloat16):
            lit = kernels.literal_attention_core(*in32)
            out = kernels.maps_attention_core(
                *[t.bfloat16() if i < 3 else t for i, t in enumerate(in32)])
    assert out.dtype == torch.bfloat16
    assert out.requires_grad == grad
    err_maps, err_lit = (relative_error(o, ref) for o in (out, lit))
    assert err_maps <= 1.5 * err_lit + 1e-3, (err_maps, err_lit)


def test_use_emsa_core_dispatch(monkeypatch):
    """The default is 'chunked' and stays so outside the block; the block
    routes emsa_attention's multi-head core, except for attention dropout
    in training; each device type has a default for calls with autograd and
    one for calls without, and so has a block; an unknown name is an error
    naming the choices."""
    assert kernels.emsa_core() == 'chunked'
    calls = []
    real = kernels.mixed_query_attention
    monkeypatch.setattr(kernels, 'mixed_query_attention',
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, k, v, mix, bias = _inputs((1, 2, 6, 5, 3), torch.float32)
    with kernels.use_emsa_core('sdpa_padded'):
        assert kernels.emsa_core() == 'sdpa_padded'
        kernels.emsa_attention(q, k, v, mix, bias)
        kernels.emsa_attention(
            q, k, v, mix, bias, attn_drop=0.5, training=True)
        kernels.emsa_attention(q, k, v)  # one head: plain softmax
        assert len(calls) == 1
        # training without attention dropout: the selected core
        kernels.emsa_attention(q, k, v, mix, bias, attn_drop=0., training=True)
    assert kernels.emsa_core() == 'chunked'
    assert len(calls) == 2 and calls[0]['pad_values'] is True
    calls.pop()
    with pytest.raises(ValueError, match="unknown EMSA core 'flash'.*sdpa"):
        with kernels.use_emsa_core('flash'):
            pass
    # each device type's defaults, outside a block: 'chunked' on the CPU,
    # with and without autograd; on CUDA 'triton' with autograd (where it
    # runs: triton >= 3, compute capability >= 8.0, float16 / bfloat16
    # queries; else 'chunked') and 'chunked' for inference; another
    # default routes the core without a block, a block overrides it, and a
    # type not named runs 'chunked'
    assert kernels.DEFAULT_EMSA_CORES == dict(
        cpu=dict(autograd='chunked', inference='chunked'),
        cuda=dict(autograd='triton', inference='chunked'))
    for autograd in (True, False):
        assert kernels.emsa_core('cpu', autograd) == 'chunked'
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, 'is_available', lambda: True)
        for found, capability, want in ((True, (9, 0),
                                         'triton'), (True, (8, 0), 'triton'),
                                        (True, (7, 5), 'chunked'),
                                        (False, (9, 0), 'chunked')):
            m.setattr(emsa_triton, 'available', lambda f=found: f)
            m.setattr(
                torch.cuda,
                'get_device_capability',
                lambda device=None, c=capability: c)
            assert kernels.emsa_core('cuda') == want, (found, capability)
            assert kernels.emsa_core('cuda', autograd=False) == 'chunked'
            # the autocast dtypes only: float32 (and wider) keeps 'chunked'
            for dtype in (torch.float16, torch.bfloat16):
                assert kernels.emsa_core('cuda', dtype=dtype) == want
            for dtype in (torch.float32, torch.float64):
                assert kernels.emsa_core('cuda', dtype=dtype) == 'chunked'
        # Blackwell (10.x, 12.x) with a Triton before 3.3, whose compiler
        # aborts there: 'chunked'
        m.setattr(emsa_triton, 'available', lambda: True)
        for capability in ((10, 0), (12, 0)):
            m.setattr(
                torch.cuda,
                'get_device_capability',
                lambda device=None, c=capability: c)
            for version, want in (((3, 2), 'chunked'), ((3, 3), 'triton')):
                m.setattr(emsa_triton, 'triton_version', lambda v=version: v)
                assert kernels.emsa_core(
                    'cuda', dtype=torch.float16) == want, (capability, version)
        # ROCm's torch calls AMD GPUs 'cuda' (MI300X: version 9.4, not a
        # compute capability): 'chunked'
        m.setattr(emsa_triton, 'available', lambda: True)
        m.setattr(torch.version, 'hip', '6.2.41133')
        m.setattr(
            torch.cuda, 'get_device_capability', lambda device=None: (9, 4))
        assert kernels.emsa_core('cuda', dtype=torch.float16) == 'chunked'
        gpu = types.SimpleNamespace(device=torch.device('cuda', 0))
        assert emsa_triton.capability(gpu) is None  # the defaults' tiles
        m.setattr(torch.version, 'hip', None)
        assert emsa_triton.capability(gpu) == (9, 4)
        assert kernels.emsa_core('cuda', dtype=torch.float16) == 'triton'
    if not torch.cuda.is_available():  # no GPU to ask: 'chunked'
        assert kernels.emsa_core('cuda') == 'chunked'
    monkeypatch.setitem(kernels.DEFAULT_EMSA_CORES, 'cpu',
                        dict(autograd='chunked', inference='sdpa'))
    assert kernels.emsa_core(q.device, autograd=False) == 'sdpa'
    assert kernels.emsa_core() == kernels.emsa_core(q.device) == 'chunked'
    kernels.emsa_attention(q, k, v, mix, bias)  # no input needs a gradient
    assert len(calls) == 2 and calls[1]['pad_values'] is False
    with torch.no_grad():
        kernels.emsa_attention(q.requires_grad_(), k, v, mix, bias)
    assert len(calls) == 3
    kernels.emsa_attention(q, k, v, mix, bias)  # autograd: the 'chunked'
    assert len(calls) == 3
    q.requires_grad_(False)
    with kernels.use_emsa_core('chunked'):
        kernels.emsa_attention(q, k, v, mix, bias)
    assert len(calls) == 3
    # a block with a core for each mode
    with kernels.use_emsa_core('sdpa', inference='chunked'):
        assert kernels.emsa_core(autograd=False) == 'chunked'
        kernels.emsa_attention(q, k, v, mix, bias)
        assert len(calls) == 3
        kernels.emsa_attention(q, k, v, mix.requires_grad_(), bias)
        assert len(calls) == 4 and calls[3]['pad_values'] is False
    mix.requires_grad_(False)
    with pytest.raises(ValueError, match="unknown EMSA core 'flash'"):
        with kernels.use_emsa_core('sdpa', inference='flash'):
            pass
    assert kernels.emsa_core('xpu') == 'chunked'
    # a 'triton' default where triton cannot run gives way to 'chunked'
    monkeypatch.setitem(kernels.DEFAULT_EMSA_CORES, 'cpu',
                        dict(autograd='triton', inference='triton'))
    # (on the CPU it runs in Triton's interpreter only, as in these tests)
    assert kernels.emsa_core() == ('triton'
                                   if emsa_triton.interpreted() else 'chunked')
    # heads wider than the Triton kernels take: the default gives way to
    # 'chunked' (the same result); selected explicitly, the core refuses
    if emsa_triton.interpreted():
        assert kernels.emsa_core(widths=(1040, 520)) == 'chunked'
        assert kernels.emsa_core(widths=(768, 96)) == 'triton'
        gen = torch.Generator().manual_seed(3)
        wide = [
            torch.randn(1, 2, n, 520, generator=gen, dtype=torch.float64)
            for n in (5, 3, 3)
        ]
        wide_mix = torch.randn(2, 2, generator=gen, dtype=torch.float64)
        out = kernels.emsa_attention(*wide, wide_mix, None)
        assert torch.allclose(
            out, literal_attention(*wide, wide_mix,
                                   torch.zeros(2).double()))
        with kernels.use_emsa_core('triton'), \
                pytest.raises(ValueError, match='at most 1024'):
            kernels.emsa_attention(*wide, wide_mix, None)
    monkeypatch.setattr(emsa_triton, 'available', lambda: False)
    assert kernels.emsa_core() == 'chunked'
    assert kernels.emsa_core(autograd=False) == 'chunked'
    # emsa_attention asks with its queries' dtype (and widths)
    asked = CallCounter(monkeypatch, kernels, 'emsa_core', record=True)
    kernels.emsa_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mix, bias)
    (device, autograd), kw = asked.calls[0]
    assert kw == dict(widths=(6, 3), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match='lse_source'):
        kernels.mixed_query_attention(q, k, v, mix, bias, lse_source='gpu')


def test_one_head_attention_dropout_only_in_training():
    """One head (plain softmax attention): attention dropout acts in
    training only; otherwise the output is softmax(q k^T) v in float64."""
    q, k, v, _, _ = _inputs((2, 1, 40, 30, 4), torch.float64)
    exact = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    out = kernels.emsa_attention(q, k, v, attn_drop=0.5, training=False)
    assert_float64_equal(out, exact, 'eval')
    torch.manual_seed(0)
    out = kernels.emsa_attention(q, k, v, attn_drop=0.5, training=True)
    assert relative_error(out, exact) > 0.1  # half the weights dropped


def test_checkpoint_recomputes_with_the_forwards_core(monkeypatch):
    """with_cp: a block recomputed in the backward pass uses the EMSA core
    of its forward pass, also when the backward runs outside the
    use_emsa_core block; the gradients are the literal model's in
    float64."""
    from _helpers import CallCounter, float64_literal

    from mmrest import ResT
    model = ResT(arch='lite', with_cp=True, drop_path_rate=0.).double()
    exact = float64_literal(model).train()
    model.train()
    multi_head = sum(d for d, h in zip(model.arch_settings['depths'],
                                       model.arch_settings['num_heads'])
                     if h > 1)
    calls = CallCounter(monkeypatch, kernels, 'mixed_query_attention')
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    with kernels.use_emsa_core('sdpa'):
        outs = model(x)
    assert calls.count == multi_head
    sum(o.square().sum() for o in outs).backward()
    assert calls.count == 2 * multi_head  # recomputed with 'sdpa'
    sum(o.square().sum() for o in exact(x)).backward()
    total = torch.stack([p.grad.norm() for p in exact.parameters()]).norm()
    for (name, p), ref in zip(model.named_parameters(), exact.parameters()):
        if ref.grad.norm() < 1e-12 * total:  # zero: biases before a norm
            assert p.grad.norm() < 1e-12 * total, name
        else:
            assert_float64_equal(p.grad, ref.grad, name)


@pytest.mark.parametrize('core', CORES + ('literal_compiled', ))
@pytest.mark.parametrize('embed_dims,num_heads,sr_ratio', [(32, 2, 4),
                                                           (64, 8, 1)])
def test_emsa_module_with_core(core, embed_dims, num_heads, sr_ratio,
                               monkeypatch):
    """The EMSA module with each core, train mode with autograd: outputs
    and all parameters' gradients equal the literal module's in float64
    (the compiled core through torch.compile's 'aot_eager' backend on the
    CPU: the same graph capture, without a C++ compiler)."""
    if _refused_here(core):
        return
    monkeypatch.setattr(kernels, 'LITERAL_COMPILE_BACKEND', 'aot_eager')
    fast, literal = make_pair(embed_dims, num_heads, sr_ratio)
    fast, literal = fast.double().train(), literal.double().train()
    x = torch.randn(2, HW[0] * HW[1], embed_dims, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with kernels.use_emsa_core(core):
        out_a = fast(xa, HW)
    out_b = literal(xb, HW)
    assert_float64_equal(out_a, out_b, 'output')
    g = torch.randn_like(out_a)
    (out_a * g).sum().backward()
    (out_b * g).sum().backward()
    assert_float64_equal(xa.grad, xb.grad, 'input grad')
    total = torch.stack([p.grad.norm() for p in literal.parameters()]).norm()
    for (name, pa), pb in zip(fast.named_parameters(), literal.parameters()):
        if pb.grad.norm() < 1e-12 * total:  # exact zero (biases that cancel)
            assert pa.grad is None or pa.grad.norm() < 1e-12 * total, name
        else:
            assert_float64_equal(pa.grad, pb.grad, name)


def test_variance_identity():
    """The identity the 'sdpa' cores rest on, by itself: for one softmax
    row, sum_m P^2 = exp(LSE(2 l) - 2 LSE(l)), and the InstanceNorm's
    biased variance over N rows is sum_n expm1(gap_n + log M) / (N M^2)."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(7, 11, generator=gen, dtype=torch.float64) * 2
    p = logits.softmax(-1)
    gap = torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1)
    assert_float64_equal(torch.exp(gap), p.square().sum(-1))
    var = torch.expm1(gap + math.log(11)).sum() / (7 * 11**2)
    assert_float64_equal(var, p.var(unbiased=False))
