"""tools/precision_report.py and mmrest_tools.precision: the figures
docs/precision_and_export.md quotes come from these functions."""
import subprocess
import sys

import pytest
import torch
from _helpers import CPU_FLOAT16, ERROR_FACTOR, ROOT, float32_floor

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
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert '| v1 lite | literal fp32 |' in out
    assert '| v1 lite | fast: all fast |' in out
    out = subprocess.run(
        cmd + ['--autocast', 'bf16'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True).stdout
    assert 'Batch 2 x 3 x 64 x 64' in out
    assert '| v1 lite | bf16 | literal |' in out
    assert '| v1 lite | bf16 | fast |' in out
