"""ResT against docs/network.md and the authors' reference data."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import (ERROR_FACTOR, CallCounter, SavedForBackward,
                      assert_float32_close, assert_float64_equal,
                      assert_frozen_stages, assert_gradients_close,
                      float32_errors, float32_floor, float64_literal,
                      golden_model, stage_depths)

from mmrest import ResT
from mmrest.backbones import rest as rest_module
from mmrest.backbones import to_literal

# The authors' classifiers, 1000-class head included (docs/network.md).
PARAMS_M = {'lite': 10.51, 'small': 13.68, 'base': 30.33, 'large': 51.68}


def classifier_logits(stage4, golden):
    """The authors' classifier: pooled `norm`-ed stage 4, then `head`."""
    state = golden['state_dict']
    return F.linear(
        stage4.mean(dim=(2, 3)), state['head.weight'].to(stage4.dtype),
        state['head.bias'].to(stage4.dtype))


@pytest.mark.parametrize('case', ['224x224', '256x352'])
def test_golden_outputs(golden, case):
    """Float32 outputs as close to the authors' float64 ones as the literal
    (authors') computation's own float32 outputs are on this CPU, and those
    as close as the authors' float32 outputs (made on another CPU)."""
    model = golden_model(golden).eval()
    literal = to_literal(model)
    data = golden['cases'][case]
    with torch.no_grad():
        outs, literal_outs = model(data['input']), literal(data['input'])
    assert len(outs) == 4
    depths = stage_depths(model)
    for i, (out, lit, authors, exact) in enumerate(
            zip(outs, literal_outs, data['backbone_outputs'],
                data['backbone_outputs_f64'])):
        assert out.shape == exact.shape, f'stage {i + 1}'
        assert_float32_close(
            out, lit, exact, depth=depths[i], name=f'stage {i + 1}')
        err_literal, err_authors = float32_errors(lit, authors, exact)
        assert err_literal <= ERROR_FACTOR * err_authors + float32_floor(
            depths[i]), (f'literal, stage {i + 1}', err_literal, err_authors)
    assert_float32_close(
        classifier_logits(outs[-1], golden),
        classifier_logits(literal_outs[-1], golden),
        data['logits_f64'],
        depth=depths[-1] + 1,
        name='logits')


@pytest.mark.parametrize('case', ['224x224', '256x352'])
def test_golden_outputs_in_float64(golden, case):
    """In float64 both the fast and the literal computation give the
    authors' float64 outputs (1e-8: any difference in the formula shows)."""
    model = golden_model(golden).eval().double()
    literal = to_literal(model)
    data = golden['cases'][case]
    x = data['input'].double()
    with torch.no_grad():
        outs, literal_outs = model(x), literal(x)
    for i, (out, lit, exact) in enumerate(
            zip(outs, literal_outs, data['backbone_outputs_f64'])):
        assert_float64_equal(out, exact, f'fast, stage {i + 1}')
        assert_float64_equal(lit, exact, f'literal, stage {i + 1}')
    assert_float64_equal(
        classifier_logits(outs[-1], golden), data['logits_f64'], 'logits')


def test_golden_detects_a_wrong_weight(golden):
    """The comparison is sharp: one perturbed weight breaks the bound."""
    model = golden_model(golden).eval()
    literal = to_literal(model)
    data = golden['cases']['224x224']
    with torch.no_grad():
        model.stage3[1].attn.transform_conv.weight[0, 1] += 0.05
        out = model(data['input'])[2]
        lit = literal(data['input'])[2]
    err, err_literal = float32_errors(out, lit,
                                      data['backbone_outputs_f64'][2])
    depth = stage_depths(model)[2]
    assert err > 10 * (ERROR_FACTOR * err_literal + float32_floor(depth))


@pytest.mark.parametrize('arch', list(PARAMS_M))
def test_keys_shapes_and_params_match_the_authors(arch, official_shapes):
    # Stage 4 only: the classifier has no norm1..norm3.
    model = ResT(arch=arch, out_indices=(3, ))
    official = official_shapes[f'rest_{arch}']
    head = {k: v for k, v in official.items() if k.startswith('head.')}
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: v for k, v in official.items() if k not in head}

    n_params = sum(p.numel() for p in model.parameters())
    n_params += sum(torch.Size(s).numel() for s in head.values())
    assert round(n_params / 1e6, 2) == PARAMS_M[arch]


def test_output_norms_exist_only_for_returned_stages():
    model = ResT(arch='lite', out_indices=(1, 3))
    names = {n.split('.')[0] for n, _ in model.named_parameters()}
    assert 'norm2' in names and 'norm' in names
    assert not {'norm1', 'norm3'} & names
    outs = model.eval()(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 512]


@pytest.mark.parametrize('arch', ['lite', 'small', 'base', 'large'])
def test_any_input_size(arch):
    model = ResT(arch=arch).eval()
    dims = model.embed_dims
    for h, w in [(97, 131), (225, 225), (800, 1333)]:
        with torch.no_grad():
            outs = model(torch.rand(1, 3, h, w))
        for i, out in enumerate(outs):
            # every stride-2 conv gives ceil(size / 2)
            eh, ew = h, w
            for _ in range(i + 2):
                eh, ew = -(-eh // 2), -(-ew // 2)
            assert out.shape == (1, dims[i], eh, ew), (h, w, i)
            assert torch.isfinite(out).all()
        if arch != 'lite':
            break  # the other sizes once (lite) are enough


def test_odd_sizes_match_literal_attention():
    model = ResT(arch='lite').eval()
    literal, exact = to_literal(model), float64_literal(model)
    x = torch.rand(1, 3, 97, 131)
    with torch.no_grad():
        outs = zip(model(x), literal(x), exact(x.double()))
        for depth, (a, b, ref) in zip(stage_depths(model), outs):
            assert_float32_close(a, b, ref, depth=depth)


def _trainable(module):
    return [p.requires_grad for p in module.parameters()]


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3])
def test_frozen_stages(frozen_stages):
    # stages 1-3 have an output norm only when returned (all here), stage 4
    # the final norm
    assert_frozen_stages(
        ResT(arch='lite', frozen_stages=frozen_stages),
        frozen_stages,
        sizes=[2, 3, 3, 3])


def test_frozen_stages_get_no_gradient():
    model = ResT(arch='lite', frozen_stages=2).train()
    sum(o.sum() for o in model(torch.rand(2, 3, 64, 64))).backward()
    assert model.stage2[0].attn.q.weight.grad is None
    assert model.patch_embed_2.conv.weight.grad is None
    assert model.stage3[0].attn.q.weight.grad is not None


def test_norm_eval():
    model = ResT(arch='lite', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert model.stage1[0].training
    before = model.stem.norm1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(before, model.stem.norm1.running_mean)
    assert all(
        bn.training for bn in ResT(arch='lite').train().modules()
        if isinstance(bn, nn.BatchNorm2d))


def test_with_cp_recomputes_every_block_and_saves_less(monkeypatch):
    """Gradient checkpointing: every block's forward runs again in the
    backward pass (without with_cp never), autograd keeps under half the
    plain model's memory for the backward pass, and outputs and
    gradients are the plain model's, both measured against the literal
    computation in float64."""
    plain = ResT(arch='lite', drop_path_rate=0.)
    cp = ResT(arch='lite', with_cp=True)
    cp.load_state_dict(plain.state_dict())
    plain.train(), cp.train()
    exact = float64_literal(plain).train()
    x = torch.rand(2, 3, 64, 96)
    blocks = sum(plain.arch_settings['depths'])
    calls = CallCounter(monkeypatch, rest_module.Block, '_forward')
    with SavedForBackward() as saved_plain:
        outs_plain = plain(x)
    with SavedForBackward() as saved_cp:
        outs_cp = cp(x)
    assert calls.count == 2 * blocks  # one forward each
    outs_exact = exact(x.double())
    depths = stage_depths(plain)
    for depth, a, b, ref in zip(depths, outs_cp, outs_plain, outs_exact):
        assert_float32_close(a, b, ref, depth=depth)
    # the checkpointed blocks keep their inputs only (measured: 0.19)
    assert saved_cp.nbytes < saved_plain.nbytes / 2, (saved_cp.nbytes,
                                                      saved_plain.nbytes)
    calls.count = 0
    sum(o.square().sum() for o in outs_plain).backward()
    assert calls.count == 0  # nothing to recompute
    sum(o.square().sum() for o in outs_cp).backward()
    assert calls.count == blocks  # each block recomputed once
    sum(o.square().sum() for o in outs_exact).backward()
    assert_gradients_close(cp, plain, exact, depth=depths[-1])


def test_init_weights_follow_spec():
    model = ResT(arch='lite')
    model.init_weights()
    q = model.stage2[0].attn.q
    # the authors' trunc_normal_(std=.02) truncates at +-2 (absolute)
    assert abs(q.weight.std().item() - 0.02) < 0.002
    assert abs(q.weight.mean().item()) < 0.002
    assert torch.all(q.bias == 0)
    assert torch.all(model.norm.weight == 1) and torch.all(
        model.norm.bias == 0)
    assert torch.all(model.stem.pos.pa_conv.bias == 0)


def test_drop_path_rates_rise_linearly():
    """Block i of all sum(depths) blocks (counted from the input) gets
    the rate drop_path_rate * i / (sum(depths) - 1), the authors'
    ``torch.linspace(0, drop_path_rate, sum(depths))`` (wofmanaf/ResT
    models/rest.py), written out here in float64; rate 0 is no DropPath."""
    rate = 0.1
    model = ResT(arch='small', drop_path_rate=rate)
    blocks = [b for i in range(1, 5) for b in getattr(model, f'stage{i}')]
    assert len(blocks) == sum(model.arch_settings['depths']) == 12
    assert isinstance(blocks[0].drop_path, nn.Identity)
    for i, block in enumerate(blocks[1:], start=1):
        expected = rate * i / (len(blocks) - 1)
        assert block.drop_path.drop_prob == pytest.approx(
            expected, rel=1e-6), f'block {i}'  # float32 linspace
