"""The inference fast paths of ResT (eval mode, no autograd: reused
attention buffers, chunked MLP, BatchNorm folding, channels-last maps,
oneDNN linears, one-head folding) against the literal computation of
docs/network.md, with one chunk and with many; and probes that each fast path
really runs (a silent fallback fails) and that the switch
``kernels.literal()`` really selects the literal path (so that no test
compares fast with fast)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import (GRADIENT_FACTOR, TINY_V1, TINY_V2, CallCounter,
                      OpsRecorded, assert_float32_close, assert_float64_equal,
                      assert_gradients_close, float32_floor, float64_literal,
                      golden_model, literal_attention, relative_error,
                      stage_depths)

from mmrest import ResT
from mmrest.backbones import emsa_attention, kernels
from mmrest.backbones import rest as rest_module
from mmrest.backbones import to_literal
from mmrest.backbones.kernels import is_literal
from mmrest_tools.op_census import NO_KERNEL

# The functions of the fast paths, which the literal computation never calls.
FAST_FUNCTIONS = ('emsa_attention', '_attention_no_grad', '_attention_chunk',
                  'linear', 'conv_norm', 'add_drop_path')


def randomised(model):
    """Every parameter and BatchNorm statistic with a non-trivial value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
            else:
                p.uniform_(0.5, 1.5) if name.endswith('weight') else \
                    p.normal_(0, 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def count_batchnorm_calls(model):
    """A list whose length is the number of BatchNorm module calls."""
    calls = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def map_layouts(model):
    """A list that collects, for each call of the stem or a patch
    embedding, the layout of its input map: 'nchw' (contiguous),
    'channels_last' or 'strided'."""
    layouts = []

    def record(module, args):
        x = args[0]
        layouts.append('nchw' if x.is_contiguous() else 'channels_last' if x.
                       is_contiguous(
                           memory_format=torch.channels_last) else 'strided')

    for m in model.modules():
        if isinstance(m, (rest_module.Stem, rest_module.PatchEmbed)):
            m.register_forward_pre_hook(record)
    return layouts


def test_the_switch_restores_its_setting():
    """``kernels.literal()`` is on within its block only, nests, and is
    restored when the block raises."""
    assert not kernels.use_literal() and kernels.fast_paths_allowed()
    with kernels.literal():
        assert kernels.use_literal() and not kernels.fast_paths_allowed()
        with kernels.literal(False):
            assert not kernels.use_literal()
            assert kernels.fast_paths_allowed()
        assert kernels.use_literal()
    assert not kernels.use_literal() and kernels.fast_paths_allowed()
    with pytest.raises(RuntimeError, match='inside'):
        with kernels.literal():
            raise RuntimeError('inside')
    assert not kernels.use_literal()
    model = ResT(arch='lite').eval()
    with pytest.raises(ValueError, match='input channels'):
        with kernels.literal():
            model(torch.rand(1, 4, 32, 32))  # a clear error from within
    assert not kernels.use_literal()


@pytest.mark.parametrize('train', [False, True])
def test_the_switch_selects_the_literal_path(train, monkeypatch):
    """With ``kernels.literal()`` on, the model calls none of the fast
    functions and runs every BatchNorm, literal EMSA and NCHW map; with it
    off, the same model does the opposite (so that no test compares fast
    with fast)."""
    model = randomised(ResT(arch='lite')).train(train)
    fast_calls = {
        name: CallCounter(monkeypatch, kernels, name)
        for name in FAST_FUNCTIONS
    }
    sdpa = CallCounter(monkeypatch, F, 'scaled_dot_product_attention')
    one_head = CallCounter(monkeypatch, rest_module.EMSA, '_forward_one_head')
    chunked_mlp = CallCounter(monkeypatch, rest_module.Block,
                              '_forward_inference')
    literal_emsa = CallCounter(monkeypatch, rest_module.EMSA,
                               '_literal_forward')
    bn_calls = count_batchnorm_calls(model)
    layouts = map_layouts(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.set_grad_enabled(train), kernels.literal():
        model(x)
    assert {
        n: c.count
        for n, c in fast_calls.items()
    } == dict.fromkeys(FAST_FUNCTIONS, 0)
    assert sdpa.count == one_head.count == chunked_mlp.count == 0
    assert literal_emsa.count == 8  # every block of ResT-Lite
    assert len(bn_calls) == 5  # 2 in the stem, 1 per patch embedding
    assert layouts == ['nchw'] * 4  # the authors' maps, stem and embeddings
    bn_calls.clear(), layouts.clear()
    with torch.set_grad_enabled(train):
        model(x)
    assert literal_emsa.count == 8
    assert layouts == ['channels_last'] * 4
    assert fast_calls['conv_norm'].count == 5
    if train:
        assert fast_calls['emsa_attention'].count == 8
        assert fast_calls['add_drop_path'].count == 16  # two per block
        assert fast_calls['_attention_chunk'].count > 0
        assert len(bn_calls) == 5  # batch statistics: nothing to fold
    else:
        assert one_head.count == 2  # the two one-head blocks of stage 1
        assert chunked_mlp.count == 8
        assert fast_calls['emsa_attention'].count == 6  # the others
        assert fast_calls['_attention_no_grad'].count == 6
        assert fast_calls['linear'].count > 0
        assert len(bn_calls) == 0  # all five folded into their convs


@pytest.mark.parametrize('arch', ['rest', 'restv2'])
def test_drop_path_in_one_operator_drops_as_the_literal_path(arch):
    """Training with stochastic depth (rate 0.5, batch 8), the same seed:
    the fast path's sums with ``kernels.add_drop_path`` give the literal
    path's outputs (mmcv's ``DropPath``, then ``x + ...``) and gradients in
    float64, to 1e-8: the same samples dropped, the kept branches divided
    by the same keep rate. Both dropped and kept branches occur."""
    from mmcv.cnn.bricks import DropPath

    from mmrest import ResTV2
    arch_cfg = dict(
        embed_dims=[8, 16, 32, 64],
        depths=[2, 1, 1, 1],
        num_heads=[1, 2, 4, 8])
    if arch == 'rest':
        arch_cfg.update(sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4])
    cls = ResT if arch == 'rest' else ResTV2
    model = randomised(cls(arch=arch_cfg, drop_path_rate=0.5)).double()
    model.train()
    x = torch.rand(8, 3, 64, 64, dtype=torch.float64)
    results = []
    for literal in (False, True):
        torch.manual_seed(7)
        with kernels.literal(literal):
            outs = model(x)
        sum((o * o.detach().sign()).sum() for o in outs).backward()
        results.append((outs, [p.grad for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (fast, fast_grads), (lit, lit_grads) = results
    for i, (f, r) in enumerate(zip(fast, lit)):
        assert_float64_equal(f, r, f'stage {i + 1}')
    # all gradients as one vector: those of the conv biases before a
    # training BatchNorm are zero up to rounding (BatchNorm removes shifts)
    assert_float64_equal(
        torch.cat([g.flatten() for g in fast_grads]),
        torch.cat([g.flatten() for g in lit_grads]), 'gradients')
    # the draws, as DropPath makes them: two per block with a rate (rate 0
    # is nn.Identity), in the blocks' order; both sides of the masks occur
    torch.manual_seed(7)
    keeps = [
        1 - m.drop_path.drop_prob for m in model.modules()
        if isinstance(getattr(m, 'drop_path', None), DropPath)
    ]
    kept = torch.cat([(torch.rand(8, dtype=torch.float64) + keep).floor()
                      for keep in keeps for _ in range(2)])
    assert len(keeps) == 4 and 0 < kept.sum() < len(kept)


def test_add_drop_path_statistics_and_passes():
    """``x + drop_path(branch)`` sample by sample: each sample is ``x``
    (dropped) or ``x + branch / keep`` (float64, exactly up to the
    division); about ``rate`` of 4000 samples dropped (within 4 standard
    deviations); the branch's gradient is the upstream one where kept
    (divided by keep) and 0 where dropped, x's the upstream one. Eval mode,
    rate 0 (no draws, as mmcv's) and ``nn.Identity`` add the branch; another
    module is called. In training, one operator reads the (B, N, C)
    tensors in the forward and one in the backward."""
    from mmcv.cnn.bricks import DropPath
    rate, B = 0.3, 4000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, 2, generator=gen, dtype=torch.float64)
    branch = torch.randn(B, 3, 2, generator=gen, dtype=torch.float64)
    branch.requires_grad_(True)
    out = kernels.add_drop_path(x, branch, DropPath(rate).train())
    dropped = (out == x).all(-1).all(-1)
    kept = ~dropped
    assert_float64_equal(out[kept], x[kept] + branch[kept] / (1 - rate))
    sd = (rate * (1 - rate) / B)**0.5
    assert abs(dropped.double().mean().item() - rate) < 4 * sd
    out.backward(torch.ones_like(out))
    want = kept.double().view(B, 1, 1).expand_as(branch) / (1 - rate)
    assert_float64_equal(branch.grad, want, 'grad of the branch')
    y = branch.detach()
    state = torch.random.get_rng_state()
    for module in (DropPath(rate).eval(), DropPath(0.).train()):
        assert torch.equal(kernels.add_drop_path(x, y, module), x + y)
    assert torch.equal(torch.random.get_rng_state(), state)  # no draws
    assert torch.equal(kernels.add_drop_path(x, y, nn.Identity()), x + y)
    assert torch.equal(kernels.add_drop_path(x, y, nn.Tanh()), x + y.tanh())
    # (x a leaf without gradient: autograd would copy the upstream one)
    small = [x[:4].float(), y[:4].float().requires_grad_()]
    upstream = torch.ones_like(small[0])
    with OpsRecorded() as ops:
        kernels.add_drop_path(*small,
                              DropPath(rate).train()).backward(upstream)
    large = [
        n for n, size in zip(ops.names, ops.largest)
        if size == upstream.numel() and n not in NO_KERNEL
    ]
    # forward: one sum (the draws and the factor are (B, 1, 1)); backward:
    # one product (mmcv's DropPath: div, mul, add, then mul and div)
    assert large == ['addcmul', 'mul'], list(zip(ops.names, ops.largest))


def test_the_switch_selects_the_literal_path_of_rest_v2(monkeypatch):
    """ResT v2 under the switch: the authors' explicit attention in every
    block, no fused attention, no oneDNN linear, no in-place block."""
    from mmrest import ResTV2
    from mmrest.backbones import rest_v2
    model = ResTV2(
        arch=dict(
            embed_dims=[16, 32, 64, 128],
            depths=[1, 1, 2, 1],
            num_heads=[1, 2, 4, 8])).eval()
    linear = CallCounter(monkeypatch, kernels, 'linear')
    sdpa = CallCounter(monkeypatch, F, 'scaled_dot_product_attention')
    in_place = CallCounter(monkeypatch, rest_v2.BlockV2, '_forward_inference')
    literal_attend = CallCounter(monkeypatch, rest_v2.AttentionV2,
                                 '_literal_attend')
    cf_norm = CallCounter(monkeypatch, rest_v2, 'channels_first_layer_norm')
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), kernels.literal():
        model(x)
    assert linear.count == sdpa.count == in_place.count == 0
    assert literal_attend.count == 5 and cf_norm.count == 4
    with torch.no_grad():
        model(x)
    assert literal_attend.count == 5 and cf_norm.count == 4
    assert in_place.count == sdpa.count == 5 and linear.count > 0


def test_to_literal_runs_every_call_under_the_switch(monkeypatch):
    """``to_literal`` gives a copy (same class, same state dict) whose
    calls run under the switch, restored after each call, also when the
    call raises; the original model stays fast."""
    model = randomised(ResT(arch='lite')).eval()
    literal = to_literal(model)
    assert type(literal) is ResT and literal is not model
    assert is_literal(literal) and not is_literal(model)
    holder = torch.nn.Sequential(model)  # a model holding a ResT
    assert not is_literal(holder) and is_literal(to_literal(holder))
    assert list(literal.state_dict()) == list(model.state_dict())
    seen = []
    monkeypatch.setattr(rest_module.EMSA, '_literal_forward',
                        lambda self, x, hw: seen.append(1) or x)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        literal(x)
        assert len(seen) == 8 and not kernels.use_literal()
        model(x)
        assert len(seen) == 8
        with pytest.raises(ValueError, match='input channels'):
            literal(torch.rand(1, 4, 32, 32))
    assert not kernels.use_literal()
    assert is_literal(to_literal(literal)) and is_literal(literal.double())
    in_place = to_literal(model, copy_model=False)
    assert in_place is model and is_literal(model)


@pytest.mark.parametrize('literal_forward', [True, False])
def test_checkpointed_blocks_recompute_under_the_forward_switch(
        literal_forward, monkeypatch):
    """Gradient checkpointing recomputes each block in the backward pass
    (counted: once per block, none without checkpointing) with the switch
    as it was in the forward pass, wherever the backward pass runs: after
    a literal forward pass no fast function runs in the backward pass, and
    the gradients are those of the same computation without
    checkpointing, bit for bit."""
    torch.manual_seed(0)
    model = randomised(ResT(arch='lite', with_cp=True)).train()
    plain = randomised(ResT(arch='lite')).train()
    plain.load_state_dict(model.state_dict())
    blocks = sum(model.arch_settings['depths'])
    x = torch.rand(2, 3, 64, 64)
    grads = []
    for m, recomputed in ((plain, 0), (model, blocks)):
        # (before the forward pass: checkpointing keeps the bound method)
        block_calls = CallCounter(monkeypatch, rest_module.Block, '_forward')
        with kernels.literal(literal_forward):
            outs = m(x)
        assert block_calls.count == blocks
        block_calls.count = 0
        fast_calls = {
            name: CallCounter(monkeypatch, kernels, name)
            for name in FAST_FUNCTIONS
        }
        literal_calls = CallCounter(monkeypatch, rest_module.EMSA,
                                    '_literal_forward')
        with kernels.literal(not literal_forward):  # the other setting
            sum((o * o.detach().sign()).sum() for o in outs).backward()
        assert block_calls.count == recomputed
        if literal_forward:
            assert sum(c.count for c in fast_calls.values()) == 0
            assert literal_calls.count == recomputed  # one EMSA per block
        else:
            assert literal_calls.count == 0
        grads.append([p.grad for p in m.parameters()])
        monkeypatch.undo()
    for name, a, b in zip(dict(model.named_parameters()), *grads):
        assert torch.equal(a, b), name


@pytest.mark.parametrize('chunks', ['one', 'many'])
@pytest.mark.parametrize('arch,batch,size', [('lite', 1, (97, 131)),
                                             ('small', 2, (70, 45))])
def test_inference_matches_literal(arch, batch, size, chunks, monkeypatch):
    if chunks == 'many':  # a few query rows and tokens per chunk
        monkeypatch.setattr(kernels, 'CHUNK_ELEMENTS', 700)
        monkeypatch.setattr(kernels, 'MLP_CHUNK_ELEMENTS', 3000)
    model = randomised(ResT(arch=arch)).eval()
    exact = float64_literal(model)
    x = torch.rand(batch, 3, *size)
    x_before = x.clone()
    with torch.no_grad():
        outs = model(x)
        with kernels.literal():
            expected = model(x)
        exact_outs = exact(x.double())
    assert torch.equal(x, x_before)  # the input is not written to
    for i, (out, lit, ref) in enumerate(zip(outs, expected, exact_outs)):
        assert out.shape == lit.shape
        assert out.is_contiguous()  # plain NCHW, like the authors'
        assert_float32_close(
            out, lit, ref, depth=stage_depths(model)[i], name=f'stage {i + 1}')


def test_residual_mlp_chunks_share_one_buffer(monkeypatch):
    """add_residual_mlp_ (inference): ``tokens += fc2(act(fc1(norm(x))))``
    over chunks of tokens, equal to the literal formula in float64, with
    more tokens per chunk than channels and a last, shorter chunk; each
    chunk's fc2 product is written into one buffer of a chunk's rows
    (torch warns when ``out=`` has to resize it)."""
    import warnings
    torch.manual_seed(0)
    N, C, hidden, rows = 50, 8, 32, 12  # C < rows < N, 50 = 4 x 12 + 2
    monkeypatch.setattr(kernels, 'per_call', lambda elements: elements)
    monkeypatch.setattr(kernels, 'MLP_CHUNK_ELEMENTS', rows * hidden)
    norm = nn.LayerNorm(C).double()
    mlp = nn.Module()
    mlp.fc1, mlp.act, mlp.fc2 = nn.Linear(C, hidden), nn.GELU(), nn.Linear(
        hidden, C)
    mlp.double()
    tokens = torch.randn(2, N // 2, C, dtype=torch.float64)
    expected = tokens + mlp.fc2(mlp.act(mlp.fc1(norm(tokens))))
    calls = CallCounter(monkeypatch, torch, 'addmm')
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('error')
        out = kernels.add_residual_mlp_(tokens, norm, mlp)
    assert out is tokens and calls.count == 5  # ceil(50 / 12) chunks
    assert_float64_equal(out, expected, 'tokens')


def test_golden_outputs_with_many_chunks(golden, monkeypatch):
    monkeypatch.setattr(kernels, 'CHUNK_ELEMENTS', 500)
    monkeypatch.setattr(kernels, 'MLP_CHUNK_ELEMENTS', 2000)
    chunks = CallCounter(monkeypatch, torch, 'bmm')
    model = golden_model(golden).eval()
    data = golden['cases']['256x352']
    with torch.no_grad():
        outs = model(data['input'])
        n_bmm = chunks.count
        with kernels.literal():
            literal_outs = model(data['input'])
    # 500 logits per chunk and thread are a few query rows: hundreds of
    # chunks of 3 batched products each (one chunk per attention: 12)
    assert n_bmm > 300
    for i, (out, lit, ref) in enumerate(
            zip(outs, literal_outs, data['backbone_outputs_f64'])):
        assert_float32_close(
            out, lit, ref, depth=stage_depths(model)[i], name=f'stage {i + 1}')


@pytest.mark.parametrize('batch', [1, 3])
def test_attention_core_matches_the_literal_one(batch, monkeypatch):
    """The chunked core, without autograd (reused buffers, no mixing bias)
    and with it, against network.md's literal attention in float64: to 1e-8 in
    float64, and as accurate as the literal one in float32."""
    q = torch.randn(batch, 4, 50, 16)
    k, v = torch.randn(2, batch, 4, 30, 16)
    mix, mix_bias = torch.randn(4, 4), torch.randn(4) * 10
    args64 = [t.double() for t in (q, k, v, mix, mix_bias)]
    exact = literal_attention(*args64)
    literal = literal_attention(q, k, v, mix, mix_bias)
    no_grad = CallCounter(monkeypatch, kernels, '_attention_no_grad')
    for chunk_elements in (1, 700, 5000, 1 << 30):
        with torch.no_grad():
            out = emsa_attention(
                q, k, v, mix, mix_bias, chunk_elements=chunk_elements)
            out64 = emsa_attention(*args64, chunk_elements=chunk_elements)
        assert no_grad.count == 2
        no_grad.count = 0
        assert_float32_close(
            out, literal, exact, name=f'no autograd, {chunk_elements}')
        assert_float64_equal(out64, exact, f'no autograd, {chunk_elements}')
        out = emsa_attention(
            q.requires_grad_(),
            k,
            v,
            mix,
            mix_bias,
            chunk_elements=chunk_elements)
        q.requires_grad_(False)
        assert no_grad.count == 0 and out.requires_grad
        assert_float32_close(
            out.detach(), literal, exact, name=f'autograd, {chunk_elements}')


def test_attention_runs_in_query_chunks(monkeypatch):
    """A small _CHUNK_ELEMENTS makes the core work query row by query row,
    with and without autograd (counted: a fallback to one chunk fails)."""
    q = torch.randn(1, 2, 40, 8)
    k, v = torch.randn(2, 1, 2, 10, 8)
    mix = torch.randn(2, 2)
    bmm = CallCounter(monkeypatch, torch, 'bmm')
    chunk = CallCounter(monkeypatch, kernels, '_attention_chunk')
    with torch.no_grad():
        emsa_attention(q, k, v, mix)
    one_chunk = bmm.count
    assert one_chunk <= 3
    emsa_attention(q, k, v, mix.requires_grad_())
    assert chunk.count == 1
    monkeypatch.setattr(kernels, 'CHUNK_ELEMENTS', 1)  # one row each
    bmm.count = chunk.count = 0
    with torch.no_grad():
        emsa_attention(q, k, v, mix)
    assert bmm.count >= 40  # at least one product per query row
    emsa_attention(q, k, v, mix)
    assert chunk.count == 40


def test_mlp_runs_in_token_chunks(monkeypatch):
    """In inference the MLP runs over chunks of tokens (counted), with the
    literal block's output."""
    block = randomised(rest_module.Block(32, 2, sr_ratio=2)).eval()
    exact = float64_literal(block)
    x = torch.randn(1, 6 * 8, 32)
    linear = CallCounter(monkeypatch, kernels, 'linear', record=True)
    with torch.no_grad():
        with kernels.literal():
            expected = block(x, (6, 8))
        ref = exact(x.double(), (6, 8))
        assert linear.count == 0
        block(x, (6, 8))
        gelu_calls = [c for c in linear.calls if c[1].get('gelu')]
        assert len(gelu_calls) == 1  # one chunk of 48 tokens
        monkeypatch.setattr(kernels, 'MLP_CHUNK_ELEMENTS', 1)
        linear.calls.clear()
        out = block(x.clone(), (6, 8))
    gelu_calls = [c for c in linear.calls if c[1].get('gelu')]
    assert len(gelu_calls) == 48  # one token per chunk
    assert_float32_close(out, expected, ref)


def test_folded_batchnorm_gives_exact_gradients():
    """BatchNorms in eval mode (norm_eval) are folded into the convs even
    when training the rest (no BatchNorm module runs); gradients reach conv
    and norm alike, as accurate as the literal ones."""
    model = randomised(ResT(arch='lite', norm_eval=True)).train()
    literal = to_literal(model)
    exact = float64_literal(model).train()
    bn_fast, bn_literal = count_batchnorm_calls(model), \
        count_batchnorm_calls(literal)
    x = torch.rand(2, 3, 64, 80)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    xc = x.double().requires_grad_()
    outs_a, outs_b, outs_c = model(xa), literal(xb), exact(xc)
    assert len(bn_fast) == 0, 'a BatchNorm was run, not folded'
    assert len(bn_literal) == 5
    depths = stage_depths(model)
    for depth, a, b, c in zip(depths, outs_a, outs_b, outs_c):
        assert_float32_close(a, b, c, depth=depth)
    for outs in (outs_a, outs_b, outs_c):
        sum(o.square().mean() for o in outs).backward()
    assert_float32_close(
        xa.grad,
        xb.grad,
        xc.grad,
        depth=depths[-1],
        name='input grad',
        factor=GRADIENT_FACTOR)
    assert_gradients_close(model, literal, exact, depth=depths[-1])
    for name, p in model.named_parameters():
        if '.norm' in name and name.startswith(('stem.', 'patch_embed_')):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_inference_folds_batchnorm():
    model = randomised(ResT(arch='lite')).eval()
    calls = count_batchnorm_calls(model)
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert len(calls) == 0, 'a BatchNorm was run, not folded'


def test_train_mode_without_autograd_keeps_dropout():
    """No autograd but train mode (dropout on): not the inference path."""
    model = ResT(arch='lite', drop_path_rate=0.5).train()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x)[-1], model(x)[-1]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize('qkv_bias', [True, False])
@pytest.mark.parametrize('sr_ratio', [1, 4])
def test_one_head_emsa_folds_projections_exactly(qkv_bias, sr_ratio,
                                                 monkeypatch):
    """With one head, inference folds the query and output projections into
    the keys and values (a per-key bias from the query bias): the literal
    EMSA's output."""
    emsa = randomised(rest_module.EMSA(32, 1, sr_ratio,
                                       qkv_bias=qkv_bias)).eval()
    literal, exact = to_literal(emsa), float64_literal(emsa)
    folded = CallCounter(monkeypatch, rest_module.EMSA, '_forward_one_head')
    x = torch.randn(2, 9 * 11, 32)
    with torch.no_grad():
        out, expected = emsa(x, (9, 11)), literal(x, (9, 11))
        ref = exact(x.double(), (9, 11))
        assert folded.count == 1
        assert_float64_equal(emsa.double()(x.double(), (9, 11)), ref)
        emsa.float()
    assert folded.count == 2
    assert_float32_close(out, expected, ref, name='folded')
    # the training path (autograd) does not fold; it gives the same output
    out_grad = emsa(x, (9, 11))
    assert folded.count == 2
    assert out_grad.requires_grad
    assert_float32_close(out_grad.detach(), expected, ref, name='autograd')


@pytest.mark.parametrize('gelu', [False, True])
def test_inference_linear_uses_onednn(gelu, monkeypatch):
    """Without autograd, float32 linears run oneDNN's kernel (counted: a
    silent fallback fails) and compute F.linear (then the exact GELU);
    anything needing a gradient, or oneDNN switched off, takes F.linear."""
    # torch's CPU wheels (the set-up's) are built with oneDNN
    assert torch.backends.mkldnn.is_available(), 'this torch has no oneDNN'
    onednn = CallCounter(monkeypatch, kernels, 'ONEDNN_LINEAR')
    x, w, b = torch.randn(3, 70, 24), torch.randn(40, 24), torch.randn(40)

    def literal(x, w, b):
        out = F.linear(x, w, b)
        return F.gelu(out) if gelu else out

    exact = literal(x.double(), w.double(), b.double())
    expected = literal(x, w, b)
    with torch.no_grad():
        out = kernels.linear(x, w, b, gelu=gelu)
        no_bias = kernels.linear(x, w, None)
    assert onednn.count == 2
    assert_float32_close(out, expected, exact)
    assert_float32_close(no_bias, x @ w.t(), x.double() @ w.double().t())
    # oneDNN only up to ONEDNN_MAX_IN_FEATURES input features, whatever
    # the number of tokens (beyond, its float32 error exceeds MKL's)
    n = kernels.ONEDNN_MAX_IN_FEATURES
    with torch.no_grad():
        kernels.linear(torch.randn(2, 3, n), torch.randn(5, n), gelu=gelu)
        assert onednn.count == 3
        kernels.linear(torch.randn(2, 3, n + 1), torch.randn(5, n + 1))
        assert onednn.count == 3
    onednn.count = 2
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        out = kernels.linear(x, w, b, gelu=gelu)
    assert onednn.count == 2
    assert_float32_close(out, expected, exact)
    # anything needing a gradient takes F.linear, which has autograd
    w.requires_grad_(True)
    kernels.linear(x, w, b, gelu=gelu).sum().backward()
    w64 = w.detach().double().requires_grad_()
    literal(x.double(), w64, b.double()).sum().backward()
    assert relative_error(w.grad, w64.grad) <= float32_floor()
    b.requires_grad_(True)  # a bias alone needing one counts too
    kernels.linear(x, w.detach(), b, gelu=gelu).sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    assert onednn.count == 2


def test_model_inference_uses_onednn(monkeypatch):
    # torch's CPU wheels (the set-up's) are built with oneDNN
    assert torch.backends.mkldnn.is_available(), 'this torch has no oneDNN'
    onednn = CallCounter(monkeypatch, kernels, 'ONEDNN_LINEAR')
    model = ResT(arch='lite').eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert onednn.count > 0
    onednn.count = 0
    model(torch.rand(1, 3, 64, 64))  # autograd: none
    assert onednn.count == 0


# ------------------------------------------------- private APIs, guarded
def test_onednn_linear_is_used_only_if_it_computes_the_linear():
    """The private oneDNN operator is probed: one that raises with these
    arguments (a changed signature) or computes something else is not
    used, and ``linear`` falls back to ``F.linear``."""
    import torch.nn.functional as F

    def other_signature(x, w, b, attr):
        return F.linear(x, w, b)

    def other_result(x, w, b, attr, scalars, algorithm):
        return F.linear(x, w, b) + 1e-3

    def right(x, w, b, attr, scalars, algorithm):
        out = F.linear(x, w, b)
        return F.gelu(out) if attr == 'gelu' else out

    def tanh_gelu(x, w, b, attr, scalars, algorithm):  # its linear right
        out = F.linear(x, w, b)
        return F.gelu(out, approximate='tanh') if attr == 'gelu' else out

    def wrong_plain(x, w, b, attr, scalars, algorithm):  # its GELU right
        out = F.linear(x, w, b)
        return F.gelu(out) if attr == 'gelu' else out + 1e-3

    assert kernels.checked_linear_op(other_signature) is None
    assert kernels.checked_linear_op(other_result) is None
    assert kernels.checked_linear_op(tanh_gelu) is None
    assert kernels.checked_linear_op(wrong_plain) is None
    assert kernels.checked_linear_op(right) is right
    assert torch.backends.mkldnn.is_available(), 'this torch has no oneDNN'
    assert kernels.ONEDNN_LINEAR is not None, (
        'torch.ops.mkldnn._linear_pointwise is missing or changed: '
        'the CPU inference path lost its fused linears')


def test_the_kernel_choices_rules():
    """Which inputs and modules the CPU kernels take: oneDNN's linear and
    the NCHW convolutions only in float32 on the CPU outside CPU autocast;
    the fused GELU only for ``nn.GELU`` itself with the exact (erf)
    formula, never the tanh one, a subclass or another activation."""
    assert kernels.cpu_float32(torch.zeros(1))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        assert not kernels.cpu_float32(torch.zeros(1, dtype=dtype)), dtype
    assert not kernels.cpu_float32(torch.zeros(1, device='meta'))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not kernels.cpu_float32(torch.zeros(1))

    class MyGELU(nn.GELU):
        pass

    assert kernels.is_exact_gelu(nn.GELU())
    assert kernels.is_exact_gelu(nn.GELU(approximate='none'))
    for act in (nn.GELU(approximate='tanh'), MyGELU(), nn.ReLU(), nn.SiLU()):
        assert not kernels.is_exact_gelu(act), act


def test_linear_under_autograd_without_gradients(monkeypatch):
    """oneDNN's linear also runs where autograd records but nothing of the
    linear needs a gradient (a frozen stage in a training step); a tensor
    that needs one, the input or the bias alone included, takes
    ``F.linear``."""
    onednn = CallCounter(monkeypatch, kernels, 'ONEDNN_LINEAR')
    x, w, b = torch.randn(2, 5, 8), torch.randn(4, 8), torch.randn(4)
    assert torch.is_grad_enabled()
    kernels.linear(x, w, b)
    kernels.linear(x, w, None)
    assert onednn.count == 2
    for needs in ('x', 'w', 'b'):
        args = dict(x=x.clone(), w=w.clone(), b=b.clone())
        args[needs].requires_grad_(True)
        out = kernels.linear(args['x'], args['w'], args['b'])
        assert out.requires_grad and onednn.count == 2, needs


def test_sdpa_writes_the_formula_out_while_exporting_to_onnx(monkeypatch):
    """While exporting to ONNX (forced here), an explicit scale is written
    out as ``softmax(q k^T scale + mask) @ v`` (float64, with and without a
    mask, with dropout as torch's SDPA applies it), not handed to torch's
    SDPA (which torch 2.1's exporter and opsets before 14 cannot export,
    and mmdeploy rewrites dividing by the scale); without a scale, or
    outside an export, torch's own SDPA runs."""
    import torch.onnx
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, 5, 4, generator=gen).double() for _ in range(3))
    mask = torch.randn(2, 3, 5, 5, generator=gen).double()
    fused = CallCounter(monkeypatch, F, 'scaled_dot_product_attention')
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    for attn_mask in (None, mask):
        out = kernels.sdpa(q, k, v, attn_mask, scale=0.3)
        logits = q @ k.transpose(-2, -1) * 0.3
        if attn_mask is not None:
            logits = logits + attn_mask
        assert_float64_equal(out, logits.softmax(-1) @ v, 'sdpa')
    # dropout on the probabilities, as torch's SDPA applies it
    torch.manual_seed(0)
    out = kernels.sdpa(q, k, v, dropout_p=0.5, scale=0.3)
    torch.manual_seed(0)
    dropped = F.dropout((q @ k.transpose(-2, -1) * 0.3).softmax(-1), 0.5)
    assert_float64_equal(out, dropped @ v, 'sdpa with dropout')
    assert fused.count == 0
    kernels.sdpa(q, k, v)  # no explicit scale: torch's own
    assert fused.count == 1
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: False)
    fused.count = 0
    kernels.sdpa(q, k, v, scale=0.3)
    assert fused.count == 1


def test_crop_to_tokens_is_a_view_eagerly():
    """Eagerly, the crop of a whole channels-last map is its tokens without
    a copy (the docstring's promise); a smaller crop holds the top-left
    rows and columns."""
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    tokens = kernels.crop_to_tokens(x, (4, 5))
    assert tokens.data_ptr() == x.data_ptr()
    assert torch.equal(tokens, x.flatten(2).transpose(1, 2))
    crop = kernels.crop_to_tokens(x, (3, 2))
    assert torch.equal(crop, x[:, :, :3, :2].flatten(2).transpose(1, 2))


def test_nchw_convolution_rule():
    """Which convolutions run on an NCHW copy (:func:`kernels.run_conv`):
    dense ones of at least ``NCHW_CONV_TERMS`` terms on a channels-last
    float32 CPU map, fast paths allowed, oneDNN on, where nothing needs a
    gradient (autograd may be recording); each condition alone failing
    keeps the map's own layout. Either way the values are the conv's and
    the output is channels-last."""
    cl = torch.channels_last
    conv = nn.Conv2d(16, 8, 3, padding=1).requires_grad_(False)  # 144 terms
    assert 16 * 9 >= kernels.NCHW_CONV_TERMS > 8 * 9
    x = torch.randn(2, 16, 7, 9).contiguous(memory_format=cl)
    rule = kernels._nchw_conv
    with torch.no_grad():
        assert rule(conv, x, conv.weight, conv.bias)
    assert rule(conv, x, conv.weight, conv.bias)  # a frozen conv, autograd on
    with torch.no_grad():
        assert not rule(conv, x.contiguous(), conv.weight)  # NCHW already
        assert not rule(conv, x.double(), conv.weight)
        assert not rule(nn.Conv2d(8, 8, 3), x[:, :8], conv.weight)  # 72
        assert not rule(nn.Conv2d(16, 8, 3, groups=2), x, conv.weight)
        with kernels.literal():
            assert not rule(conv, x, conv.weight)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not rule(conv, x, conv.weight)
    w = conv.weight.detach().clone().requires_grad_(True)
    assert not rule(conv, x, w)
    assert not rule(conv, x.clone().requires_grad_(True), conv.weight)
    with torch.no_grad():
        assert rule(conv, x, w)
    with torch.no_grad():
        out = kernels.run_conv(conv, x)
        assert out.is_contiguous(memory_format=cl)
        expected = F.conv2d(
            x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        assert_float32_close(out, conv(x.contiguous()), expected)


def test_layout_of_a_map():
    """The layout a map is dense in: channels-last only where it is that
    and not also NCHW (one channel, or 1 x 1 maps, are both: NCHW), NCHW
    for NCHW maps, for maps dense in neither and for tokens."""
    cl, nchw = torch.channels_last, torch.contiguous_format
    x = torch.randn(2, 3, 4, 5)
    assert kernels._layout_of(x) == nchw
    assert kernels._layout_of(x.contiguous(memory_format=cl)) == cl
    for both in (torch.randn(2, 1, 4, 5), torch.randn(2, 3, 1, 1)):
        both = both.contiguous(memory_format=cl)
        assert both.is_contiguous() and kernels._layout_of(both) == nchw
    assert kernels._layout_of(x[:, :, :, ::2]) == nchw  # dense in neither
    assert kernels._layout_of(torch.randn(2, 5, 3).transpose(1, 2)) == nchw


def test_conv_norm_folds_only_zero_padded_convs(monkeypatch):
    """An eval-mode BatchNorm after a zero-padded conv is folded into it:
    one ``F.conv2d`` with the folded weight and bias (``w * g / sqrt(var +
    eps)``, ``(b - mean) * g / sqrt(var + eps) + beta``, computed here in
    float64) and no BatchNorm call. After a reflect-padded conv (whose
    padded border the folded bias would not see as the BatchNorm does) the
    two modules run as they are. Both give ``norm(conv(x))``."""
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode='reflect')
    norm = torch.nn.BatchNorm2d(4).eval()
    torch.nn.init.uniform_(norm.running_var, 0.5, 2.)
    torch.nn.init.normal_(norm.running_mean)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(1, 3, 9, 11)
    bn_calls = count_batchnorm_calls(norm)
    conv2d = CallCounter(monkeypatch, F, 'conv2d', record=True)
    with torch.no_grad():
        expected = norm(conv(x))
        bn_calls.clear(), conv2d.calls.clear()
        out = kernels.conv_norm(conv, norm, x)
        assert len(bn_calls) == 1, 'the reflect-padded conv was folded'
        ((args, _), ) = conv2d.calls
        assert args[1] is conv.weight
        assert torch.allclose(out, expected, atol=1e-6)

        conv.padding_mode = 'zeros'
        expected = norm(conv(x))
        bn_calls.clear(), conv2d.calls.clear()
        out = kernels.conv_norm(conv, norm, x)
        assert len(bn_calls) == 0, 'the zero-padded conv was not folded'
        ((args, _), ) = conv2d.calls
        scale = norm.weight.double() / torch.sqrt(norm.running_var.double() +
                                                  norm.eps)
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        bias = (conv.bias.double() - norm.running_mean.double()) * scale + \
            norm.bias.double()
        # float32 folding: a few roundings of 6e-8 each
        assert relative_error(args[1].double(), weight) < 1e-6
        assert relative_error(args[2].double(), bias) < 1e-6
        assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize('family', ['v1', 'v2'])
@pytest.mark.parametrize('case', ['frozen stem, train', 'eval'])
def test_with_cp_checkpoints_wherever_autograd_records(family, case,
                                                       monkeypatch):
    """One rule for ``with_cp`` in both families: every block is
    checkpointed whenever autograd records, in train and eval mode, also
    the blocks behind a frozen stem whose input needs no gradient (counted:
    each block recomputed once in the backward pass); the gradients are
    those of the same model without checkpointing (float64)."""
    from mmrest import ResTV2
    from mmrest.backbones import rest_v2
    cls, arch, block = (ResT, TINY_V1, rest_module.Block) if family == 'v1' \
        else (ResTV2, TINY_V2, rest_v2.BlockV2)
    frozen = 0 if case.startswith('frozen') else -1
    models = [
        randomised(cls(arch, with_cp=with_cp, frozen_stages=frozen))
        for with_cp in (False, True)
    ]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    grads = []
    for model, recomputed in zip(models, (0, sum(arch['depths']))):
        model.double().train(frozen == 0)
        calls = CallCounter(monkeypatch, block, '_forward')
        outs = model(x)
        calls.count = 0
        sum((o * o.detach().sign()).sum() for o in outs).backward()
        assert calls.count == recomputed
        grads.append({
            n: p.grad
            for n, p in model.named_parameters() if p.requires_grad
        })
        monkeypatch.undo()
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        if not grad.any():  # an exactly zero gradient (EMSA's mixing bias)
            assert not grads[1][name].any(), name
        else:
            assert relative_error(grads[1][name], grad) <= 1e-12, name
