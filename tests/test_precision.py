"""Mixed precision: every path under bf16 and fp16 autocast on the CPU,
for ResT and ResT v2.

CPU autocast takes the same code paths as CUDA autocast (the attention core
leaves autocast and runs in float32 on both). The bound is the project's
rule (``tests/_helpers.py``): under the same autocast, each output is at
most ``ERROR_FACTOR`` (4) times as far from the exact (float64, literal)
result as the authors' computation (the literal path) is on this CPU, plus
a floor of one rounding to the autocast dtype per layer
(:func:`autocast_floor`). Measured on an AMD EPYC, mmrest's error is 0.85x
to 1.10x the authors' (docs/precision_and_export.md).
"""
from pathlib import Path

import pytest
import torch
from _helpers import (CPU_FLOAT16, NEEDS_CPU_FLOAT16, NEEDS_CPU_GRAD_SCALER,
                      assert_float32_close, autocast_floor, float64_literal,
                      golden_model, golden_model_v2, stage_depths)

from mmrest.backbones import to_literal

DATA = Path(__file__).resolve().parent / 'data'
DTYPES = [torch.bfloat16, CPU_FLOAT16]
FAMILIES = ['v1', 'v2']


def tiny_model(family, with_cp=False):
    """The tiny ResT (``'v1'``) or ResT v2 (``'v2'``) of the reference data
    with the authors' non-trivial weights (random initialisation makes
    every attention map nearly uniform, which hides errors in the
    normalisation), and the function that gives its literal form."""
    golden = torch.load(
        DATA / f'rest_{family}_tiny_golden.pt', weights_only=True)
    if family == 'v1':
        return golden_model(golden, with_cp=with_cp), to_literal
    return golden_model_v2(golden, with_cp=with_cp), to_literal


def outputs(model, x, dtype=None, grad=False):
    """The four maps in float32, computed under autocast in ``dtype``."""
    with torch.set_grad_enabled(grad), torch.autocast('cpu', dtype=dtype):
        outs = model(x)
    return [o.float() for o in outs]


def assert_as_close_as_the_authors(fast, literal, x, dtype, grad):
    """Against the float64 literal model (the same mode), the error of
    ``fast`` under autocast within the bound of ``literal``'s (the
    authors' computation under the same autocast)."""
    with torch.no_grad():
        exact = float64_literal(fast)(x.double())
    low_fast = outputs(fast, x, dtype, grad)
    low_lit = outputs(literal, x, dtype, grad)
    for i, (a, c, ref, depth) in enumerate(
            zip(low_fast, low_lit, exact, stage_depths(fast))):
        assert torch.isfinite(a).all(), f'stage {i + 1}'
        assert_float32_close(
            a,
            c,
            ref,
            depth=depth,
            floor=autocast_floor(dtype, depth),
            name=f'{dtype} stage {i + 1}')


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('grad', [False, True])
def test_eval_under_autocast(family, dtype, grad):
    fast, literal_of = tiny_model(family)
    fast.eval()
    literal = literal_of(fast)
    x = torch.randn(2, 3, 72, 104)
    assert_as_close_as_the_authors(fast, literal, x, dtype, grad)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('with_cp', [False, True])
def test_train_mode_under_autocast(family, dtype, with_cp):
    fast, literal_of = tiny_model(family, with_cp)
    fast.train()
    literal = literal_of(fast)
    x = torch.randn(2, 3, 72, 104)
    assert_as_close_as_the_authors(fast, literal, x, dtype, grad=True)


@NEEDS_CPU_FLOAT16
@NEEDS_CPU_GRAD_SCALER
@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('with_cp', [False, True])
def test_fp16_training_steps_with_a_grad_scaler(family, with_cp):
    """As mmengine's AmpOptimWrapper: fp16 autocast, a GradScaler. Every
    gradient is finite and no step is skipped."""
    model = tiny_model(family, with_cp)[0].train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.**16)
    x = torch.randn(2, 3, 72, 104)
    for _ in range(3):
        optimizer.zero_grad()
        with torch.autocast('cpu', dtype=torch.float16):
            loss = sum(o.float().square().mean() for o in model(x))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        bad = [
            n for n, p in model.named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f'non-finite gradients in {bad}'
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        assert scaler.get_scale() == scale, 'the scaler skipped a step'
