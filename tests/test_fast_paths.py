"""The inference fast paths of ResT (eval mode, no autograd: reused
attention buffers, chunked MLP, BatchNorm folding, channels-last maps)
against the literal computation of SPEC.md, with one chunk and with many."""
import pytest
import torch
import torch.nn as nn

from mmrest import ResT
from mmrest.backbones import emsa_attention
from mmrest.backbones import rest as rest_module
from mmrest.testing import to_literal
from mmrest.testing.literal import (LiteralBlock, LiteralEMSA,
                                    LiteralPatchEmbed, LiteralResT,
                                    LiteralStem)
from conftest import relative_error


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


def test_to_literal_swaps_every_fast_part():
    literal = to_literal(ResT(arch='lite'))
    assert type(literal) is LiteralResT
    assert type(literal.stem) is LiteralStem
    assert type(literal.patch_embed_2) is LiteralPatchEmbed
    assert type(literal.stage1[0]) is LiteralBlock
    assert type(literal.stage1[0].attn) is LiteralEMSA
    assert type(ResT(arch='lite').stage1[0].attn) is not LiteralEMSA


@pytest.mark.parametrize('chunks', ['one', 'many'])
@pytest.mark.parametrize('arch,batch,size', [('lite', 1, (97, 131)),
                                             ('small', 2, (70, 45))])
def test_inference_matches_literal(arch, batch, size, chunks, monkeypatch):
    if chunks == 'many':  # a few query rows and tokens per chunk
        monkeypatch.setattr(rest_module, '_CHUNK_ELEMENTS', 700)
        monkeypatch.setattr(rest_module, '_MLP_CHUNK_ELEMENTS', 3000)
    model = randomised(ResT(arch=arch)).eval()
    literal = to_literal(model)
    x = torch.rand(batch, 3, *size)
    x_before = x.clone()
    with torch.no_grad():
        outs, expected = model(x), literal(x)
    assert torch.equal(x, x_before)  # the input is not written to
    for out, exp in zip(outs, expected):
        assert out.shape == exp.shape
        assert out.is_contiguous()  # plain NCHW, like the authors'
        assert relative_error(out, exp) < 1e-4


def test_golden_outputs_with_many_chunks(golden, monkeypatch):
    from test_backbone import golden_model
    monkeypatch.setattr(rest_module, '_CHUNK_ELEMENTS', 500)
    monkeypatch.setattr(rest_module, '_MLP_CHUNK_ELEMENTS', 2000)
    model = golden_model(golden).eval()
    data = golden['cases']['256x352']
    with torch.no_grad():
        outs = model(data['input'])
    for out, expected in zip(outs, data['backbone_outputs']):
        assert relative_error(out, expected) < 1e-4


@pytest.mark.parametrize('batch', [1, 3])
def test_no_grad_attention_core_matches_the_autograd_one(batch):
    q = torch.randn(batch, 4, 50, 16)
    k, v = torch.randn(2, batch, 4, 30, 16)
    mix, mix_bias = torch.randn(4, 4), torch.randn(4) * 10
    expected = emsa_attention(q.requires_grad_(), k, v, mix, mix_bias,
                              chunk_elements=1 << 30).detach()
    q = q.detach()
    with torch.no_grad():
        for chunk_elements in (1, 700, 5000, 1 << 30):
            out = emsa_attention(q, k, v, mix, mix_bias,
                                 chunk_elements=chunk_elements)
            assert out.shape == expected.shape
            assert relative_error(out, expected) < 1e-5, chunk_elements


def test_folded_batchnorm_gives_exact_gradients():
    """BatchNorms in eval mode (norm_eval) are folded into the convs even
    when training the rest; gradients reach conv and norm alike."""
    model = randomised(ResT(arch='lite', norm_eval=True)).train()
    literal = to_literal(model)
    x = torch.rand(2, 3, 64, 80)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs_a, outs_b = model(xa), literal(xb)
    for a, b in zip(outs_a, outs_b):
        assert relative_error(a, b) < 1e-4
    sum(o.square().mean() for o in outs_a).backward()
    sum(o.square().mean() for o in outs_b).backward()
    assert relative_error(xa.grad, xb.grad) < 1e-4
    folded = 0
    for (name, pa), pb in zip(model.named_parameters(),
                              literal.parameters()):
        if name.startswith(('stem.', 'patch_embed_')):
            assert relative_error(pa.grad, pb.grad) < 1e-4, name
            folded += '.norm' in name
    assert folded == 2 * 2 + 3 * 2  # weight and bias of 5 BatchNorms


def test_train_mode_without_autograd_keeps_dropout():
    """No autograd but train mode (dropout on): not the inference path."""
    model = ResT(arch='lite', drop_path_rate=0.5).train()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x)[-1], model(x)[-1]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize('qkv_bias', [True, False])
@pytest.mark.parametrize('sr_ratio', [1, 4])
def test_one_head_emsa_folds_projections_exactly(qkv_bias, sr_ratio):
    """With one head, inference folds the query and output projections into
    the keys and values (a per-key bias from the query bias): the literal
    EMSA's output."""
    emsa = randomised(
        rest_module.EMSA(32, 1, sr_ratio, qkv_bias=qkv_bias)).eval()
    literal = to_literal(emsa)
    x = torch.randn(2, 9 * 11, 32)
    with torch.no_grad():
        out, expected = emsa(x, (9, 11)), literal(x, (9, 11))
    assert relative_error(out, expected) < 1e-5
    # the training path (autograd) does not fold; it gives the same output
    out_grad = emsa(x, (9, 11))
    assert out_grad.requires_grad
    assert relative_error(out_grad.detach(), expected) < 1e-5


@pytest.mark.parametrize('gelu', [False, True])
@pytest.mark.parametrize('onednn', [True, False])
def test_inference_linear_is_f_linear(gelu, onednn):
    """oneDNN's linear (bias and GELU applied as it writes) and the fallback
    both compute F.linear (then the exact GELU)."""
    x, w, b = torch.randn(3, 70, 24), torch.randn(40, 24), torch.randn(40)
    expected = torch.nn.functional.linear(x, w, b)
    if gelu:
        expected = torch.nn.functional.gelu(expected)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=onednn):
        out = rest_module._linear(x, w, b, gelu=gelu)
        no_bias = rest_module._linear(x, w, None)
    assert relative_error(out, expected) < 1e-5
    assert relative_error(no_bias, x @ w.t()) < 1e-5
    # anything needing a gradient takes F.linear, which has autograd
    w.requires_grad_(True)
    rest_module._linear(x, w, b, gelu=gelu).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    b.requires_grad_(True)  # a bias alone needing one counts too
    rest_module._linear(x, w.detach(), b, gelu=gelu).sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
