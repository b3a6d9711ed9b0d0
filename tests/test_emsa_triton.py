"""The fused Triton kernels of the 'triton' EMSA core
(mmrest/backbones/emsa_triton.py), run on the CPU in Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before they are defined): their
two outputs, the centred attention ``(P - 1/M) V`` and each row's centred
second moment ``sum_m (P - 1/M)^2``, and the gradients of queries, keys and
values,
against the same formulas written out in float64 with N x M maps. The whole
core against the literal computation is in test_emsa_cores.py."""
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from _helpers import (GRADIENT_FACTOR, MATRIX_PRODUCTS, CallCounter,
                      GridRecorder, LoadedKernel, OpsRecorded,
                      SavedForBackward, assert_float32_close,
                      assert_float64_equal, literal_attention, relative_error)

from mmrest.backbones import emsa_triton, kernels
from mmrest.backbones.mixed_heads import mixed_queries
from mmrest_tools.op_census import KERNELS, Census, paused_triton_launches

pytestmark = pytest.mark.skipif(
    not emsa_triton.available(),
    reason='needs triton >= 3 (test_emsa_cores checks the refusal)')


def moments_written_out(q, keys, values):
    """The kernels' formulas with N x M maps: softmax of ``q keys^T`` by
    rows, ``(P - 1/M) @ values`` and ``sum_m (P - 1/M)^2``."""
    p = (q @ keys[:, None].transpose(-2, -1)).softmax(-1)
    centred = p - 1 / keys.shape[1]
    return centred @ values, centred.square().sum(-1)


def _inputs(B, H, N, M, C, D, dtype, seed=0, q_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, C, generator=gen, dtype=torch.float64)
    keys = torch.randn(B, M, C, generator=gen, dtype=torch.float64) + 2.0
    values = torch.randn(B, H, M, D, generator=gen, dtype=torch.float64)
    return [(q * q_scale).to(dtype), keys.to(dtype), values.to(dtype)]


def _run(fn, inputs, weights):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out, dev = fn(*inputs)
    loss = (out * weights[0].to(out.dtype)).sum() + \
        (dev * weights[1].to(dev.dtype)).sum()
    return (out.detach(), dev.detach()), torch.autograd.grad(loss, inputs)


def _weights(B, H, N, D):
    gen = torch.Generator().manual_seed(7)
    return (torch.randn(B, H, N, D, generator=gen, dtype=torch.float64),
            torch.randn(B, H, N, generator=gen, dtype=torch.float64) * 10)


# (B, H, N, M, C, D, block): one tile and several (16 rows: N and M over
# several blocks, the last one partial), C and D not powers of two, M = 1,
# one key block exactly full
CASES = [(2, 2, 13, 7, 10, 5, None), (1, 4, 37, 20, 12, 3, 16),
         (2, 3, 33, 17, 24, 8, 16), (1, 2, 5, 1, 6, 3, 16),
         (1, 1, 16, 16, 16, 16, 16)]


@pytest.mark.parametrize('case', CASES)
def test_kernels_match_the_formulas_in_float64(case):
    """Both outputs and the gradients of queries, keys (shared by the
    heads: summed over them) and values equal the written-out formulas to
    1e-8 in float64."""
    B, H, N, M, C, D, block = case
    inputs = _inputs(B, H, N, M, C, D, torch.float64)
    weights = _weights(B, H, N, D)
    (out, dev), grads = _run(
        lambda *t: emsa_triton.softmax_moments(*t, block=block), inputs,
        weights)
    (ref_out, ref_dev), ref_grads = _run(moments_written_out, inputs, weights)
    assert out.shape == (B, H, N, D) and dev.shape == (B, H, N)
    assert out.dtype == dev.dtype == torch.float64
    named = [('(P - 1/M) V', out, ref_out),
             ('centred second moment', dev, ref_dev)] + [
                 (f'grad {n}', g, r)
                 for n, g, r in zip(('q', 'keys', 'values'), grads, ref_grads)
             ]
    for name, got, want in named:
        if M == 1:
            # one key: P = 1 = 1/M, a constant; every output and gradient is
            # zero up to rounding (the kernel's dP - delta is a difference
            # of two roundings of dO . V)
            scale = weights[0].norm() * inputs[2].norm()
            assert want.abs().max() == 0, name
            assert got.abs().max() < 1e-12 * scale, name
        else:
            assert_float64_equal(got, want, name)


def test_kernels_mix_the_queries_themselves_in_float64():
    """With ``mix`` the kernels' call forms the mixed queries ``Q_g =
    concat_j(W[g, j] q_j)`` from per-head queries (again in its backward):
    both outputs and the gradients of q, W, keys and values equal the
    written-out formulas on explicitly mixed queries (autograd through the
    mixing) to 1e-8 in float64."""
    B, H, N, M, d, D = 2, 3, 21, 11, 4, 5
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(B, H, N, d, generator=gen, dtype=torch.float64)
    mix = torch.randn(H, H, generator=gen, dtype=torch.float64)
    keys = torch.randn(B, M, H * d, generator=gen, dtype=torch.float64) + 2
    values = torch.randn(B, H, M, D, generator=gen, dtype=torch.float64)
    inputs, weights = [q, keys, values, mix], _weights(B, H, N, D)
    (out, dev), grads = _run(
        lambda q, k, v, w: emsa_triton.softmax_moments(
            q, k, v, block=16, mix=w), inputs, weights)
    (ref_out, ref_dev), ref_grads = _run(
        lambda q, k, v, w: moments_written_out(mixed_queries(q, w), k, v),
        inputs, weights)
    assert_float64_equal(out, ref_out, '(P - 1/M) V')
    assert_float64_equal(dev, ref_dev, 'centred second moment')
    for name, g, r in zip(('q', 'keys', 'values', 'mix'), grads, ref_grads):
        assert g.shape == r.shape, name
        assert_float64_equal(g, r, f'grad {name}')
    with pytest.raises(
            ValueError, match=r'mix must be \(3, 3\).*got \(2, 2\)'):
        emsa_triton.softmax_moments(q, keys, values, mix=mix[:2, :2])


def test_mixing_gradient_runs_no_matrix_product():
    """The backward of the mixed queries (gradients of q and of W) runs no
    matrix product: as an einsum, W's gradient was a batched matrix-vector
    product reducing all B N d products into each (g, j) entry, which
    CUDA runs without parallelism along that reduction (see
    kernels.MixHeads). The whole backward of the call then runs only the
    fused kernels and elementwise operators; the queries' gradient comes
    back in the (B, N, h, d) layout of the projection that made q."""
    B, H, N, M, d, D = 2, 4, 40, 9, 8, 8
    gen = torch.Generator().manual_seed(13)
    q = torch.randn(B, N, H, d, generator=gen).transpose(1, 2)
    keys = torch.randn(B, M, H * d, generator=gen)
    values = torch.randn(B, H, M, D, generator=gen)
    mix = torch.randn(H, H, generator=gen)
    q, keys, values, mix = (t.requires_grad_() for t in (q, keys, values, mix))
    out, dev = emsa_triton.softmax_moments(q, keys, values, block=16, mix=mix)
    with OpsRecorded() as ops:
        out.sum().backward()
    products = [name for name in ops.names if name in MATRIX_PRODUCTS]
    assert not products, products
    assert q.grad.transpose(1, 2).is_contiguous()


def test_triton_core_is_one_autograd_node_of_few_operators():
    """The 'triton' core around its kernels, as a ResT block calls it
    (fp16 q, k, v in the projections' layouts): one autograd node, whose
    inputs are q, k, v, the mixing weight and its bias themselves, and
    few operators besides the kernels (on a GPU each one a launch, and the
    core's tensors are small: at a ResT-Small training step's stage 3 the
    kernels' work is milliseconds, each launch microseconds). At most 13
    in the forward and 24 in the backward (autograd's accumulation of the
    leaves' gradients included): when autograd recorded the operators
    around the kernels one by one, 25 and 42. (In a ResT-Small training
    step at 2x3x224x224 under fp16 autocast that was 1821 operators, now
    1511, against Swin-T's 1279: ``tools/op_census.py``,
    docs/benchmarks.md.)"""
    B, h, N, M, d = 2, 4, 40, 9, 8
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(B, n, h, d,
                    generator=gen).half().transpose(1, 2).requires_grad_()
        for n in (N, M, M))
    mix = torch.randn(h, h, generator=gen, requires_grad=True)
    bias = torch.randn(h, generator=gen, requires_grad=True)
    grad = torch.ones(B, N, h, d).half().transpose(1, 2)
    forward, backward = Census(), Census()
    with paused_triton_launches(forward, backward):
        with forward:
            out = emsa_triton.attention_core(q, k, v, mix, bias, block=16)
        with backward:
            out.backward(grad)
    assert [forward.count[k] for k in KERNELS] == [1, 0, 0]
    assert [backward.count[k] for k in KERNELS] == [0, 1, 1]
    inputs = [
        fn.variable for fn, _ in out.grad_fn.next_functions
        if hasattr(fn, 'variable')
    ]
    assert [id(t) for t in inputs] == [id(t) for t in (q, k, v, mix, bias)]
    around = [
        sum(census.count.values()) - sum(census.count[k] for k in KERNELS)
        for census in (forward, backward)
    ]
    assert around[0] <= 13, forward.count
    assert around[1] <= 24, backward.count
    # the output in the (B, N, h, d) layout of the output projection
    assert out.transpose(1, 2).is_contiguous()


def test_triton_core_keeps_less_for_the_backward_than_chunked():
    """Training-step memory: for the backward the 'triton' core keeps the
    per-head queries, not their h times larger mixed copy, and under fp16
    autocast at a ResT stage's proportions (h = 4 heads, M = N / 4 keys) it
    keeps fewer bytes than the default 'chunked' core (which keeps float32
    queries and output); no kept tensor has the mixed queries' shape."""
    B, h, N, M, d = 2, 4, 64, 16, 16
    gen = torch.Generator().manual_seed(12)
    q, k, v = (
        torch.randn(B, h, n, d, generator=gen).half().requires_grad_()
        for n in (N, M, M))
    mix = torch.randn(h, h, generator=gen, requires_grad=True)
    bias = torch.randn(h, generator=gen, requires_grad=True)
    kept = {}
    for core in ('chunked', 'triton'):
        with kernels.use_emsa_core(core), SavedForBackward() as saved, \
                torch.autocast('cpu', dtype=torch.float16):
            out = kernels.emsa_attention(q, k, v, mix, bias)
        out.float().sum().backward()  # the kept tensors serve a backward
        kept[core] = saved
    shapes = [tuple(t.shape) for t in kept['triton'].tensors]
    assert (B, h, N, h * d) not in shapes, shapes
    assert (B, h, N, d) in shapes  # the per-head queries
    assert kept['triton'].nbytes < kept['chunked'].nbytes, (
        kept['triton'].nbytes, kept['chunked'].nbytes)


@pytest.mark.parametrize('q_scale', [1.0, 0.01])
def test_kernels_float32_as_accurate_as_written_out(q_scale):
    """Float32 in, float32 accumulators: against the float64 result as
    accurate as the written-out float32 computation (the tests' criterion),
    also for almost uniform attention (small queries), where ``sum P^2 -
    1/M`` would lose its digits to cancellation; the kernel's running
    deviations keep them."""
    shape = (2, 2, 45, 33, 20, 10)
    inputs = _inputs(*shape, torch.float64, seed=3, q_scale=q_scale)
    weights = _weights(*shape[:3], shape[5])
    (ref_out, ref_dev), ref_grads = _run(moments_written_out, inputs, weights)
    in32 = [t.float() for t in inputs]
    (lit_out, lit_dev), lit_grads = _run(moments_written_out, in32, weights)
    (out,
     dev), grads = _run(lambda *t: emsa_triton.softmax_moments(*t, block=16),
                        in32, weights)
    assert out.dtype == dev.dtype == torch.float32
    assert_float32_close(out, lit_out, ref_out, name='(P - 1/M) V')
    assert_float32_close(dev, lit_dev, ref_dev, name='centred moment')
    for name, g, lg, r in zip(('q', 'keys', 'values'), grads, lit_grads,
                              ref_grads):
        assert_float32_close(
            g, lg, r, name=f'grad {name}', factor=GRADIENT_FACTOR)


def test_triton_core_in_float16():
    """The core with float16 queries, keys and values (the autocast dtype
    of an fp16 run; Triton's interpreter has no bfloat16): products in
    float16 accumulating in float32, the result in float16, as close to the
    float64 literal result as the literal computation under fp16 autocast
    (the autocast criterion, docs/precision_and_export.md)."""
    gen = torch.Generator().manual_seed(5)
    B, h, N, M, d = 2, 4, 40, 25, 8
    q, k, v = (
        torch.randn(B, h, n, d, generator=gen, dtype=torch.float64)
        for n in (N, M, M))
    mix = torch.randn(h, h, generator=gen, dtype=torch.float64)
    bias = torch.randn(h, generator=gen, dtype=torch.float64)
    ref = literal_attention(q, k, v, mix, bias)
    half = [t.half() for t in (q, k, v)] + [mix.float(), bias.float()]
    with torch.autocast('cpu', dtype=torch.float16):
        lit = kernels.literal_attention_core(*half)
    out = emsa_triton.attention_core(*half)
    assert out.dtype == torch.float16
    err_fast, err_lit = (relative_error(o, ref) for o in (out, lit))
    assert err_fast <= 1.5 * err_lit + 1e-3, (err_fast, err_lit)


@pytest.mark.parametrize('q_scale', [1.0, 5e-4])
def test_triton_core_in_float16_for_almost_uniform_attention(q_scale):
    """Float16 inputs, almost uniform attention (small queries: the spread
    of each softmax row, ``M std(P)``, about 2e-3 at the smaller scale, as
    in a ResT at its initialisation): the InstanceNorm divides the deviations
    ``P - 1/M`` by their small standard deviation, so the kernels round only
    those deviations (and the values' mean is taken out in float32), never
    ``P`` itself. The output and the gradients of q, k and v are then within
    4 float16 roundings (4 * 2**-11) of the float64 computation on the same
    float16 inputs; rounding ``P`` instead gave 0.32 (output) and 0.15
    (values' gradient) at the smaller scale."""
    gen = torch.Generator().manual_seed(5)
    B, h, N, M, d = 1, 4, 96, 64, 16
    q, k, v = (
        torch.randn(B, h, n, d, generator=gen, dtype=torch.float64)
        for n in (N, M, M))
    mix = torch.randn(h, h, generator=gen, dtype=torch.float64) * 0.5
    bias = torch.randn(h, generator=gen, dtype=torch.float64)
    weights = torch.randn(B, h, N, d, generator=gen, dtype=torch.float64)
    half = [(q * q_scale).half(), k.half(), (v + 3).half()]
    half += [mix.float(), bias.float()]

    def run(fn, args):
        args = [t.detach().clone().requires_grad_() for t in args]
        out = fn(*args)
        grads = torch.autograd.grad((out.double() * weights).sum(), args[:3])
        return [out.detach()] + list(grads)

    got = run(emsa_triton.attention_core, half)
    want = run(literal_attention, [t.double() for t in half])
    assert got[0].dtype == torch.float16
    for name, g, w in zip(('output', 'grad q', 'grad k', 'grad v'), got, want):
        assert relative_error(g, w) < 4 * 2**-11, name


def test_bad_inputs_are_refused():
    """Mismatched dtypes, shapes that do not fit, a tile that is not a
    power of two and (outside the interpreter) CPU tensors: each a clear
    error naming what was wrong."""
    q, keys, values = _inputs(1, 2, 5, 4, 6, 3, torch.float32)
    with pytest.raises(TypeError, match='share a dtype'):
        emsa_triton.softmax_moments(q, keys.double(), values)
    with pytest.raises(ValueError, match=r'keys \(1, 4, 7\)'):
        emsa_triton.softmax_moments(q, torch.zeros(1, 4, 7), values)
    with pytest.raises(ValueError, match='power of two >= 16, got 24'):
        emsa_triton.softmax_moments(q, keys, values, block=24)
    # wider than the checked kernels (1024 / 128 channels once padded)
    wide = _inputs(1, 1, 3, 2, 1025, 3, torch.float32)
    with pytest.raises(ValueError, match='at most 1024.*got 1025 and 3'):
        emsa_triton.softmax_moments(*wide)
    wide = _inputs(1, 1, 3, 2, 1024, 129, torch.float32)
    with pytest.raises(
            ValueError, match='128 value channels.*got 1024 and '
            '129'):
        emsa_triton.softmax_moments(*wide)
    assert emsa_triton.fits(1024, 128) and emsa_triton.fits(768, 96)
    assert not emsa_triton.fits(1025, 64) and not emsa_triton.fits(64, 129)
    assert emsa_triton.interpreted()  # conftest's TRITON_INTERPRET=1


def test_kernels_launch_on_the_tensors_gpu():
    """Triton launches on the current CUDA device: the launches run with
    the queries' device made current (``torch.cuda.device`` of their
    index, built without a GPU here), and with no device context for CPU
    tensors (the interpreter)."""
    import contextlib
    import types
    on_gpu = emsa_triton.launch_device(
        types.SimpleNamespace(device=torch.device('cuda', 1)))
    assert isinstance(on_gpu, torch.cuda.device) and on_gpu.idx == 1
    assert isinstance(
        emsa_triton.launch_device(torch.zeros(1)), contextlib.nullcontext)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    """Compiled (not interpreted) kernels refuse CPU tensors, naming the
    device and the way to run on the CPU."""
    monkeypatch.setattr(emsa_triton, 'interpreted', lambda: False)
    q, keys, values = _inputs(1, 2, 5, 4, 6, 3, torch.float32)
    with pytest.raises(
            RuntimeError,
            match='CUDA tensors.*TRITON_INTERPRET'
            '.*got queries on cpu'):
        emsa_triton.softmax_moments(q, keys, values)


def test_tiles_shrink_with_channels():
    """Rows per tile shrink as the channels grow, faster for float32 than
    for the autocast dtypes; channels padded to powers of two, at least
    16; float32 pipelined in 2 stages (shared memory)."""
    rows = {
        (C, dtype): emsa_triton.launch_config(C, 64, dtype)['BLOCK_N']
        for C in (10, 128, 256, 512, 768)
        for dtype in (torch.float16, torch.bfloat16, torch.float32)
    }
    assert [rows[C, torch.float16]
            for C in (10, 128, 256, 512, 768)] == [64, 64, 32, 32, 16]
    assert [rows[C, torch.bfloat16]
            for C in (10, 128, 256, 512, 768)] == [64, 64, 32, 32, 16]
    assert [rows[C, torch.float32]
            for C in (10, 128, 256, 512, 768)] == [32, 32, 16, 16, 16]
    config = emsa_triton.launch_config(768, 5, torch.float32)
    assert (config['BLOCK_C'], config['BLOCK_D'], config['BLOCK_M'],
            config['num_stages']) == (1024, 16, 16, 2)
    assert emsa_triton.launch_config(
        128, 64, torch.float16, block=16)['BLOCK_N'] == 16


def test_forward_tiles_on_hopper_and_blackwell():
    """The forward kernel takes 64 rows of 2-byte inputs up to C = 512 on
    compute capability 9.x, up to C = 256 on 10.x (it holds no gradient
    accumulators; from 64 rows on its products compile to wgmma / tcgen05,
    test_kernels_compile_for_cuda); the backward kernels, other GPUs, the
    CPU, float32 and an explicit ``block`` keep the table's rows."""

    def rows(C, dtype=torch.float16, **kw):
        return emsa_triton.launch_config(C, 64, dtype, **kw)['BLOCK_N']

    for capability, top in (((9, 0), 512), ((10, 0), 256), ((10, 3), 256)):
        fast = dict(forward=True, capability=capability)
        assert [rows(C, **fast) for C in (10, 128, 192, 256, 384, 512, 768)
                ] == [64, 64, 64, 64] + [64 if top == 512 else 32] * 2 + [16]
        assert rows(256, torch.bfloat16, **fast) == 64
        assert rows(256, torch.float32, **fast) == 16
        assert rows(256, **dict(fast, block=16)) == 16
        assert rows(256, capability=capability) == 32  # not forward
    for other in (dict(forward=False, capability=(9, 0)),
                  dict(forward=True, capability=(8, 0)),
                  dict(forward=True, capability=(12, 0)),
                  dict(forward=True, capability=None)):
        assert [rows(C, **other) for C in (128, 256, 512)] == [64, 32, 32]
    assert emsa_triton.capability(torch.zeros(1)) is None


def test_forward_tiles_on_hopper_with_triton_3_0_and_3_1(monkeypatch):
    """Triton 3.0 and 3.1 abort compiling the forward for sm_90 at 64 rows
    (wgmma; docs/benchmarks.md): with them the forward on 9.x takes 32 rows
    at every C up to 512 (64 from the table at C <= 128 otherwise); from
    Triton 3.2 on, and without Triton, Hopper's rule; the backward and
    other GPUs as before. ``triton_version`` reads the installed one."""

    def rows(C, capability=(9, 0), forward=True):
        return emsa_triton.launch_config(
            C, 64, torch.float16, forward=forward,
            capability=capability)['BLOCK_N']

    if emsa_triton.available():
        import triton
        assert emsa_triton.triton_version() == tuple(
            int(part) for part in triton.__version__.split('.')[:2])
    for version, want in (((3, 0), [32, 32, 32, 32,
                                    16]), ((3, 1), [32, 32, 32, 32, 16]),
                          ((3, 2), [64, 64, 64, 64,
                                    16]), ((3, 10), [64, 64, 64, 64, 16]),
                          (None, [64, 64, 64, 64, 16])):
        monkeypatch.setattr(emsa_triton, 'triton_version', lambda: version)
        assert [rows(C) for C in (10, 128, 256, 512, 768)] == want, version
        assert [rows(C, forward=False) for C in (128, 256)] == [64, 32]
        assert rows(128, capability=(8, 0)) == 64
        old = version in ((3, 0), (3, 1))  # Blackwell's rule needs 3.2+
        assert rows(256, capability=(10, 0)) == (32 if old else 64)


def test_blackwell_needs_triton_3_3(monkeypatch):
    """Triton 3.2 and older abort the process compiling for compute
    capability 10.x or 12.x (docs/benchmarks.md): ``compiles_for`` says
    so, and the core refuses such a GPU by name before compiling
    anything (here CPU tensors in the interpreter, a B200 stood in)."""
    for version in ((3, 2), (3, 3), (3, 9)):
        monkeypatch.setattr(emsa_triton, 'triton_version', lambda: version)
        blackwell = version >= (3, 3)
        for capability in ((8, 0), (8, 6), (9, 0), None):
            assert emsa_triton.compiles_for(capability)
        for capability in ((10, 0), (10, 3), (12, 0)):
            assert emsa_triton.compiles_for(capability) == blackwell
    q, keys, values = _inputs(1, 2, 5, 4, 8, 3, torch.float32)
    monkeypatch.setattr(emsa_triton, 'capability', lambda t: (10, 0))
    monkeypatch.setattr(emsa_triton, 'triton_version', lambda: (3, 2))
    with pytest.raises(
            RuntimeError,
            match=r'needs triton >= 3\.3 on a GPU of compute '
            r'capability \(10, 0\)'):
        emsa_triton.softmax_moments(q, keys, values)
    monkeypatch.setattr(emsa_triton, 'triton_version', lambda: (3, 3))
    emsa_triton.softmax_moments(q, keys, values)


def test_backward_tiles_where_products_are_mma_sync():
    """The backward kernels take 32 rows of 2-byte inputs at C = 128 on
    GPUs of compute capability 8.x and 12.x (where at 64 the keys / values
    kernel spills, test_kernels_compile_for_cuda), 64 on 9.x and 10.x and
    in the CPU's interpreter; wider C, float32, the forward kernel and an
    explicit ``block`` as before."""

    def rows(C, dtype=torch.float16, **kw):
        return emsa_triton.launch_config(C, 64, dtype, **kw)['BLOCK_N']

    for capability in ((8, 0), (8, 6), (8, 9), (12, 0)):
        assert [rows(C, capability=capability)
                for C in (128, 256, 512, 768)] == [32, 32, 32, 16]
        assert rows(128, torch.bfloat16, capability=capability) == 32
        assert rows(128, torch.float32, capability=capability) == 32
        assert rows(128, capability=capability, forward=True) == 64
        assert rows(128, capability=capability, block=64) == 64
    for capability in ((9, 0), (10, 0), None):
        assert [rows(C, capability=capability)
                for C in (128, 256, 512, 768)] == [64, 32, 32, 16]


def test_launch_options_reach_the_kernels(monkeypatch):
    """``launch`` (the device tuning sweep's warps and pipeline stages)
    overrides launch_config's choice, in the forward and the backward, and
    leaves the numbers as they were (the interpreter ignores both options);
    an unknown option or a value no GPU takes is refused by name."""
    config = emsa_triton.launch_config(
        256, 64, torch.float16, num_warps=4, num_stages=2)
    default = emsa_triton.launch_config(256, 64, torch.float16)
    assert (default['num_warps'], default['num_stages'],
            default['enable_fp_fusion']) == (8, 3, True)
    assert config == dict(default, num_warps=4, num_stages=2)
    recorder = CallCounter(
        monkeypatch, emsa_triton, 'launch_config', record=True)
    inputs = _inputs(1, 2, 20, 9, 8, 4, torch.float64)
    weights = _weights(1, 2, 20, 4)
    got = _run(
        lambda *t: emsa_triton.softmax_moments(
            *t, block=16, launch=dict(num_warps=2, num_stages=4)), inputs,
        weights)
    assert recorder.count == 2  # the forward and the backward
    (_, forward), (_, backward) = recorder.calls
    # the tiles may differ by GPU (CPU tensors: no capability)
    assert backward == dict(
        block=16, num_warps=2, num_stages=4, capability=None)
    assert forward == dict(backward, forward=True)
    want = _run(lambda *t: emsa_triton.softmax_moments(*t, block=16), inputs,
                weights)
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        assert torch.equal(g, w)
    q, keys, values = _inputs(1, 2, 5, 4, 6, 3, torch.float32)
    with pytest.raises(
            ValueError, match=r"unknown launch options \['warps'\]"):
        emsa_triton.softmax_moments(q, keys, values, launch=dict(warps=4))
    for warps in (1, 2, 4, 8, 16):  # what a GPU takes, and no more
        assert emsa_triton.launch_config(
            64, 64, torch.float16, num_warps=warps)['num_warps'] == warps
    assert emsa_triton.launch_config(
        64, 64, torch.float16, num_stages=1)['num_stages'] == 1
    for warps in (3, 32):
        with pytest.raises(
                ValueError, match=f'num_warps must be.*got {warps}'):
            emsa_triton.launch_config(64, 64, torch.float16, num_warps=warps)
    with pytest.raises(ValueError, match='num_stages must be.*got 0'):
        emsa_triton.launch_config(64, 64, torch.float16, num_stages=0)
    for block in (8, 24, 48):  # below 16, or not a power of two
        with pytest.raises(
                ValueError,
                match=f'block must be a power of two >= 16, '
                f'got {block}'):
            emsa_triton.launch_config(64, 64, torch.float16, block=block)


# (B, H, N, M, C, D, splits asked, splits launched): N = 37 and 33 are 3
# blocks of 16 query rows (the last partial): 2 splits of 2 and 1 blocks,
# 3 of 1; more splits than blocks are 3; N = 80, 5 blocks: 4 asked, 3 of
# 2, 2 and 1 blocks (none left empty)
SPLIT_CASES = [(1, 4, 37, 20, 12, 3, 2, 2), (2, 3, 33, 17, 24, 8, 3, 3),
               (1, 2, 37, 5, 8, 4, 7, 3), (2, 1, 80, 40, 16, 16, 4, 3)]


@pytest.mark.parametrize('case', SPLIT_CASES)
def test_split_queries_match_the_formulas_in_float64(case, monkeypatch):
    """The keys / values gradient kernel with its query rows split
    (``launch=dict(splits=...)``: the grid's third dimension, partial sums
    added after) gives the written-out formulas' gradients to 1e-8 in
    float64, as unsplit; its grid has the splits asked, fewer where the
    query blocks are fewer."""
    B, H, N, M, C, D, asked, launched = case
    inputs = _inputs(B, H, N, M, C, D, torch.float64)
    weights = _weights(B, H, N, D)
    grids = GridRecorder(monkeypatch, '_grad_keys_values_kernel').grids
    (out, dev), grads = _run(
        lambda *t: emsa_triton.softmax_moments(
            *t, block=16, launch=dict(splits=asked)), inputs, weights)
    assert grids == [(-(-M // 16), B * H, launched)]
    (ref_out, ref_dev), ref_grads = _run(moments_written_out, inputs, weights)
    for name, got, want in zip(('q', 'keys', 'values'), grads, ref_grads):
        assert_float64_equal(got, want, f'grad {name}')
    # the whole core's backward (its own launch) as well
    gen = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(B, H, n, C, generator=gen, dtype=torch.float64)
        for n in (N, M, M))
    mix = torch.randn(H, H, generator=gen, dtype=torch.float64)
    grads = []
    for launch in (dict(splits=asked), None):
        t = [x.clone().requires_grad_() for x in (q, k, v, mix)]
        out = emsa_triton.attention_core(*t, block=16, launch=launch)
        grads.append(torch.autograd.grad(out.square().sum(), t))
    assert grids[-2:] == [(-(-M // 16), B * H, launched),
                          (-(-M // 16), B * H, 1)]
    for name, got, want in zip(('q', 'k', 'v', 'mix'), *grads):
        assert_float64_equal(got, want, f'core grad {name}')


def test_query_splits_by_hand():
    """The default splits: the smallest S within 10% of the best waves per
    split, ``ceil(programs S / multiprocessors) / S``, S from 1 to 16 and
    at most a quarter of the query blocks. ResT-Small at 800 x 1344 on an
    H200 (132 multiprocessors): stage 2's 68 programs over 263 query blocks
    7 (4 waves of 1/7: 0.571; the best, 15, 0.533); stage 3's 264 programs
    and stage 4's 528 (two and four whole waves) 1. On the CPU 1."""
    splits = emsa_triton.query_splits
    assert splits(68, 263, 132) == 7
    assert splits(264, 132, 132) == splits(528, 33, 132) == 1
    assert splits(68, 263, None) == 1
    # an A100 (108): 3 splits, 2 waves of 1/3 (0.667; the best, 11, 0.636)
    assert splits(68, 263, 108) == 3
    # 4 programs: 1/S waves, the best S the largest allowed
    assert splits(4, 40, 132) == 10  # a quarter of 40 blocks
    # (MAX_QUERY_SPLITS 16: 1/15 is within 10% of 1/16)
    assert splits(4, 100, 132) == 15
    assert splits(4, 7, 132) == 1  # fewer than 8 blocks: no split
    # 200 programs: 5 waves of 1/3 (1.667) against 2 of 1 (the best, 15,
    # 1.533)
    assert splits(200, 1000, 132) == 3
    assert emsa_triton.multiprocessors(torch.zeros(1)) is None


def test_default_splits_follow_the_gpus_multiprocessors(monkeypatch):
    """Without ``splits`` the keys / values kernel takes ``query_splits``
    of its grid (here 2 x 2 programs), its query blocks (10 of 16 rows)
    and the tensors' GPU's multiprocessors (stood in): 4 of them, one wave
    unsplit, 1 split; 8 of them, half a wave, 2 splits. The gradients are
    those of the unsplit launch, which compiles the kernel without its
    ``SPLIT`` switch; ``multiprocessors`` reads the tensor's GPU
    (properties stood in)."""
    B, H, N, M, C, D = 2, 2, 160, 16, 16, 8
    inputs = _inputs(B, H, N, M, C, D, torch.float64)
    weights = _weights(B, H, N, D)
    recorder = GridRecorder(monkeypatch, '_grad_keys_values_kernel')
    unsplit = _run(
        lambda *t: emsa_triton.softmax_moments(
            *t, block=16, launch=dict(splits=1)), inputs, weights)
    for count in (4, 8):
        monkeypatch.setattr(
            emsa_triton, 'multiprocessors', lambda t, count=count: count)
        split = _run(lambda *t: emsa_triton.softmax_moments(*t, block=16),
                     inputs, weights)
        for got, want in zip(split[1], unsplit[1]):
            assert_float64_equal(got, want)
    assert recorder.grids == [(1, 4, 1), (1, 4, 1), (1, 4, 2)]
    assert recorder.switches == [False, False, True]
    monkeypatch.undo()
    asked = []

    def properties(index):
        asked.append(index)
        return types.SimpleNamespace(multi_processor_count=132)

    monkeypatch.setattr(torch.cuda, 'get_device_properties', properties)
    emsa_triton._multiprocessors.cache_clear()
    on_gpu = types.SimpleNamespace(device=torch.device('cuda', 1))
    assert emsa_triton.multiprocessors(on_gpu) == 132
    assert emsa_triton.multiprocessors(on_gpu) == 132  # asked once
    assert asked == [1]
    emsa_triton._multiprocessors.cache_clear()


def test_smaller_launches_by_hand():
    """The launches tried after launch_config's choice: its rows, then
    each half down to 16, each with its stages down to 1."""
    config = emsa_triton.launch_config(256, 64, torch.float16)  # 32, 3
    assert [(c['BLOCK_N'], c['BLOCK_M'], c['num_stages'])
            for c in emsa_triton.smaller_launches(config)] == [(32, 32, 3),
                                                               (32, 32, 2),
                                                               (32, 32, 1),
                                                               (16, 16, 3),
                                                               (16, 16, 2),
                                                               (16, 16, 1)]
    first = next(emsa_triton.smaller_launches(config))
    assert first == config  # the choice itself, whole
    assert len(
        list(
            emsa_triton.smaller_launches(
                dict(config, BLOCK_N=16, num_stages=2)))) == 2


def test_fitted_launch_steps_down_until_the_gpu_takes_it(monkeypatch):
    """A launch that the GPU refuses (Triton's OutOfResources: here, as a
    stand-in, where rows x stages x 1 KiB exceeds 40 KiB) runs again with
    the next smaller launch: 64 rows in 3 stages down to 32 in 1; a
    warning names both; the next call runs the fitted launch at once.
    Rows or stages given explicitly are run as given, refused or not;
    where nothing fits the last refusal is raised."""
    monkeypatch.setattr(emsa_triton, '_FITTED', {})
    config = emsa_triton.launch_config(128, 64, torch.float16)  # 64, 3
    t = torch.zeros(1, dtype=torch.float16)
    tried = []

    def run(config, warmup=False, limit=40):
        if warmup:  # as the interpreter: nothing compiled, no spills known
            return None
        tried.append((config['BLOCK_N'], config['num_stages']))
        need = config['BLOCK_N'] * config['num_stages']
        if need > limit:
            raise emsa_triton.OutOfResources(need * 1024, limit * 1024,
                                             'shared memory')
        return 'ran'

    with pytest.warns(UserWarning) as caught:
        assert emsa_triton.fitted_launch('_kernel', config, {}, t, run) == \
            'ran'
    assert tried == [(64, 3), (64, 2), (64, 1), (32, 3), (32, 2), (32, 1)]
    message, = [str(w.message) for w in caught]
    # Triton's resource, in its units (bytes of shared memory; threads)
    assert message == ('_kernel on cpu ran out of shared memory (required '
                       '196608, limit 40960) with 64 rows in 3 stages; it '
                       'runs 32 rows in 1 stages')
    tried.clear()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        emsa_triton.fitted_launch('_kernel', config, {}, t, run)
    assert tried == [(32, 1)]
    # another dtype, kernel or choice: fitted anew
    tried.clear()
    with pytest.warns(UserWarning):
        emsa_triton.fitted_launch('_kernel', config, {}, t.float(), run)
    assert len(tried) == 6
    # a launch the GPU takes: no warning, nothing stepped down
    tried.clear()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        emsa_triton.fitted_launch(
            '_other',
            config, {},
            t,
            lambda c, warmup=False: run(c, warmup, 200))
    assert tried == [(64, 3)]
    for given in (dict(block=64), dict(num_stages=3)):
        tried.clear()
        with pytest.raises(emsa_triton.OutOfResources):
            emsa_triton.fitted_launch('_kernel', config, given, t, run)
        assert tried == [(64, 3)]
    tried.clear()
    with pytest.raises(emsa_triton.OutOfResources, match='Required: 16384'):
        emsa_triton.fitted_launch(
            '_third', config, {}, t, lambda c, warmup=False: run(c, warmup, 8))
    assert len(tried) == 9


class _GPU:
    """Stands in for a kernel's ``run`` on a GPU (see
    ``emsa_triton.fitted_launch``): ``run(config, warmup=True)`` compiles
    (recorded in ``compiled``) and returns a stand-in of Triton's compiled
    kernel, whose loading refuses rows x stages above ``limit`` (KiB of
    shared memory, Triton's OutOfResources) and then gives
    ``spills(rows, stages)`` bytes a thread as ``n_spills`` (4-byte
    words); ``run(config)`` launches (recorded in ``ran``)."""

    def __init__(self, spills, limit=1000):
        self.spills, self.limit = spills, limit
        self.compiled, self.ran = [], []

    def __call__(self, config, warmup=False):
        launch = config['BLOCK_N'], config['num_stages']
        if not warmup:
            self.ran.append(launch)
            return 'ran'
        self.compiled.append(launch)
        need, refusal = launch[0] * launch[1], None
        if need > self.limit:
            refusal = emsa_triton.OutOfResources(need * 1024,
                                                 self.limit * 1024,
                                                 'shared memory')
        return LoadedKernel(self.spills(*launch), refusal)


def test_fitted_launch_steps_down_from_spilling_kernels(monkeypatch):
    """Where the compiled kernel (``run(config, warmup=True)``, loaded as
    on a GPU) keeps more than ``SPILL_LIMIT`` bytes a thread in local
    memory, the launch goes to half the rows in the same stages (fewer
    stages hold no fewer registers): 416 bytes at 64 rows (Triton 3.9's
    keys / values kernel at C = 128) -> 32 rows in 3 stages, compiled
    twice, launched once, warned once, then run directly. At most
    ``SPILL_LIMIT`` the choice stays; where every smaller launch spills
    too, the one that spilled least runs (of equals the larger: the choice
    itself, no warning); a refusal then a spill are both named; rows
    given: not compiled first."""
    monkeypatch.setattr(emsa_triton, '_FITTED', {})
    config = emsa_triton.launch_config(128, 64, torch.float16)  # 64, 3
    t = torch.zeros(1, dtype=torch.float16)
    fitted = functools.partial(emsa_triton.fitted_launch, config=config, t=t)

    def stepped_down(name, gpu):
        """What fitted_launch on ``gpu`` compiled, launched and warned."""
        with pytest.warns(UserWarning) as caught:
            assert fitted(name, launch={}, run=gpu) == 'ran'
        return gpu.compiled, gpu.ran, [str(w.message) for w in caught]

    gpu = _GPU(lambda rows, stages: 416 if rows == 64 else 0)
    assert stepped_down('_keys', gpu) == ([(64, 3), (32, 3)], [(32, 3)], [
        '_keys on cpu spilled 416 bytes a thread (limit 128) with 64 rows in '
        '3 stages; it runs 32 rows in 3 stages'
    ])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        fitted('_keys', launch={}, run=gpu)
        assert (gpu.compiled, gpu.ran) == ([(64, 3), (32, 3)], [(32, 3)] * 2)
        # the limit itself is kept
        gpu = _GPU(lambda rows, stages: emsa_triton.SPILL_LIMIT)
        fitted('_queries', launch={}, run=gpu)
        assert (gpu.compiled, gpu.ran) == ([(64, 3)], [(64, 3)])
        # spilling as much at every size: the largest tiles
        gpu = _GPU(lambda rows, stages: 200)
        fitted('_forward', launch={}, run=gpu)
        assert (gpu.compiled, gpu.ran) == ([(64, 3), (32, 3),
                                            (16, 3)], [(64, 3)])
        # rows or stages given: run as given
        gpu = _GPU(lambda rows, stages: 416)
        fitted('_given', launch=dict(block=64), run=gpu)
        assert (gpu.compiled, gpu.ran) == ([], [(64, 3)])
    # spilling at every size, least at 32 rows
    gpu = _GPU(lambda rows, stages: {64: 416, 32: 160, 16: 200}[rows])
    assert stepped_down('_least', gpu) == ([(64, 3), (32, 3), (16, 3)], [
        (32, 3)
    ], [
        '_least on cpu spilled 416 bytes a thread (limit 128) with 64 '
        'rows in 3 stages; it runs 32 rows in 3 stages, spilling 160 '
        'bytes a thread, the fewest'
    ])
    # 64 x 3 refused (shared memory), 64 x 2 spills, 32 x 3 fits
    gpu = _GPU(lambda rows, stages: 200 if rows == 64 else 0, limit=150)
    assert stepped_down('_both', gpu) == ([(64, 3), (64, 2), (32, 3)], [
        (32, 3)
    ], [
        '_both on cpu ran out of shared memory (required 196608, limit '
        '153600) with 64 rows in 3 stages and spilled 200 bytes a thread '
        '(limit 128) with 64 rows in 2 stages; it runs 32 rows in 3 '
        'stages'
    ])


def test_spilled_bytes_from_the_loaded_kernel(monkeypatch):
    """``spilled_bytes``: Triton's ``n_spills`` (4-byte words) of the
    compiled kernel after loading it on the tensor's device (made current,
    as for its launch), in bytes; through a future where Triton compiled
    asynchronously; None where nothing was compiled (Triton's interpreter,
    the real kernels here) or Triton lacks the interfaces; the GPU's
    refusal to load it propagates."""
    events = []

    @contextlib.contextmanager
    def launch_device(t):
        events.append(('current', t))
        yield
        events.append('restored')

    monkeypatch.setattr(emsa_triton, 'launch_device', launch_device)

    class Loaded:
        n_spills = None

        def _init_handles(self):
            events.append('loaded')
            self.n_spills = 26

    def returning(compiled):
        return lambda config, warmup=False: compiled

    t = torch.zeros(1)
    assert emsa_triton.spilled_bytes(returning(Loaded()), {}, t) == 104
    assert events == [('current', t), 'loaded', 'restored']
    future = types.SimpleNamespace(result=Loaded)
    assert emsa_triton.spilled_bytes(returning(future), {}, t) == 104
    assert emsa_triton.spilled_bytes(returning(object()), {}, t) is None
    assert emsa_triton.spilled_bytes(lambda config: Loaded(), {}, t) is None
    assert emsa_triton.interpreted()
    for name in ('_forward_kernel', '_grad_queries_kernel',
                 '_grad_keys_values_kernel'):
        kernel = getattr(emsa_triton, name)
        assert emsa_triton.spilled_bytes(
            lambda config, warmup=False: emsa_triton._launch(
                kernel, (1, 1), warmup), {},
            t) is None

    class Refused:

        def _init_handles(self):
            raise emsa_triton.OutOfResources(2048, 1024, 'shared memory')

    with pytest.raises(emsa_triton.OutOfResources):
        emsa_triton.spilled_bytes(returning(Refused()), {}, t)


# How the stand-in GPU treats the keys / values kernel above 16 rows: Triton
# refuses to launch it (too little shared memory), refuses to load it once
# compiled (the same, found by spilled_bytes), or it spills 416 bytes a
# thread; then the launches compiled first, the launches run, the warning
SMALL_GPUS = {
    'refused':
    (dict(refuse=True), [], [(32, 2), (32, 1),
                             (16, 2)], 'on cpu ran out of shared memory'),
    'refused at loading': (dict(refuse=True, spills=0), [(32, 2), (32, 1),
                                                         (16, 2)], [(16, 2)],
                           'on cpu ran out of shared memory'),
    'spilling': (dict(spills=416), [(32, 2), (16, 2)], [(16, 2)],
                 'on cpu spilled 416 bytes a thread'),
}


@pytest.mark.parametrize('gpu', SMALL_GPUS)
def test_kernels_fitted_to_a_small_gpu_compute_the_same(gpu, monkeypatch):
    """On a GPU where the tiles chosen for another refuse to launch (less
    shared memory) or spill registers (stood in: the keys / values kernel
    above 16 rows, see SMALL_GPUS), that kernel runs 16 rows, warning
    once, and the gradients are the float64 formulas' to 1e-8; the queries
    kernel keeps its 32 rows."""
    monkeypatch.setattr(emsa_triton, '_FITTED', {})
    options, compiled, launched, warned = SMALL_GPUS[gpu]
    B, H, N, M, C, D = 1, 2, 37, 40, 12, 5
    inputs = _inputs(B, H, N, M, C, D, torch.float64)
    weights = _weights(B, H, N, D)
    above_16 = lambda kw: kw['BLOCK_N'] > 16  # noqa: E731
    keys_kernel = GridRecorder(
        monkeypatch,
        '_grad_keys_values_kernel',
        refuse=above_16 if options.get('refuse') else None,
        spills=None if 'spills' not in options else
        (lambda kw: options['spills'] * above_16(kw)))
    queries_kernel = GridRecorder(monkeypatch, '_grad_queries_kernel')
    with pytest.warns(UserWarning) as caught:
        (out, dev), grads = _run(emsa_triton.softmax_moments, inputs, weights)
    message, = [str(w.message) for w in caught if 'it runs' in str(w.message)]
    assert message.startswith('_grad_keys_values_kernel ' + warned), message
    assert message.endswith('it runs 16 rows in 2 stages'), message
    _, ref_grads = _run(moments_written_out, inputs, weights)
    for name, got, want in zip(('q', 'keys', 'values'), grads, ref_grads):
        assert_float64_equal(got, want, f'grad {name}')
    assert (keys_kernel.compiled, keys_kernel.launches) == (compiled, launched)
    assert keys_kernel.grids[-1] == (3, 2, 1)  # 40 keys in blocks of 16
    assert queries_kernel.launches == [(32, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        _run(emsa_triton.softmax_moments, inputs, weights)
    assert (keys_kernel.compiled,
            keys_kernel.launches) == (compiled, launched + [(16, 2)])


@pytest.mark.parametrize('splits', [0, -1, 1.5, '2'])
def test_bad_splits_are_refused(splits):
    q, keys, values = _inputs(1, 2, 5, 4, 6, 3, torch.float32)
    with pytest.raises(ValueError, match='splits must be a positive integer'):
        emsa_triton.softmax_moments(
            q, keys, values, launch=dict(splits=splits))


# Shared memory a program may use: A100 (sm_80) 163 KiB, H100 / H200 (sm_90)
# and B200 (sm_100) 227 KiB, RTX 30xx (sm_86) and RTX 50xx (sm_120) 99 KiB
# (CUDA's occupancy
# tables, maximum per block)
SHARED_LIMIT = {
    80: 163 * 1024,
    86: 99 * 1024,
    90: 227 * 1024,
    100: 227 * 1024,
    120: 99 * 1024
}

# Registers spilled (bytes a thread) that the tiles leave, by (cc, C, D);
# none elsewhere: ResT-Base / Large stage 4 (C = 768, heads of 96) on sm_80
# and sm_90, and on sm_100 the keys / values kernel at stage 3 (C = 384:
# 8 bytes at 32 rows, as on sm_90, where it spills none; 16 rows would
# halve its tiles for two registers)
SPILLS_ALLOWED = {(80, 768, 96): 64, (90, 768, 96): 64, (100, 384, 96): 8}


def compiled_for_cuda(tmp_path, *argv, triton_dir=None) -> list:
    """tests/_triton_aot.py's rows for ``argv``, in a process without
    TRITON_INTERPRET (the kernels compiled), its Triton cache in
    ``tmp_path`` (compiled here, not cached); with ``triton_dir`` (a
    folder holding a ``triton`` package) that Triton, not the installed
    one."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(tmp_path)
    if triton_dir is not None:
        repo = str(Path(__file__).resolve().parents[1])
        env['PYTHONPATH'] = os.pathsep.join(
            [str(triton_dir), repo,
             env.get('PYTHONPATH', '')])
    proc = subprocess.run([
        sys.executable,
        str(Path(__file__).with_name('_triton_aot.py')), *argv
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_kernels_compile_for_cuda(tmp_path):
    """The kernels as launched compile for CUDA without a GPU (Triton's
    ptxas, tests/_triton_aot.py; the interpreter does not run Triton's
    compiler): for H100 / H200 (sm_90) in fp16 at every C of ResT's
    multi-head stages (128 to 768, heads of 64 and of 96 channels), bf16,
    float32, at C = 768 for A100 (sm_80), at C = 128 for sm_80, sm_86 and
    sm_120 (A100, RTX 30xx, RTX 50xx), at C = 192 and 384 (heads of 96)
    for sm_100 (B200); the keys / values kernel
    also for split query rows (``query_splits``) where the keys are few
    enough to split them (stages 2 and 3, C up to 512). Each kernel
    spills no registers (stack 0; the widest, C = 768 with d = 96, a few)
    and fits the architecture's shared memory."""
    specs = [f'90:fp16:{C}:64' for C in (128, 256, 512, 768)] + [
        '90:bf16:256:64', '90:fp32:128:64', '90:fp32:768:64', '80:fp32:768:64'
    ]
    # ResT-Base's and -Large's heads have 96 channels (stages 2-4: C = 192,
    # 384, 768); at C = 768 the keys kernel (and on sm_80 in fp16 the
    # queries kernel) spills a few registers (16 to 56 bytes a thread):
    # allowed there, up to 64 bytes (SPILLS_ALLOWED)
    wide = [f'90:fp16:{C}:96' for C in (192, 384, 768)]
    specs += wide + ['90:fp32:768:96', '80:fp16:768:96']
    # mma.sync GPUs at C = 128 (the backward kernels at 32 rows there)
    specs += ['80:fp16:128:64', '86:fp16:128:64', '120:bf16:128:64']
    # B200 (sm_100): the forward at 64 rows to C = 256, 32 rows above
    specs += ['100:fp16:192:96', '100:bf16:384:96']
    # split query rows: the keys / values kernel alone (a row each)
    split = [
        f'90:fp16:{C}:{D}:-:-:-:1'
        for C, D in ((128, 64), (192, 96), (256, 64), (384, 96), (512, 64))
    ] + ['90:bf16:128:64:-:-:-:1']
    specs += split
    rows = compiled_for_cuda(tmp_path, *specs)
    assert len(rows) == 3 * len(specs) - 2 * len(split)
    assert sum(row['split'] for row in rows) == len(split)
    # The tiles were chosen with Triton 3.6's ptxas (the constraints' pin;
    # torch 2.10 and 2.11's). Another Triton allocates registers otherwise
    # (3.9, torch 2.15's, spills 416 bytes a thread in the keys kernel at
    # C = 128 and 168 in the forward at C = 512; fitted_launch steps those
    # down, test_kernels_as_fitted_spill_at_most_the_limit): there only
    # compilation, shared memory and the instructions are checked.
    import triton
    tuned = triton.__version__.startswith('3.6.')
    for row in rows:
        assert 'error' not in row, row
        assert not tuned or row['stack'] <= SPILLS_ALLOWED.get(
            (row['cc'], row['C'], row['D']), 0), row
        assert 0 < row['shared'] <= SHARED_LIMIT[row['cc']], row
        # Hopper's wgmma from 64 rows on: on sm_90 in fp16 / bf16 up to
        # C = 512 the forward kernel's products (its 64-row tiles), at
        # C = 128 all three kernels'
        if row['cc'] == 90 and row['dtype'] != 'fp32' and row['C'] <= 512:
            wgmma = row['kernel'] == '_forward_kernel' or row['C'] <= 128
            assert row['mma'] == ('wgmma' if wgmma else 'mma.sync'), row
        # Blackwell's tcgen05 likewise, where the forward kernel has 64 rows
        if row['cc'] == 100 and row['kernel'] == '_forward_kernel':
            assert row['mma'] == ('tcgen05'
                                  if row['BLOCK_N'] == 64 else 'mma.sync'), row
            assert row['BLOCK_N'] == (64 if row['C'] <= 256 else 32), row


def test_kernels_as_fitted_spill_at_most_the_limit(tmp_path):
    """On H100 / H200 (sm_90) and B200 (sm_100), every kernel at every C of
    ResT's multi-head stages, fp16 (and bf16 at C = 512), as
    ``fitted_launch`` takes it given this Triton's compilation (ptxas's
    spills; tests/_triton_aot.py ``--fit``), spills at most
    ``SPILL_LIMIT`` bytes a thread or has the smallest tiles (16 rows).
    With Triton 3.6, which the tiles were chosen with, nothing steps down;
    Triton 3.9 (torch 2.15) spills 416 bytes a thread in the keys / values
    kernel at C = 128 with 64 rows and 168 to 232 in the forward at
    C = 384 and 512 with 64: there the launches step down to 32 rows."""
    widths = [(128, 64), (192, 96), (256, 64), (384, 96), (512, 64), (768, 96),
              (768, 64)]
    specs = [f'90:fp16:{C}:{D}' for C, D in widths
             ] + ['90:bf16:512:64', '100:fp16:384:96', '100:fp16:512:64']
    rows = compiled_for_cuda(tmp_path, '--fit', str(SHARED_LIMIT[90]), *specs)
    assert len(rows) == 3 * len(specs)
    for row in rows:
        assert 'error' not in row and row['shared'] <= SHARED_LIMIT[90], row
        assert row['stack'] <= emsa_triton.SPILL_LIMIT or \
            row['BLOCK_N'] == 16, row
    import triton
    if triton.__version__.startswith('3.6.'):
        assert all(row['tried'] == 1 for row in rows), rows


# On request: folders each holding another Triton (``pip install --no-deps
# --target DIR triton==V``), separated by the path separator
OTHER_TRITONS = [
    Path(d) for d in os.environ.get('MMREST_TRITONS', '').split(os.pathsep)
    if d
]


def _triton_in(folder: Path) -> tuple:
    """The (major, minor) of the Triton installed in ``folder``."""
    text = (folder / 'triton' / '__init__.py').read_text()
    version = re.search(r"__version__ = ['\"]([0-9.]+)", text).group(1)
    return tuple(int(part) for part in version.split('.')[:2])


@pytest.mark.skipif(
    not OTHER_TRITONS,
    reason='compiles with other Tritons, a few minutes each; set '
    'MMREST_TRITONS to folders holding them')
@pytest.mark.parametrize('folder', OTHER_TRITONS, ids=str)
def test_another_triton_compiles_the_launches_as_fitted(folder, tmp_path):
    """With another Triton (torch 2.4's 3.0 to torch 2.15's 3.9,
    docs/benchmarks.md), every kernel at every width of ResT's multi-head
    stages compiles as ``fitted_launch`` takes it (``--fit``) for sm_90
    (fp16, bf16) and sm_80, and for sm_100 / sm_120 from Triton 3.3 on
    (before, the core refuses them: their compiler aborts): no process
    aborted, no error, within the shared memory, spilling at most
    ``SPILL_LIMIT`` bytes a thread unless at the smallest tiles; the
    forward for sm_90 at most 32 rows before Triton 3.2."""
    version = _triton_in(folder)
    widths = [(128, 64), (192, 96), (256, 64), (384, 96), (512, 64), (768, 96)]
    runs = [(90, [f'90:fp16:{C}:{D}' for C, D in widths] + ['90:bf16:512:64']),
            (80, ['80:fp16:128:64', '80:fp16:384:96', '80:fp16:768:96'])]
    if version >= emsa_triton.BLACKWELL_SINCE:
        runs += [(100, ['100:fp16:256:64', '100:fp16:384:96']),
                 (120, ['120:fp16:128:64', '120:fp16:512:64'])]
    for cc, specs in runs:
        limit = SHARED_LIMIT[cc]
        rows = compiled_for_cuda(
            tmp_path, '--fit', str(limit), *specs, triton_dir=folder)
        assert len(rows) == 3 * len(specs)
        for row in rows:
            assert 'error' not in row and row['shared'] <= limit, row
            assert row['stack'] <= emsa_triton.SPILL_LIMIT or \
                row['BLOCK_N'] == 16, row
            if cc == 90 and row['kernel'] == '_forward_kernel' and \
                    version < (3, 2):
                assert row['BLOCK_N'] <= 32, row


def test_kernels_fit_a_99_kib_gpu(tmp_path):
    """On GPUs with 99 KiB of shared memory a block (compute capability
    8.6 / 8.9 / 12.x: RTX 30xx to 50xx, A10, L4, L40) the tiles chosen
    for sm_90 do not all fit: ``fitted_launch`` steps down, and every
    kernel at every C of ResT's multi-head stages, fp16 and bf16, then
    fits (compiled for sm_86 with Triton's ptxas, tests/_triton_aot.py
    ``--fit``). With Triton 3.6 the keys / values kernel is the one that
    steps down: at C = 512 (ResT-Lite / Small, stage 4: 102912 bytes in 3
    stages) to 2 stages, at C = 384 with d = 96 (ResT-Base / Large,
    stage 3: 123392) to 16 rows; the others fit as chosen."""
    limit = SHARED_LIMIT[86]
    widths = [(128, 64), (192, 96), (256, 64), (384, 96), (512, 64), (768, 96),
              (768, 64)]
    specs = [f'86:fp16:{C}:{D}'
             for C, D in widths] + ['86:bf16:512:64', '86:bf16:384:96']
    rows = compiled_for_cuda(tmp_path, '--fit', str(limit), *specs)
    assert len(rows) == 3 * len(specs)
    for row in rows:
        assert 'error' not in row and row['shared'] <= limit, row
    import triton
    if triton.__version__.startswith('3.6.'):
        stepped = {
            (r['dtype'], r['C'], r['kernel']):
            (r['BLOCK_N'], r['num_stages'], r['tried'])
            for r in rows if r['tried'] > 1
        }
        assert stepped == {
            (dtype, C, '_grad_keys_values_kernel'): launch
            for dtype in ('fp16', 'bf16')
            for C, launch in ((512, (32, 2, 2)), (384, (16, 3, 4)))
        }
