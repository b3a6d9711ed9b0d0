"""``token_norm_cfg`` and ``act_cfg`` of ResT and ResT v2: the defaults are
the paper's (LayerNorm eps 1e-5 in v1 and 1e-6 in v2, the exact GELU); a
config reaches every token norm and every MLP; a non-GELU activation keeps
the inference fast path exact (against the literal computation and
float64); a config that builds no LayerNorm is refused by name."""
import pytest
import torch
import torch.nn as nn
from _helpers import assert_float32_close, float64_literal, stage_depths

from mmrest import ResT, ResTV2
from mmrest.backbones import kernels

TINY_V2 = dict(
    embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])
BUILD = {
    'v1': lambda **kw: ResT(arch='lite', **kw),
    'v2': lambda **kw: ResTV2(arch=TINY_V2, **kw),
}
PAPER_EPS = {'v1': 1e-5, 'v2': 1e-6}


def layer_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm)]


def activations(model):
    return [m.act for m in model.modules() if hasattr(m, 'fc1')]


@pytest.mark.parametrize('family', ['v1', 'v2'])
def test_defaults_are_the_papers(family):
    model = BUILD[family]()
    norms, acts = layer_norms(model), activations(model)
    assert norms and all(type(n) is nn.LayerNorm for n in norms)
    assert {n.eps for n in norms} == {PAPER_EPS[family]}
    assert acts and all(
        type(a) is nn.GELU and a.approximate == 'none' for a in acts)


@pytest.mark.parametrize('family', ['v1', 'v2'])
def test_configs_reach_every_norm_and_mlp(family):
    default = BUILD[family]()
    model = BUILD[family](
        token_norm_cfg=dict(type='LN', eps=1e-3), act_cfg=dict(type='ReLU'))
    assert len(layer_norms(model)) == len(layer_norms(default))
    assert {n.eps for n in layer_norms(model)} == {1e-3}
    assert len(activations(model)) == len(activations(default))
    assert all(type(a) is nn.ReLU for a in activations(model))
    # the same parameters, so official checkpoints still load
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in default.state_dict().items()}


@pytest.mark.parametrize('family', ['v1', 'v2'])
@pytest.mark.parametrize('act', ['ReLU', 'SiLU'])
def test_other_activation_keeps_the_fast_path_exact(family, act, monkeypatch):
    """The fast inference path fuses only the exact GELU into oneDNN's
    linear; any other activation is applied to each chunk of hidden
    activations: the result equals the literal computation's (measured
    against float64)."""
    monkeypatch.setattr(kernels, 'MLP_CHUNK_ELEMENTS', 3000)  # many chunks
    torch.manual_seed(0)
    model = BUILD[family](act_cfg=dict(type=act)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = []
    for mlp_act in activations(model):
        mlp_act.register_forward_hook(lambda *_: calls.append(1))
    exact = float64_literal(model)
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        outs = model(x)
        fast_calls = len(calls)
        with kernels.literal():
            expected = model(x)
        ref = exact(x.double())
    # the chunked path ran: the activation was called once per chunk
    assert fast_calls > len(activations(model))
    for i, (out, lit, r) in enumerate(zip(outs, expected, ref)):
        assert_float32_close(
            out, lit, r, depth=stage_depths(model)[i], name=f'stage {i + 1}')


@pytest.mark.parametrize('family', ['v1', 'v2'])
def test_token_norm_cfg_must_build_a_layer_norm(family):
    with pytest.raises(
            TypeError, match='token_norm_cfg must build a '
            'LayerNorm.*BatchNorm'):
        BUILD[family](token_norm_cfg=dict(type='BN'))
