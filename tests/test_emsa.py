"""The fast EMSA against the literal one of docs/network.md: same outputs and
gradients, in eval and train mode, with one chunk or many. Float32 results
are measured against the literal computation in float64 (see
``_helpers.assert_float32_close``)."""
import pytest
import torch
from _helpers import (GRADIENT_FACTOR, SavedForBackward, assert_float32_close,
                      assert_float64_equal, assert_gradients_close,
                      float64_literal, literal_attention, relative_error,
                      stage_depths)

from mmrest.backbones import EMSA, ResT, emsa_attention, kernels, to_literal
from mmrest.backbones.kernels import is_literal


def make_pair(embed_dims, num_heads, sr_ratio):
    fast = EMSA(embed_dims, num_heads, sr_ratio)
    with torch.no_grad():  # give every parameter, biases too, a real value
        for p in fast.parameters():
            p.normal_(0, 0.3)
    literal = to_literal(fast)
    assert is_literal(literal) and not is_literal(fast)
    return fast, literal


CASES = [(32, 1, 4), (32, 2, 4), (64, 4, 2), (64, 8, 1)]
HW = (13, 18)


def many_chunks(monkeypatch, num_heads, sr_ratio, batch=2):
    """A _CHUNK_ELEMENTS that cuts the HW queries into a few chunks of
    24 to 96 rows (the last one shorter; the factor is the number of
    threads, 1 to 4): each checkpointed chunk costs time."""
    keys = [
        n if sr_ratio == 1 else
        (n + 2 * (sr_ratio // 2) - sr_ratio - 1) // sr_ratio + 1 for n in HW
    ]
    monkeypatch.setattr(kernels, 'CHUNK_ELEMENTS',
                        24 * batch * num_heads * keys[0] * keys[1])


@pytest.mark.parametrize('embed_dims,num_heads,sr_ratio', CASES)
@pytest.mark.parametrize('chunks', ['one', 'many'])
def test_same_outputs_and_gradients(embed_dims, num_heads, sr_ratio, chunks,
                                    monkeypatch):
    if chunks == 'many':
        many_chunks(monkeypatch, num_heads, sr_ratio)
    fast, literal = make_pair(embed_dims, num_heads, sr_ratio)
    exact = float64_literal(fast)
    hw = HW
    x = torch.randn(2, hw[0] * hw[1], embed_dims)
    for mode in (False, True):
        for m in (fast, literal, exact):
            m.train(mode)
        with torch.no_grad():  # the inference paths (eval) and train mode
            assert_float32_close(
                fast(x, hw),
                literal(x, hw),
                exact(x.double(), hw),
                name='no autograd')
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        xc = x.double().requires_grad_()
        out_a, out_b, out_c = fast(xa, hw), literal(xb, hw), exact(xc, hw)
        assert_float32_close(out_a, out_b, out_c, name='output')
        g = torch.randn_like(out_a)
        (out_a * g).sum().backward()
        (out_b * g).sum().backward()
        (out_c * g.double()).sum().backward()
        assert_float32_close(
            xa.grad,
            xb.grad,
            xc.grad,
            name='input grad',
            factor=GRADIENT_FACTOR)
        # With the transform, the exact gradient of transform_conv.bias,
        # kv.bias and sr_norm.bias is zero (a softmax cannot see a shift
        # shared by all keys, and each normalised attention row sums to 0,
        # so a shift shared by all values cancels): the helper measures
        # their rounding noise against all the gradients.
        assert_gradients_close(fast, literal, exact)
        for m in (fast, literal, exact):
            m.zero_grad()


@pytest.mark.parametrize('embed_dims,num_heads,sr_ratio', CASES)
def test_same_outputs_and_gradients_in_float64(embed_dims, num_heads, sr_ratio,
                                               monkeypatch):
    """In float64 the fast EMSA is the literal one to 1e-8, over many
    chunks too."""
    many_chunks(monkeypatch, num_heads, sr_ratio)
    fast, literal = make_pair(embed_dims, num_heads, sr_ratio)
    fast, literal = fast.double(), literal.double()
    hw = HW
    x = torch.randn(2, hw[0] * hw[1], embed_dims, dtype=torch.float64)
    for mode in (False, True):
        fast.train(mode), literal.train(mode)
        with torch.no_grad():
            assert_float64_equal(fast(x, hw), literal(x, hw), 'no autograd')
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_a, out_b = fast(xa, hw), literal(xb, hw)
        assert_float64_equal(out_a, out_b, 'output')
        out_a.square().sum().backward()
        out_b.square().sum().backward()
        assert_float64_equal(xa.grad, xb.grad, 'input grad')
        total = torch.stack([p.grad.norm() for p in literal.parameters()])
        for (name, pa), pb in zip(fast.named_parameters(),
                                  literal.parameters()):
            if pb.grad.norm() < 1e-12 * total.norm():  # exact zero
                assert pa.grad.norm() < 1e-12 * total.norm(), name
            else:
                assert_float64_equal(pa.grad, pb.grad, name)
        fast.zero_grad(), literal.zero_grad()


def test_training_core_gradients_by_autograd_grad_and_for_the_mixing_alone():
    """The chunked training core (each chunk recomputed in the backward
    pass) under ``torch.autograd.grad``, as a gradient penalty or
    functorch asks for it, and with only the head mixing needing a
    gradient (q, k and v frozen): the literal core's gradients in float64
    (to 1e-10), over several chunks."""
    gen = torch.Generator().manual_seed(0)
    B, h, N, M = 2, 3, 40, 24
    q, k, v = (
        torch.randn(B, h, n, M, generator=gen).double() for n in (N, M, M))
    q = q / M**0.5
    mix, mix_bias = (
        torch.randn(*s, generator=gen).double() for s in ((h, h), (h, )))
    weight = torch.randn(B, h, N, M, generator=gen).double()
    for needs in (('q', 'k', 'v', 'mix'), ('mix', )):
        grads = []
        for core in (emsa_attention, literal_attention):
            args = dict(q=q.clone(), k=k.clone(), v=v.clone(), mix=mix.clone())
            for name in needs:
                args[name].requires_grad_(True)
            kwargs = dict(chunk_elements=B * h * M * 8) \
                if core is emsa_attention else {}
            out = core(args['q'], args['k'], args['v'], args['mix'], mix_bias,
                       **kwargs)
            assert out.requires_grad
            grads.append(
                torch.autograd.grad((out * weight).sum(),
                                    [args[n] for n in needs]))
        for name, got, want in zip(needs, *grads):
            assert_float64_equal(got, want, name, tol=1e-10)


@pytest.mark.parametrize('chunk_elements', [1 << 30, 900])
def test_attention_dropout_keeps_its_rate(chunk_elements):
    """Dropout on the normalised attention (the authors' place): a share
    ``p`` of its entries is zeroed, the rest scaled by 1 / (1 - p).

    With the identity as values the output *is* the attention map, so the
    mask can be read off against the literal map without dropout (in
    float64, where the kept entries match to 1e-12).
    """
    p = 0.3
    B, h, N, M = 2, 4, 48, 40
    q = torch.randn(B, h, N, M, dtype=torch.float64) / M**0.5
    k = torch.randn(B, h, M, M, dtype=torch.float64)
    v = torch.eye(M, dtype=torch.float64).expand(B, h, M, M)
    mix, mix_bias = torch.randn(h, h).double(), torch.randn(h).double()
    expected = literal_attention(q, k, v, mix, mix_bias)
    out = emsa_attention(
        q,
        k,
        v,
        mix,
        mix_bias,
        attn_drop=p,
        training=True,
        chunk_elements=chunk_elements)
    dropped = out == 0
    kept = ~dropped
    n = out.numel()
    # 5 standard deviations of a binomial share: fails with probability
    # < 1e-6 for a correct rate, and a rate off by 0.05 shows
    assert abs(dropped.double().mean().item() - p) < 5 * (p * (1 - p) / n)**0.5
    assert_float64_equal(out[kept], expected[kept] / (1 - p), tol=1e-12)
    assert (expected[dropped] != 0).all()
    # every group of 8 query rows (several chunks) drops at that rate too
    share = dropped.double().view(B * h, N // 8, 8 * M).mean(dim=(0, 2))
    assert (share - p).abs().max() < 0.1, share
    # eval mode (the default) or a zero rate: no dropout
    plain = emsa_attention(q, k, v, mix, mix_bias)
    for kwargs in (dict(training=False), {}):
        assert torch.equal(
            emsa_attention(q, k, v, mix, mix_bias, attn_drop=p, **kwargs),
            plain), kwargs


def test_emsa_module_applies_attention_dropout():
    fast, _ = make_pair(32, 2, 2)
    fast.attn_drop = 0.5
    fast.train()
    x = torch.randn(1, 64, 32)
    a, b = fast(x, (8, 8)), fast(x, (8, 8))
    assert not torch.allclose(a, b)  # dropout is active in training
    fast.eval()
    assert torch.equal(fast(x, (8, 8)), fast(x, (8, 8)))


def test_no_attention_map_is_stored_for_backward():
    """Training memory: all that autograd keeps for the backward pass,
    summed over the saved tensors (each storage once), is the inputs q, k,
    v and the mixing weights, the (B, h, N, d) output of the chunks and the
    InstanceNorm's (B, h) scales: each query chunk's logits are recomputed
    in the backward pass. That bound is 1/12 of one float32 attention map
    of all heads (B h N x M); the literal computation keeps several."""
    B, h, N, M, d = 1, 4, 2048, 512, 16
    q = torch.randn(B, h, N, d, requires_grad=True)
    k = torch.randn(B, h, M, d, requires_grad=True)
    v = torch.randn(B, h, M, d, requires_grad=True)
    mix = torch.randn(h, h, requires_grad=True)
    with SavedForBackward() as saved:
        emsa_attention(q, k, v, mix, chunk_elements=1 << 16).sum()
    assert saved.nbytes > 0
    element = q.element_size()
    bound = element * (
        2 * B * h * N * d + 2 * B * h * M * d  # q, out; k, v
        + h * h + 2 * h + 2 * B * h)  # mix, bias; scales
    attention_map = element * B * h * N * M
    assert bound < attention_map / 12
    assert saved.nbytes <= bound, (saved.nbytes, bound)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_whole_backbone_matches_literal_in_train_mode(dtype):
    """Train mode (BatchNorm on batch statistics), outputs and gradients:
    in float64 equal to the literal computation; in float32 as close to
    the literal float64 result as the literal float32 one is."""
    model = ResT(arch='lite').train().to(dtype)
    literal = to_literal(model)
    exact = float64_literal(model).train()
    x = torch.rand(2, 3, 64, 96, dtype=dtype)
    outs_a, outs_b = model(x), literal(x)
    outs_c = exact(x.double())
    depths = stage_depths(model)
    for depth, a, b, c in zip(depths, outs_a, outs_b, outs_c):
        if dtype == torch.float32:
            assert_float32_close(a, b, c, depth=depth)
        else:
            assert_float64_equal(a, b)
    sum(o.square().mean() for o in outs_a).backward()
    sum(o.square().mean() for o in outs_b).backward()
    if dtype == torch.float32:
        sum(o.square().mean() for o in outs_c).backward()
        assert_gradients_close(model, literal, exact, depth=depths[-1])
        return
    total = torch.stack([p.grad.norm() for p in literal.parameters()]).norm()
    for (name, pa), pb in zip(model.named_parameters(), literal.parameters()):
        if pb.grad.norm() < 1e-12 * total:
            # zero true gradient (biases before a BatchNorm in train mode,
            # and those above): both give float64 rounding noise
            assert pa.grad.norm() < 1e-12 * total, name
        else:
            assert relative_error(pa.grad, pb.grad) < 1e-8, name


@pytest.mark.parametrize('needs_grad', [(True, True, True),
                                        (True, False, False),
                                        (False, True, False),
                                        (False, False, True)])
@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 2, 4, 3), (3, 8, 6, 2)])
def test_mix_heads_matches_the_1x1_conv_in_float64(shape, needs_grad):
    """MixHeads (the head mixing with the GPU-friendly backward): output and
    the gradients of the logits, the weight and the bias equal those of the
    literal 1x1 convolution over heads, in float64, whichever of them
    autograd asks for (e.g. a frozen mixing, logits that need none)."""
    gen = torch.Generator().manual_seed(0)
    h = shape[1]
    attn, mix, bias = (
        torch.randn(*s, generator=gen, dtype=torch.float64)
        for s in (shape, (h, h), (h, )))
    grad = torch.randn(*shape, generator=gen, dtype=torch.float64)
    results = []
    for fn in (kernels.MixHeads.apply, lambda a, w, b: torch.nn.functional.
               conv2d(a, w[:, :, None, None], b)):
        inputs = [
            t.clone().requires_grad_(needs)
            for t, needs in zip((attn, mix, bias), needs_grad)
        ]
        out = fn(*inputs)
        out.backward(grad)
        results.append([out] + [t.grad for t in inputs])
    for got, want, needs in zip(*results, (True, ) + needs_grad):
        assert (got is None) == (want is None) == (not needs)
        if needs:
            assert relative_error(got, want) < 1e-12
    assert torch.autograd.gradcheck(kernels.MixHeads.apply, [
        t[..., :2].clone().requires_grad_()
        if t.dim() == 4 else t.clone().requires_grad_()
        for t in (attn, mix, bias)
    ])


def test_mix_heads_dispatch(monkeypatch):
    """Off the CPU (a 'meta' tensor stands for a GPU one) the head mixing
    goes through MixHeads; on the CPU through autograd's baddbmm."""
    calls = []
    apply = kernels.MixHeads.apply
    monkeypatch.setattr(kernels.MixHeads, 'apply',
                        lambda *a: calls.append(a[0].device.type) or apply(*a))
    for device in ('cpu', 'meta'):
        out = kernels.mix_heads(
            torch.randn(2, 3, 4, 5, device=device),
            torch.randn(3, 3, device=device), torch.randn(3, device=device))
        assert out.shape == (2, 3, 4, 5)
    assert calls == ['meta']


def test_whole_backbone_trains_through_mix_heads(monkeypatch):
    """The GPU's head mixing, forced on the CPU: a training step of the
    whole backbone gives the literal computation's outputs and gradients
    in float64."""
    monkeypatch.setattr(kernels, 'mix_heads', kernels.MixHeads.apply)
    test_whole_backbone_matches_literal_in_train_mode(torch.float64)


@pytest.mark.parametrize('scale', [1e-3, 1e-2, 1., 30.])
def test_centred_softmax_is_exact_and_cancels_nothing(scale):
    """``kernels.centred_softmax_`` (the inference core's centring) is
    ``softmax - 1 / M``: equal in float64, and in float32 as close to
    float64 as the literal softmax-then-subtract on every row; on spread-out
    rows (small logits, where the InstanceNorm amplifies the rounding) at
    least 10x closer, and finite on logits spread far beyond exp's range."""
    gen = torch.Generator().manual_seed(0)
    M = 196
    x = torch.randn(4, 32, M, generator=gen, dtype=torch.float64) * scale
    x[0, :, 0] += 10 * scale  # a row with an outlier either way
    x[1, :, 0] -= 10 * scale
    exact = x.softmax(dim=-1) - 1.0 / M
    assert_float64_equal(
        kernels.centred_softmax_(x.clone()), exact, 'float64', tol=1e-12)
    x32 = x.float()
    exact = x32.double().softmax(dim=-1) - 1.0 / M  # of the float32 input
    fast = kernels.centred_softmax_(x32.clone())
    literal = x32.softmax(dim=-1) - 1.0 / M
    err_fast, err_literal, _ = assert_float32_close(fast, literal, exact)
    if scale <= 1e-2:
        assert err_fast * 10 < err_literal, (err_fast, err_literal)
    wide = torch.tensor([[0., 200., -300., 1000.]])
    assert torch.isfinite(kernels.centred_softmax_(wide)).all()


def test_centred_softmax_function_has_the_softmax_gradient():
    """``kernels.CentredSoftmax`` (the training core's centring): in float64
    its values are ``softmax - 1 / M`` and its gradient the softmax's
    (``gradcheck`` against finite differences); it leaves its input as it
    was."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 11, generator=gen, dtype=torch.float64)
    x[0, 0, 0, 0] += 40  # a peaked row
    before = x.clone()
    assert_float64_equal(
        kernels.CentredSoftmax.apply(x),
        x.softmax(dim=-1) - 1.0 / 11,
        'values',
        tol=1e-12)
    assert torch.equal(x, before)
    assert torch.autograd.gradcheck(kernels.CentredSoftmax.apply,
                                    (x.requires_grad_(), ))


@pytest.mark.parametrize('scale, gain', [(1e-3, 10), (1e-2, 4)])
def test_training_core_centres_without_cancellation(scale, gain):
    """With autograd, the chunked core's output and gradients on spread-out
    attention (small logits, and a mixing bias far larger than them: the
    bias cancels in the softmax, so only rounding noise moves it in
    training, and a loaded model may hold any) are as accurate as in
    inference: ``gain`` times closer to float64 than the literal
    computation in float32 for the output and the values' gradient
    (measured: 59x to 61x at ``scale`` 1e-3, 6.5x to 6.7x at 1e-2; the
    InstanceNorm amplifies the rounding of the logits and of the
    probabilities' centring there), and within ``GRADIENT_FACTOR`` of it
    for the others. The bias's gradient is exactly zero, the true
    value."""
    gen = torch.Generator().manual_seed(0)
    B, h, N, M, d = 2, 4, 64, 49, 16
    q = torch.randn(B, h, N, d, generator=gen, dtype=torch.float64) * scale
    k, v = torch.randn(2, B, h, M, d, generator=gen, dtype=torch.float64)
    mix, bias = torch.randn(h, h, generator=gen), torch.randn(h, generator=gen)
    grad_out = torch.randn(B, h, N, d, generator=gen, dtype=torch.float64)
    results = []
    for core, dtype in ((emsa_attention, torch.float32),
                        (literal_attention, torch.float32), (literal_attention,
                                                             torch.float64)):
        inputs = [
            t.to(dtype).requires_grad_()
            for t in (q, k, v, mix.double(), bias.double())
        ]
        out = core(*inputs)
        (out * grad_out.to(dtype)).sum().backward()
        results.append([out.detach()] + [t.grad for t in inputs])
    fast, literal, exact = results
    assert torch.count_nonzero(exact[5]) == 0 or \
        exact[5].abs().max() < 1e-12 * exact[4].abs().max()
    assert torch.count_nonzero(fast[5]) == 0, fast[5]
    for i, name in enumerate(('output', 'q', 'k', 'v', 'mix')):
        err_fast, err_literal, _ = assert_float32_close(
            fast[i],
            literal[i],
            exact[i],
            name=name,
            factor=1. if i in (0, 3) else GRADIENT_FACTOR)
        if i in (0, 3):
            assert err_fast * gain < err_literal, (name, err_fast, err_literal)
