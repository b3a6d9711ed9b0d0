"""ResT v2 against docs/network.md ("ResT v2"), the authors' reference data
and float64 computations: outputs, logits, keys, parameter counts, sizes,
gradients, precision, training options, weights and the COCO configs."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import (CPU_FLOAT16, NEEDS_CPU_FLOAT16, ROOT, CallCounter,
                      SavedForBackward, assert_float32_close,
                      assert_frozen_stages, build_detector, float32_floor)
from _helpers import golden_arch_v2 as golden_arch
from _helpers import golden_backbone_state_v2 as backbone_state
from _helpers import golden_model_v2 as golden_model
from _helpers import relative_error, stage_depths, v2_reduction_terms

from mmrest import ResT, ResTV2
from mmrest.backbones import to_literal
from mmrest.checkpoint import (CheckpointError, check_checkpoint_family,
                               checkpoint_family)
from mmrest.utils import torch_compat

# The authors' classifiers, 1000-class head included (docs/network.md).
PARAMS_M = {'tiny': 30.43, 'small': 41.21, 'base': 55.97, 'large': 86.53}
# Mask R-CNN with these backbones, measured with mmdet (docs/network.md).
MASK_RCNN_PARAMS_M = {'tiny': 49.94, 'small': 60.71, 'base': 75.47}
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
# Error bounds: a float32 result may be 4x as far from the float64 one as the
# authors' own float32 result is, plus a few units of float32 rounding of the
# result itself (the floor); float64 results likewise with float64's eps.
FACTOR = 4
FLOOR32 = 4 * EPS32
FLOOR64 = 64 * EPS64


@pytest.fixture(scope='module')
def golden(golden_v2):
    return golden_v2


@pytest.fixture(scope='module')
def official_shapes(official_shapes_v2):
    return official_shapes_v2


def classifier_logits(model, golden, x):
    """The authors' classifier from the state dict: LayerNorm `norm` (eps
    1e-6) on the stage-4 tokens, the mean over tokens, Linear `head`."""
    tokens = []
    hook = model.stage4[-1].register_forward_hook(
        lambda m, args, out: tokens.append(out))
    try:
        model(x)
    finally:
        hook.remove()
    sd = golden['state_dict']
    dtype = tokens[0].dtype
    x = F.layer_norm(
        tokens[0],
        tokens[0].shape[-1:],
        sd['norm.weight'].to(dtype),
        sd['norm.bias'].to(dtype),
        eps=1e-6)
    return F.linear(
        x.mean(dim=1), sd['head.weight'].to(dtype), sd['head.bias'].to(dtype))


CASES = ['224x224', '256x352']


# ----------------------------------------------------------- reference data
@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('path', ['fast', 'graph'])
def test_golden_outputs_within_the_literal_float32_error(golden, case, path):
    """'fast': eval mode without autograd (the eager inference path);
    'graph': with autograd on, the standard operators that traces, exports
    and training see. Against the authors' float64 outputs, each within the
    bound of the literal (authors') computation's own float32 error on
    this CPU (``tests/_helpers.py``)."""
    model = golden_model(golden).eval()
    literal = to_literal(model)
    data = golden['cases'][case]
    with torch.set_grad_enabled(path == 'graph'):
        outs = list(model(data['input']))
        outs.append(classifier_logits(model, golden, data['input']))
    with torch.no_grad():
        lits = list(literal(data['input']))
        lits.append(classifier_logits(literal, golden, data['input']))
    exact = list(data['backbone_outputs_f64']) + [data['logits_f64']]
    depths = stage_depths(model)
    depths.append(depths[-1] + 1)  # the classifier's norm and head
    for i, (ours, lit, ref,
            depth) in enumerate(zip(outs, lits, exact, depths)):
        assert ours.shape == ref.shape and ours.dtype == torch.float32, i
        assert_float32_close(
            ours.detach(),
            lit,
            ref,
            name=f'{path} output {i + 1}',
            floor=float32_floor(depth, v2_reduction_terms(model)))


@pytest.mark.parametrize('case', CASES)
def test_literal_golden_outputs_within_the_authors_float32_error(golden, case):
    """The literal computation on this CPU as close to the authors' float64
    outputs as the authors' own float32 outputs (made on another CPU), by
    the same rule (``ERROR_FACTOR`` and the depth floor)."""
    literal = to_literal(golden_model(golden).eval())
    data = golden['cases'][case]
    with torch.no_grad():
        outs = list(literal(data['input']))
        outs.append(classifier_logits(literal, golden, data['input']))
    authors = list(data['backbone_outputs']) + [data['logits']]
    exact = list(data['backbone_outputs_f64']) + [data['logits_f64']]
    depths = stage_depths(literal)
    depths.append(depths[-1] + 1)
    for i, (ours, theirs, ref,
            depth) in enumerate(zip(outs, authors, exact, depths)):
        assert_float32_close(
            ours,
            theirs,
            ref,
            name=f'literal output {i + 1}',
            floor=float32_floor(depth, v2_reduction_terms(literal)))


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('path', ['fast', 'literal'])
def test_golden_outputs_in_float64(golden, case, path):
    """Run in float64, the model equals the authors' float64 computation to
    float64 rounding."""
    model = golden_model(golden).double().eval()
    if path == 'literal':
        model = to_literal(model)
    data = golden['cases'][case]
    with torch.no_grad():
        x = data['input'].double()
        outs = list(model(x)) + [classifier_logits(model, golden, x)]
    exact = list(data['backbone_outputs_f64']) + [data['logits_f64']]
    authors = list(data['backbone_outputs']) + [data['logits']]
    for i, (ours, ref, f32) in enumerate(zip(outs, exact, authors)):
        # The authors' float32 error, scaled to float64's precision.
        bound = FACTOR * relative_error(f32.double(), ref) * EPS64 / EPS32
        assert relative_error(ours, ref) <= bound + FLOOR64, i


def test_golden_detects_a_perturbed_weight(golden):
    """The bound is sharp: a 1e-3 change of one value-branch weight breaks
    it."""
    model = golden_model(golden).eval()
    literal = to_literal(model)
    data = golden['cases']['224x224']
    with torch.no_grad():
        model.stage2[0].attn.up[0].weight[5, 0, 1, 1] += 1e-3
        out = model(data['input'])[1]
        lit = literal(data['input'])[1]
    with pytest.raises(AssertionError, match='stage 2'):
        assert_float32_close(
            out,
            lit,
            data['backbone_outputs_f64'][1],
            name='stage 2',
            floor=float32_floor(
                stage_depths(model)[1], v2_reduction_terms(model)))


# ---------------------------------------------------- names and parameters
@pytest.mark.parametrize('arch', list(PARAMS_M))
def test_keys_shapes_and_params_match_the_authors(arch, official_shapes):
    model = ResTV2(arch=arch)
    official = official_shapes[f'restv2_{arch}']
    classifier = {
        k: v
        for k, v in official.items() if k.startswith(('norm.', 'head.'))
    }
    assert set(classifier) == {
        'norm.weight', 'norm.bias', 'head.weight', 'head.bias'
    }
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    dense = {f'norm_{i}.{p}' for i in range(1, 5) for p in ('weight', 'bias')}
    assert set(ours) - set(official) == dense
    assert {
        k: v
        for k, v in ours.items() if k not in dense
    } == {
        k: v
        for k, v in official.items() if k not in classifier
    }
    # classifier params: backbone without norm_1..4, plus norm and head
    n_params = sum(p.numel() for n, p in model.named_parameters()
                   if not n.startswith('norm_'))
    n_params += sum(torch.Size(s).numel() for s in classifier.values())
    assert round(n_params / 1e6, 2) == PARAMS_M[arch]


def test_arch_aliases_dict_and_errors():
    assert ResTV2('t').arch_settings == ResTV2('tiny').arch_settings
    assert ResTV2('LARGE').arch_settings['num_heads'] == [2, 4, 8, 16]
    # mmpretrain's one-letter aliases: 'l' is large, for v1 too (lite has
    # none)
    assert ResTV2('l').arch_settings == ResTV2('large').arch_settings
    assert ResT('l').arch_settings == ResT('large').arch_settings
    assert ResT('s').arch_settings == ResT('small').arch_settings
    for name in ('lg', 'lt'):
        with pytest.raises(KeyError, match='Unknown ResT'):
            ResT(name)
    with pytest.raises(ValueError, match='integers >= 1'):
        ResT(dict(ResT('lite').arch_settings, embed_dims=[64, 128, 256, .5]))
    custom = ResTV2(
        dict(
            embed_dims=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            num_heads=[1, 2, 4, 8]))
    assert custom.arch_settings['sr_ratios'] == [8, 4, 2, 1]
    assert custom.arch_settings['mlp_ratios'] == [4, 4, 4, 4]
    with pytest.raises(KeyError, match='Unknown ResTV2 arch'):
        ResTV2('lite')
    with pytest.raises(KeyError, match='lacks the keys'):
        ResTV2(dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]))
    with pytest.raises(KeyError, match='Unknown keys'):
        ResTV2(
            dict(
                embed_dims=[8, 16, 32, 64],
                depths=[1, 1, 1, 1],
                num_heads=[1, 2, 4, 8],
                qkv_bias=False))
    with pytest.raises(ValueError, match='one value per stage'):
        ResTV2(
            dict(
                embed_dims=[8, 16, 32],
                depths=[1, 1, 1, 1],
                num_heads=[1, 2, 4, 8]))
    with pytest.raises(ValueError, match='not divisible'):
        ResTV2(
            dict(
                embed_dims=[8, 16, 32, 64],
                depths=[1, 1, 1, 1],
                num_heads=[3, 2, 4, 8]))
    with pytest.raises(ValueError, match='out_indices'):
        ResTV2('tiny', out_indices=(0, 4))
    with pytest.raises(ValueError, match='frozen_stages'):
        ResTV2('tiny', frozen_stages=4)
    with pytest.raises(ValueError, match='3 input channels'):
        ResTV2(custom.arch_settings)(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        ResTV2(custom.arch_settings)(torch.rand(3, 32, 32))


def test_output_norms_exist_only_for_returned_stages():
    model = ResTV2('tiny', out_indices=(1, 3))
    names = {n.split('.')[0] for n, _ in model.named_parameters()}
    assert {'norm_2', 'norm_4'} <= names
    assert not {'norm_1', 'norm_3', 'norm'} & names
    outs = model.eval()(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 8, 8), (1, 768, 2, 2)]


def test_registered_in_mmdet_and_mmseg():
    """Built through mmdet's registry and found in mmseg's, whatever default
    scope an earlier test's Runner left (test_compile.py's left one in
    which the build failed with a KeyError)."""
    from mmdet.registry import MODELS as DET
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = DET.build(dict(type='ResTV2', arch='tiny'))
    assert isinstance(model, ResTV2)
    from mmseg.registry import MODELS as SEG
    with DefaultScope.overwrite_default_scope('mmseg'):
        assert SEG.get('ResTV2') is ResTV2


# -------------------------------------------------------------- any size
def expected_size(size, stage):
    for _ in range(stage + 2):  # each stride-2 conv gives ceil(size / 2)
        size = -(-size // 2)
    return size


SIZES = [(1, 1), (2, 3), (31, 17), (97, 131), (225, 225), (800, 1333)]


@pytest.mark.parametrize('hw', SIZES)
def test_any_size_matches_the_literal_and_float64(golden, hw):
    """Any input size, value branch cropped to the token grid: the fast and
    the literal float32 paths are within a factor of each other's error,
    both against float64. The float64 reference is the literal path, or at
    800x1333 (where it is slow) the fast path, which equals the literal one
    in float64 (the golden and gradient tests)."""
    model = golden_model(golden).eval()
    literal = to_literal(model)
    if hw == (800, 1333):
        exact_model = golden_model(golden).double().eval()
    else:
        exact_model = to_literal(model).double()
    torch.manual_seed(1)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        fast, lit, exact = model(x), literal(x), exact_model(x.double())
    for i, (a, b, ref) in enumerate(zip(fast, lit, exact)):
        assert a.shape == (1, model.embed_dims[i], expected_size(hw[0], i),
                           expected_size(hw[1], i)), (hw, i)
        err_fast = relative_error(a.double(), ref)
        err_lit = relative_error(b.double(), ref)
        # each within the other's bound: a formula error shared by the
        # reference and one path shows as a large error of the other path
        assert err_fast <= FACTOR * err_lit + FLOOR32, (hw, i)
        assert err_lit <= FACTOR * err_fast + FLOOR32, (hw, i)


@pytest.mark.parametrize('arch', ['tiny', 'large'])
def test_variants_any_size_shapes(arch):
    model = ResTV2(arch=arch).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 97, 131))
    for i, out in enumerate(outs):
        assert out.shape == (1, model.embed_dims[i], expected_size(97, i),
                             expected_size(131, i))
        assert torch.isfinite(out).all()


# -------------------------------------------------------------- gradients
def _grads(model, x, seed=0):
    outs = model(x)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
               for o in outs)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_gradients_match_the_literal_and_float64(golden):
    """Training mode (BatchNorm on batch statistics): every parameter's
    float32 gradient is within the bound of the literal path's float32
    error, against the literal path in float64."""
    x = torch.randn(2, 3, 70, 90)
    fast = _grads(golden_model(golden).train(), x)
    lit = _grads(to_literal(golden_model(golden)).train(), x)
    exact = _grads(
        to_literal(golden_model(golden)).double().train(), x.double())
    whole = [
        torch.cat([g[n].flatten().double() for n in exact])
        for g in (fast, lit)
    ]
    ref = torch.cat([g.flatten() for g in exact.values()])
    assert relative_error(whole[0], ref) <= \
        FACTOR * relative_error(whole[1], ref) + FLOOR32
    for name, ref in exact.items():
        err_lit = relative_error(lit[name].double(), ref)
        assert relative_error(fast[name].double(), ref) <= \
            FACTOR * err_lit + FLOOR32, name


def test_float64_gradients_equal_the_literal(golden):
    x = torch.randn(1, 3, 45, 61, dtype=torch.float64)
    fast = _grads(golden_model(golden).double().train(), x)
    lit = _grads(to_literal(golden_model(golden)).double().train(), x)
    for name, ref in lit.items():
        assert relative_error(fast[name], ref) <= 1e3 * EPS64, name


# ---------------------------------------------------------- training options
def test_with_cp_recomputes_every_block_and_saves_less(golden, monkeypatch):
    """Gradient checkpointing: every block's forward runs again in the
    backward pass (without with_cp never), autograd keeps under half the
    plain model's memory for the backward pass, and outputs and
    gradients are the plain model's (float64)."""
    from mmrest.backbones import rest_v2
    plain = golden_model(golden, drop_path_rate=0.).double().train()
    cp = golden_model(golden, with_cp=True).double().train()
    blocks = sum(plain.arch_settings['depths'])
    calls = CallCounter(monkeypatch, rest_v2.BlockV2, '_forward')
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with SavedForBackward() as saved_plain:
        outs_plain = plain(x)
    with SavedForBackward() as saved_cp:
        outs_cp = cp(x)
    assert calls.count == 2 * blocks  # one forward each
    for a, b in zip(outs_plain, outs_cp):
        assert torch.equal(a, b)
    # the checkpointed blocks keep their inputs only (measured: 0.31)
    assert saved_cp.nbytes < saved_plain.nbytes / 2, (saved_cp.nbytes,
                                                      saved_plain.nbytes)
    grads = []
    for model, outs, recomputed in ((plain, outs_plain, 0), (cp, outs_cp,
                                                             blocks)):
        calls.count = 0
        g = torch.Generator().manual_seed(0)
        sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
            for o in outs).backward()
        assert calls.count == recomputed
        grads.append({n: p.grad for n, p in model.named_parameters()})
    ga, gb = grads
    for name in ga:
        assert relative_error(gb[name], ga[name]) <= 1e3 * EPS64, name


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3])
def test_frozen_stages(frozen_stages):
    # the stem holds stage 1's token norm; every returned stage has norm_i
    assert_frozen_stages(
        ResTV2('tiny', frozen_stages=frozen_stages),
        frozen_stages,
        sizes=[2, 3, 3, 3])


def test_frozen_stages_get_no_gradient():
    model = ResTV2('tiny', frozen_stages=2).train()
    sum(o.sum() for o in model(torch.rand(2, 3, 64, 64))).backward()
    assert model.stage2[0].attn.q.weight.grad is None
    assert model.patch_2.proj.weight.grad is None
    assert model.norm_2.weight.grad is None
    assert model.stage3[0].attn.up[0].weight.grad is not None
    assert model.patch_3.proj.weight.grad is not None


def test_norm_eval():
    model = ResTV2('tiny', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and all(not bn.training for bn in bns)
    assert model.stage1[0].training
    before = model.stem.proj[1].running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(before, model.stem.proj[1].running_mean)
    assert all(
        bn.training for bn in ResTV2('tiny').train().modules()
        if isinstance(bn, nn.BatchNorm2d))


def test_drop_path_rates_rise_linearly():
    """Block i of all sum(depths) blocks (counted from the input) gets
    the rate drop_path_rate * i / (sum(depths) - 1), the authors'
    ``torch.linspace(0, drop_path_rate, sum(depths))`` (wofmanaf/ResT
    models/rest_v2.py), written out here in float64; rate 0 is no
    DropPath."""
    rate = 0.2
    model = ResTV2('small', drop_path_rate=rate)
    blocks = [b for i in range(1, 5) for b in getattr(model, f'stage{i}')]
    assert len(blocks) == 17  # depths 1, 2, 12, 2
    assert isinstance(blocks[0].drop_path, nn.Identity)
    for i, block in enumerate(blocks[1:], start=1):
        expected = rate * i / (len(blocks) - 1)
        assert block.drop_path.drop_prob == pytest.approx(
            expected, rel=1e-6), f'block {i}'  # float32 linspace
    with pytest.raises(ValueError, match='drop_path_rate'):
        ResTV2('tiny', drop_path_rate=1.0)


def test_init_weights_follow_spec():
    model = ResTV2('tiny')
    model.init_weights()
    up = model.stage1[0].attn.up[0]
    for w in (model.stage2[0].attn.q.weight, up.weight):
        assert abs(w.std().item() - 0.02) < 0.002
        assert abs(w.mean().item()) < 0.002
    assert torch.all(up.bias == 0)
    for norm in (model.norm_1, model.stage1[0].attn.up_norm, model.stem.norm,
                 model.stem.proj[1]):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert all(m.eps == 1e-6 for m in model.modules()
               if isinstance(m, nn.LayerNorm))


# --------------------------------------------------------------- precision
@pytest.mark.parametrize('dtype', [torch.bfloat16, CPU_FLOAT16])
def test_autocast_inference(golden, dtype):
    """Under CPU autocast the fast path runs without dtype errors and is as
    close to the float64 result as the literal path under autocast is."""
    model = golden_model(golden).eval()
    literal = to_literal(model)
    x = golden['cases']['224x224']['input'][:1]
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        outs, lits = model(x), literal(x)
    exact = [o[:1] for o in golden['cases']['224x224']['backbone_outputs_f64']]
    floor = 4 * torch.finfo(dtype).eps
    for out, lit, ref in zip(outs, lits, exact):
        assert torch.isfinite(out).all()
        assert relative_error(out.double(), ref) <= \
            FACTOR * relative_error(lit.double(), ref) + floor


@NEEDS_CPU_FLOAT16
def test_fp16_autocast_training_step_has_finite_gradients(golden):
    model = golden_model(golden).train()
    x = golden['cases']['224x224']['input'][:, :, :96, :128]
    with torch.autocast('cpu', dtype=torch.float16):
        loss = sum(o.float().square().mean() for o in model(x))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_trace_is_size_generic(golden):
    """A trace at one size runs at another, as accurate there as the eager
    literal float32 path (both against float64)."""
    model = golden_model(golden).eval()
    with torch.no_grad():
        traced = torch.jit.trace(
            model, torch.randn(1, 3, 64, 96), check_trace=False)
        x = torch.randn(1, 3, 96, 64)
        assert_like_the_literal(traced(x), model, x, 'trace')


# ----------------------------------------------------- export and compile
GRAPH_SIZES = [(64, 96), (96, 64), (97, 131), (33, 47)]  # the first is traced


def assert_like_the_literal(outs, model, x, name=''):
    """Graph outputs as accurate as the eager literal float32 path, both
    against the literal float64 computation."""
    with torch.no_grad():
        lits = to_literal(model)(x)
        exact = to_literal(model).double()(x.double())
    assert len(outs) == len(exact) == 4
    for i, (a, b, ref,
            depth) in enumerate(zip(outs, lits, exact, stage_depths(model))):
        assert tuple(a.shape) == tuple(ref.shape), (name, i)
        assert_float32_close(
            a.detach(),
            b,
            ref,
            name=f'{name} stage {i + 1}',
            floor=float32_floor(depth, v2_reduction_terms(model)))


@pytest.mark.parametrize(
    'exporter,opset',
    [
        ('torchscript', 17),
        ('torchscript', 11),  # mmdeploy's ONNX Runtime opset
        pytest.param(
            'dynamo',
            18,
            marks=pytest.mark.skipif(
                not torch_compat.ONNX_EXPORT_HAS_DYNAMO,
                reason='torch < 2.5: no torch.onnx.export(dynamo=True)'))
    ])
def test_onnx_export_runs_in_onnxruntime_at_other_sizes(
        golden, exporter, opset, tmp_path):
    """Exported with dynamic height and width at one size, the ONNX graph
    gives the eager accuracy at three others in onnxruntime (at opset 11
    too: no unflatten, no SDPA operator, both of later opsets)."""
    import onnxruntime as ort

    from mmrest.onnx_export import check_onnx, export_onnx, onnx_matches
    model = golden_model(golden).eval()
    path = str(tmp_path / 'restv2.onnx')
    assert export_onnx(model, path, GRAPH_SIZES[0], exporter,
                       opset) == ['out0', 'out1', 'out2', 'out3']
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for size in GRAPH_SIZES[1:]:
        x = torch.randn(2, 3, *size)
        outs = session.run(None, {'input': x.numpy()})
        assert_like_the_literal([torch.from_numpy(o) for o in outs],
                                model,
                                x,
                                name=size)
    errors = check_onnx(path, model, GRAPH_SIZES[2:3])  # the tool's check
    assert all(onnx_matches(*e) for e in errors['97x131'])


def test_compile_has_no_graph_break(golden):
    explanation = torch._dynamo.explain(golden_model(golden).eval())(
        torch.randn(1, 3, 64, 96))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_training_step_at_one_size_matches_eager(golden):
    """Every parameter's gradient of a training step compiled for one
    input size (static shapes, ``dynamic=False``, through dynamo and
    AOTAutograd: ``aot_eager``; the v1 tests run Inductor) within the bound
    of the literal float32 gradients, against float64. Graphs that hold at
    other sizes are not tested here for training."""
    x = torch.randn(2, 3, 70, 90)
    model = golden_model(golden).train()
    _grads(torch.compile(model, backend='aot_eager', dynamic=False), x)
    fast = {n: p.grad for n, p in model.named_parameters()}
    lit = _grads(to_literal(golden_model(golden)).train(), x)
    exact = _grads(
        to_literal(golden_model(golden)).double().train(), x.double())
    for name, ref in exact.items():
        err_lit = relative_error(lit[name].double(), ref)
        assert relative_error(fast[name].double(), ref) <= \
            FACTOR * err_lit + FLOOR32, name


# ---------------------------------------------------------------- weights
def imagenet_checkpoint(golden):
    """The golden weights as the authors' classifier checkpoint: under
    `model`, with `norm` and `head`, without norm_1..4."""
    return {
        'model': {
            k: v
            for k, v in golden['state_dict'].items()
            if not k.startswith('norm_')
        }
    }


def pretrained(golden, path, **kwargs):
    model = ResTV2(
        arch=golden_arch(golden),
        init_cfg=dict(type='Pretrained', checkpoint=str(path), **kwargs))
    model.init_weights()
    return model


def test_imagenet_checkpoint_loads_through_init_cfg(golden, tmp_path):
    import logging

    from mmengine.logging import MMLogger
    path = tmp_path / 'restv2_tiny_224.pth'
    torch.save(imagenet_checkpoint(golden), path)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        model = pretrained(golden, path)
    finally:
        logger.removeHandler(handler)
    own = model.state_dict()
    for key, value in golden['state_dict'].items():
        if key.startswith(('norm.', 'head.')):
            assert key not in own
        elif key.startswith('norm_'):  # not in the checkpoint: initialised
            assert torch.all(own[key] == (1 if 'weight' in key else 0)), key
        else:
            assert torch.equal(own[key], value), key
    # the log names the output norms left as initialised
    assert any('norm_1.weight' in r and 'norm_4.bias' in r for r in records)


@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_dense_checkpoint_loads_and_gives_the_golden_outputs(
        golden, tmp_path, prefix):
    state = backbone_state(golden)
    if prefix:
        state = {prefix + k: v for k, v in state.items()}
        state['neck.lateral.weight'] = torch.zeros(3)
    path = tmp_path / 'dense.pth'
    torch.save({'state_dict': state}, path)
    model = pretrained(golden, path, prefix=prefix).eval()
    data = golden['cases']['256x352']
    with torch.no_grad():
        outs = model(data['input'])
    for ours, authors, exact in zip(outs, data['backbone_outputs'],
                                    data['backbone_outputs_f64']):
        assert relative_error(ours.double(), exact) <= \
            FACTOR * relative_error(authors.double(), exact) + FLOOR32


def test_v1_checkpoint_is_refused_by_v2(tmp_path):
    # ResT-Base has ResTv2-Tiny's widths: many keys would fit.
    state = ResT(arch='base', out_indices=(3, )).state_dict()
    path = tmp_path / 'rest_base.pth'
    torch.save({'model': state}, path)
    model = ResTV2(
        'tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(
            CheckpointError,
            match=r"ResT \(v1\) checkpoint, not a ResT v2 one: it cannot "
            r"initialise ResTV2\. Use it with type='ResT'"):
        model.init_weights()


def test_v2_checkpoint_is_detected_for_v1(golden, tmp_path):
    path = tmp_path / 'restv2.pth'
    torch.save(imagenet_checkpoint(golden), path)
    with pytest.raises(
            CheckpointError,
            match=r"ResT v2 checkpoint, not a ResT \(v1\) one: it cannot "
            r"initialise ResT\. Use it with type='ResTV2'"):
        check_checkpoint_family(str(path), 'v1')
    check_checkpoint_family(str(path), 'v2')  # passes


def test_checkpoint_family_from_keys(golden):
    assert checkpoint_family(golden['state_dict']) == 'v2'
    assert checkpoint_family(ResT('lite').state_dict()) == 'v1'
    assert checkpoint_family(['stage1.0.attn.q.weight']) is None
    assert checkpoint_family(['stem.conv1.weight',
                              'patch_2.proj.weight']) is None


# ---------------------------------------------------------- COCO configs
def _build_detector(name):
    return build_detector(ROOT / 'configs' / name)


@pytest.mark.parametrize('arch', list(MASK_RCNN_PARAMS_M))
def test_mask_rcnn_3x_configs_are_the_papers_models(arch):
    cfg, model = _build_detector(
        f'mask_rcnn/mask-rcnn_restv2-{arch}_fpn_3x_coco.py')
    assert isinstance(model.backbone, ResTV2)
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == MASK_RCNN_PARAMS_M[arch]
    # the recipe (docs/network.md, "Published results")
    assert cfg.model.backbone.init_cfg is None  # cleared above
    raw = cfg.__class__.fromfile(ROOT / 'configs' / 'mask_rcnn' /
                                 f'mask-rcnn_restv2-{arch}_fpn_3x_coco.py')
    assert raw.model.backbone.init_cfg.checkpoint == \
        f'checkpoints/restv2_{arch}_224.pth'
    assert raw.train_cfg.max_iters == 270000
    step = [s for s in raw.param_scheduler if s.type == 'MultiStepLR'][0]
    assert step.milestones == [210000, 250000] and not step.by_epoch
    assert raw.optim_wrapper.type == 'AmpOptimWrapper'
    assert raw.optim_wrapper.optimizer.type == 'AdamW'
    assert raw.optim_wrapper.optimizer.lr == 1e-4
    assert raw.optim_wrapper.optimizer.weight_decay == 0.05
    assert raw.optim_wrapper.clip_grad == dict(max_norm=0.01, norm_type=2)
    assert raw.auto_scale_lr.base_batch_size == 16
    pipeline = raw.train_dataloader.dataset.pipeline
    types = [t.type for t in pipeline]
    assert types.index('RandomCrop') < types.index('RandomChoiceResize')
    crop = pipeline[types.index('RandomCrop')]
    assert crop.crop_type == 'relative' and tuple(crop.crop_size) == (0.9, 0.9)
    sides = [s[1] for s in pipeline[types.index('RandomChoiceResize')].scales]
    assert min(sides) == 480 and max(sides) == 800


def test_mask_rcnn_1x_and_retinanet_tiny_configs():
    cfg, model = _build_detector(
        'mask_rcnn/mask-rcnn_restv2-tiny_fpn_1x_coco.py')
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == MASK_RCNN_PARAMS_M['tiny']
    assert cfg.train_cfg.max_iters == 90000
    cfg, model = _build_detector(
        'retinanet/retinanet_restv2-tiny_fpn_1x_coco.py')
    assert isinstance(model.backbone, ResTV2)
    assert model.backbone.out_indices == (1, 2, 3)
    with torch.no_grad():
        feats = model.extract_feat(torch.rand(1, 3, 97, 131))
    assert len(feats) == 5 and all(f.shape[1] == 256 for f in feats)
