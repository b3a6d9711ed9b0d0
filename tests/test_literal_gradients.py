"""Parameter gradients of the literal (and fast) ResT against float64
central finite differences.

The literal model is the yardstick of the fast one; gradient tests that
compare the two cannot see an error both share, or one of the yardstick
alone. Here both are checked against the function itself.

A batch of one matters: PyTorch's CPU BatchNorm backward misreads, for a
batch of one, a gradient laid out channels-last with a non-canonical batch
stride when its input is NCHW (see
:func:`mmrest.backbones.kernels.batch_norm_call`), and the literal model's
NCHW patch embeddings receive such gradients from the tokens.
"""
import pytest
import torch

from mmrest import ResT
from mmrest.backbones import to_literal
from mmrest.backbones.kernels import batch_norm_call

TINY = dict(
    embed_dims=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    num_heads=[1, 2, 4, 8],
    sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[4, 4, 4, 4])
EPS64 = torch.finfo(torch.float64).eps


def _tiny_model():
    model = ResT(arch=TINY)
    model.init_weights()
    with torch.no_grad():  # BatchNorms that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, .1)
                m.running_var.uniform_(.5, 2)
                m.weight.uniform_(.5, 1.5)
                m.bias.normal_(0, .1)
    return model.double()


@pytest.mark.parametrize('mode', ['eval', 'train'])
@pytest.mark.parametrize('kind', ['literal', 'fast'])
def test_parameter_gradients_match_finite_differences(kind, mode):
    """<grad, d> against (f(p + h d) - f(p - h d)) / 2h, d a random unit
    direction over all parameters at once, f a random linear functional of
    all four outputs, for a 1 x 3 x 64 x 96 input in float64.

    Bound: the finite difference's truncation error (O(h^2)) is at most
    ``|D(h) - D(2h)| / 3`` for a smooth f, taken 4 times (12x margin); its
    rounding error is ``2 * delta / 2h`` with delta the rounding error of
    f, at most ``32 * eps * L`` (L = sum |out * w|, the size of the terms
    f sums; the literal and fast float64 values of f differ by ~3 eps L).
    The ReLUs of the stem are kinks: with h = 1e-6 along a unit direction
    no pre-activation crosses zero for these seeds (a crossing would show
    as D(h) != D(2h) and loosen, not tighten, the bound).
    """
    torch.manual_seed(0)
    model = _tiny_model().train(mode == 'train')
    if kind == 'literal':
        model = to_literal(model)
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        weights = [torch.randn_like(o) for o in model(x)]

    def f():
        return sum((o * w).sum() for o, w in zip(model(x), weights))

    with torch.no_grad():
        size = sum(
            (o * w).abs().sum() for o, w in zip(model(x), weights)).item()
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    f().backward()
    grads = [p.grad.clone() for p in params]

    def diff_quotient(directions, h):
        with torch.no_grad():
            for p, d in zip(params, directions):
                p.add_(d, alpha=h)
            plus = f().item()
            for p, d in zip(params, directions):
                p.sub_(d, alpha=2 * h)
            minus = f().item()
            for p, d in zip(params, directions):
                p.add_(d, alpha=h)
        return (plus - minus) / (2 * h)

    gen = torch.Generator().manual_seed(1)
    h = 1e-6
    for k in range(3):
        directions = [
            torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params
        ]
        norm = torch.sqrt(sum(d.square().sum() for d in directions))
        directions = [d / norm for d in directions]
        analytic = sum((g * d).sum() for g, d in zip(grads, directions))
        analytic = analytic.item()
        fd = diff_quotient(directions, h)
        fd2 = diff_quotient(directions, 2 * h)
        bound = 4 * abs(fd - fd2) + 32 * EPS64 * size / h
        assert abs(analytic - fd) <= bound, (
            f'{kind} model, {mode} mode, direction {k}: <grad, d> = '
            f'{analytic:.9g}, finite difference {fd:.9g} (bound {bound:.2g})')


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_batch_norm_call_with_a_channels_last_gradient(mode):
    """The literal BatchNorm call's gradients (input, weight, bias) for an
    NCHW input of a batch of one and an incoming gradient laid out
    channels-last with batch stride C (legal for a batch of one; what the
    backward of the tokens' transpose gives), against autograd through the
    BatchNorm formula written out in elementary float64 operations."""
    C, H, W = 8, 5, 7
    norm = torch.nn.BatchNorm2d(C).double().train(mode == 'train')
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(.5, 2)
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(1, C, H, W, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, C, H, W, dtype=torch.float64)
    odd = torch.empty(
        H * W * C, dtype=torch.float64).as_strided((1, C, H, W),
                                                   (C, 1, W * C, C))
    odd.copy_(grad)
    params = (x, norm.weight, norm.bias)
    got = torch.autograd.grad(batch_norm_call(norm, x), params, odd)

    if mode == 'train':  # batch statistics (biased variance)
        mean = x.mean((0, 2, 3))
        var = (x - mean[:, None, None]).square().mean((0, 2, 3))
    else:
        mean, var = norm.running_mean, norm.running_var
    y = (
        (x - mean[:, None, None]) / torch.sqrt(var + norm.eps)[:, None, None] *
        norm.weight[:, None, None] + norm.bias[:, None, None])
    expected = torch.autograd.grad(y, params, grad)
    for name, a, b in zip(('input', 'weight', 'bias'), got, expected):
        # float64 sums of 35 terms per channel: a few eps of their size
        tol = 64 * EPS64 * (b.abs().max().item() + 1)
        assert (a - b).abs().max().item() <= tol, f'{name} gradient'
