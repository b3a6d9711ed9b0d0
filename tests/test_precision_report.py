"""tools/precision_report.py and mmrest_tools.precision: the figures
docs/precision_and_export.md quotes come from these functions."""
import sys

import pytest
import torch
from _helpers import CPU_FLOAT16, ERROR_FACTOR, float32_floor, run_program

from mmrest_tools import precision


def test_float32_errors_against_float64():
    """The fast float32 path is as close to float64 as the project's rule
    allows (tests/_helpers.py: ERROR_FACTOR times the literal path's own
    float32 error plus the floor of ResT-Lite's 12 layers) at every stage,
    for every requested component."""
    result = precision.measure(
        'v1', 'lite', size=(64, 96), components=(None, 'emsa_core'))
    literal = [s['rel'] for s in result['literal']]
    assert len(literal) == 4 and all(e > 0 for e in literal)
    assert set(result['fast']) == {'all fast', 'emsa_core'}
    for name, errs in result['fast'].items():
        for stage, (s, lit) in enumerate(zip(errs, literal)):
            bound = ERROR_FACTOR * lit + float32_floor(depth=12)
            assert s['rel'] <= bound, (name, stage, s['rel'], bound)


@pytest.mark.parametrize('dtype', [torch.bfloat16, CPU_FLOAT16])
def test_autocast_errors_authors_code_against_mmrest(dtype):
    """Under autocast the authors' computation (the literal path: its
    InstanceNorm over the softmax in half precision) is far further from
    its float32 output than mmrest's fast path, whose attention core stays
    in float32 (docs/precision_and_export.md, "Mixed precision")."""
    result = precision.autocast_errors(
        'v1', 'small', dtype, size=(64, 96), batch=1)
    literal = [s['rel'] for s in result['literal']]
    fast = [s['rel'] for s in result['fast']]
    # One rounding to the half-precision type at least, so neither is 0;
    # beyond stage 1 (one head: no InstanceNorm) the literal path is worse.
    assert all(f > 0 for f in fast)
    assert all(lit > 2 * f for lit, f in zip(literal[1:], fast[1:])), \
        (literal, fast)


def test_report_command_prints_the_tables():
    cmd = [
        sys.executable, 'tools/precision_report.py', '--models', 'v1:lite',
        '--size', '64', '64'
    ]
    out = run_program(cmd).stdout
    assert '| v1 lite | literal fp32 |' in out
    assert '| v1 lite | fast: all fast |' in out
    out = run_program(cmd + ['--autocast', 'bf16']).stdout
    assert 'Batch 2 x 3 x 64 x 64' in out
    assert '| v1 lite | bf16 | literal |' in out
    assert '| v1 lite | bf16 | fast |' in out


def _switches() -> dict:
    """What each component changes while it is on (module attributes),
    read now."""
    from mmrest.backbones import kernels, rest, rest_v2
    return dict(
        onednn=kernels.ONEDNN_LINEAR,
        bn_fold=kernels.conv_norm,
        mlp_chunks=(rest.Block._forward_inference,
                    rest_v2.BlockV2._forward_inference),
        emsa_core=(kernels.emsa_attention, rest.kernels.emsa_attention),
        one_head=rest.EMSA._forward_one_head,
        sdpa_v2=rest_v2.F.scaled_dot_product_attention)


@pytest.mark.parametrize('family,arch', [('v1', 'lite'), ('v2', 'tiny')])
def test_each_literal_component_computes_the_same_function(family, arch):
    """Each component the report swaps in is the same function as the fast
    one it replaces (float64 outputs equal to 1e-10 of the all-fast ones:
    a wrong axis or scale would not be), it changes what it names and only
    that while on, and everything is restored after; an unknown name is
    refused."""
    from mmrest.backbones import kernels
    model = precision.build(family, arch).double()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        with kernels.literal():
            literal = model(x)
    for out, ref in zip(literal, expected):  # the bar: the literal path
        assert (out - ref).norm() <= 1e-10 * ref.norm()
    before = _switches()
    assert set(before) == set(precision.COMPONENTS)
    for component in precision.COMPONENTS:
        with precision.literal_component(component), torch.no_grad():
            during = _switches()
            outs = model(x)
        changed = [c for c in during if during[c] != before[c]]
        if component == 'onednn' and before['onednn'] is None:
            assert changed == []  # no oneDNN kernel here: F.linear already
        else:
            assert changed == [component]
        assert _switches() == before
        for stage, (out, ref) in enumerate(zip(outs, expected)):
            assert (out - ref).norm() <= 1e-10 * ref.norm(), (component, stage)
    with pytest.raises(ValueError, match="unknown component 'fast'"):
        with precision.literal_component('fast'):
            pass


def test_stage_errors_are_relative_norms_and_largest_differences():
    ref = torch.tensor([[3., 0.], [0., 4.]], dtype=torch.float64)  # norm 5
    out = (ref + torch.tensor([[0., 0.], [0., -0.5]])).float()
    (errors, ) = precision.stage_errors([out], [ref])
    assert errors == dict(rel=0.1, max_abs=0.5)
    assert precision.format_cell(errors) == '1.00e-01 (5.0e-01)'
