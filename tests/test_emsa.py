"""The fast EMSA against the literal one of SPEC.md: same outputs and
gradients, in eval and train mode, with one chunk or many."""
import pytest
import torch

from mmrest.backbones import EMSA, ResT, emsa_attention
from mmrest.backbones import rest as rest_module
from mmrest.testing import LiteralEMSA, to_literal
from conftest import relative_error


def make_pair(embed_dims, num_heads, sr_ratio):
    fast = EMSA(embed_dims, num_heads, sr_ratio)
    with torch.no_grad():  # give every parameter, biases too, a real value
        for p in fast.parameters():
            p.normal_(0, 0.3)
    literal = to_literal(fast)
    assert type(literal) is LiteralEMSA and type(fast) is EMSA
    return fast, literal


CASES = [(32, 1, 4), (32, 2, 4), (64, 4, 2), (64, 8, 1)]


@pytest.mark.parametrize('embed_dims,num_heads,sr_ratio', CASES)
@pytest.mark.parametrize('chunk_elements', [1 << 20, 700])
def test_same_outputs_and_gradients(embed_dims, num_heads, sr_ratio,
                                    chunk_elements, monkeypatch):
    monkeypatch.setattr(rest_module, '_CHUNK_ELEMENTS', chunk_elements)
    fast, literal = make_pair(embed_dims, num_heads, sr_ratio)
    hw = (13, 18)
    x = torch.randn(2, hw[0] * hw[1], embed_dims)
    for mode in (False, True):
        fast.train(mode), literal.train(mode)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_a, out_b = fast(xa, hw), literal(xb, hw)
        assert relative_error(out_a, out_b) < 1e-4
        g = torch.randn_like(out_a)
        (out_a * g).sum().backward()
        (out_b * g).sum().backward()
        assert relative_error(xa.grad, xb.grad) < 1e-4
        # With the transform, the true gradient of these biases is zero: a
        # softmax cannot see transform_conv's bias nor a shift shared by all
        # keys, and each normalised attention row sums to 0, so a shift
        # shared by all values cancels (kv.bias and sr_norm.bias shift all
        # keys and values alike). Both implementations give rounding noise.
        zero_grad = {'transform_conv.bias', 'kv.bias', 'sr_norm.bias'} \
            if num_heads > 1 else set()
        scale = literal.kv.weight.grad.norm()
        for (name, pa), pb in zip(fast.named_parameters(),
                                  literal.parameters()):
            assert pa.grad is not None, name
            if name in zero_grad:
                assert pa.grad.norm() < 1e-4 * scale, name
                assert pb.grad.norm() < 1e-4 * scale, name
            else:
                assert relative_error(pa.grad, pb.grad) < 1e-4, name
        fast.zero_grad(), literal.zero_grad()


def test_attention_dropout_keeps_its_rate():
    torch.manual_seed(0)
    fast, _ = make_pair(32, 2, 2)
    fast.attn_drop = 0.5
    fast.train()
    x = torch.randn(1, 64, 32)
    a, b = fast(x, (8, 8)), fast(x, (8, 8))
    assert not torch.allclose(a, b)  # dropout is active in training
    fast.eval()
    assert torch.equal(fast(x, (8, 8)), fast(x, (8, 8)))


def test_no_attention_map_is_stored_for_backward():
    """Training memory: nothing of size N x M is saved for backward."""
    q = torch.randn(1, 4, 2048, 16, requires_grad=True)
    k = torch.randn(1, 4, 512, 16, requires_grad=True)
    v = torch.randn(1, 4, 512, 16, requires_grad=True)
    mix = torch.randn(4, 4, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        emsa_attention(q, k, v, mix, chunk_elements=1 << 16).sum()
    assert max(saved) < 4 * 2048 * 512 // 8


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_whole_backbone_matches_literal_in_train_mode(dtype):
    """Train mode (BatchNorm on batch statistics), outputs and gradients.

    Through a whole network at random init, float32 rounding of either
    implementation moves some gradients by more than 1e-4 (the literal one
    against itself in float64 as much), so gradients are compared in
    float64, where any difference in the mathematics would show.
    """
    model = ResT(arch='lite').train().to(dtype)
    literal = to_literal(model)
    x = torch.rand(2, 3, 96, 128, dtype=dtype)
    outs_a, outs_b = model(x), literal(x)
    for a, b in zip(outs_a, outs_b):
        assert relative_error(a, b) < 1e-4
    if dtype == torch.float32:
        return
    sum(o.square().mean() for o in outs_a).backward()
    sum(o.square().mean() for o in outs_b).backward()
    total = torch.stack([p.grad.norm() for p in literal.parameters()]).norm()
    for (name, pa), pb in zip(model.named_parameters(), literal.parameters()):
        if pb.grad.norm() < 1e-12 * total:
            # zero true gradient (biases before a BatchNorm in train mode,
            # and those above): both give float64 rounding noise
            assert pa.grad.norm() < 1e-12 * total, name
        else:
            assert relative_error(pa.grad, pb.grad) < 1e-8, name
