"""tools/op_census.py (mmrest_tools/op_census.py): the operators of one
training step, counted on the CPU."""
import sys

import pytest
import torch
from _helpers import run_program

from mmrest import ResT
from mmrest.backbones import emsa_triton
from mmrest_tools.op_census import (FLOP_FORMULAS, KERNELS, Census,
                                    _PausedLaunch, kernel_flop, step_census,
                                    summary)


def _small_rest():
    torch.manual_seed(0)
    return ResT(arch='small', out_indices=(0, 1, 2, 3))


@pytest.mark.skipif(
    not emsa_triton.available(), reason='needs triton >= 3 to import')
def test_census_of_a_training_step_with_paused_kernels():
    """ResT-Small under fp16 autocast with the 'triton' core: each of its
    10 blocks with head mixing (stages 2 to 4: 2 + 6 + 2) launches the
    forward kernel once and each backward kernel once, counted though
    paused; every matrix product and convolution runs in float16; views
    are not counted. The 'chunked' core, whose products run in float32 by
    design, shows float32 products."""
    census = step_census(_small_rest(), (64, 64), torch.float16, 'triton')
    assert [census.count[k] for k in KERNELS] == [10, 10, 10]
    # their FLOPs from their shapes: at 64x64 every stage with head mixing
    # has 4 keys (stage 2: 8x8 tokens reduced by 4, stage 3: 4x4 by 2,
    # stage 4: 2x2), per (batch, head) N x M x (C, D) products
    blocks = [(2, 64, 128), (6, 16, 256), (2, 4, 512)]  # depth, N, C
    forward = sum(depth * 2 * 2 * (C // 64) * N * 4 * (C + 64)
                  for depth, N, C in blocks)
    assert census.flop[('_forward_kernel', 'float16', 'float16')] == forward
    assert 'view' not in census.count and 'transpose' not in census.count
    if not FLOP_FORMULAS:
        pytest.skip(f'no FLOP formulas in torch {torch.__version__}')
    products = {key for key in census.flop if census.flop[key] > 0}
    assert products and all(key[1:] == ('float16', 'float16')
                            for key in products), products
    assert {'mm', 'addmm', 'convolution', 'convolution_backward'} <= \
        {key[0] for key in products}
    chunked = step_census(_small_rest(), (64, 64), torch.float16, 'chunked')
    assert not chunked.count.keys() & set(KERNELS)
    assert any('float32' in key for key in chunked.flop), chunked.flop
    row = summary('rest_small', census)
    assert row['operators'] == sum(census.count.values())


def test_op_census_command_line():
    """The command prints one line per model with its counts, here for
    ResT-Lite at 32x32 in float32 with the 'chunked' core (no triton
    needed)."""
    out = run_program([
        sys.executable, 'tools/op_census.py', '--models', 'rest_lite',
        '--size', '32', '32', '--autocast', 'fp32', '--core', 'chunked'
    ],
                      timeout=600)
    assert 'rest_lite: ' in out.stdout and ' operators, ' in out.stdout
    assert "'mm float32 float32'" in out.stdout or not FLOP_FORMULAS, \
        out.stdout


def test_kernel_flop_formulas():
    """Each Triton kernel's matrix products from its arguments' shapes,
    written out for B = 2, H = 3, N = 5, M = 7, C = 12, D = 4 (a multiply
    and an add: 2): the forward's logits (N M C) and P V (N M D); the
    queries' gradient: logits, dO V^T, dl K; the keys' and values':
    logits, dO V^T, (P - 1/M)^T dO, dl^T Q."""
    q, k, v = (2, 3, 5, 12), (2, 7, 12), (2, 3, 7, 4)
    per_head = 2 * 2 * 3 * 5 * 7
    assert kernel_flop('_forward_kernel', q, k, v) == per_head * (12 + 4)
    assert kernel_flop('_grad_queries_kernel', q, k, v) == \
        per_head * (12 + 4 + 12)
    assert kernel_flop('_grad_keys_values_kernel', q, k, v) == \
        per_head * (12 + 4 + 4 + 12)


def test_summary_units():
    """A row's units: MiB of tensors touched (rounded), GFLOP per (operator,
    dtypes) to two decimals, the most frequent operators first."""
    census = Census()
    census.count.update(mm=3, add=5, relu=1)
    census.nbytes.update(mm=3 * 2**20, add=2**19)
    census.flop[('mm', 'float16', 'float16')] = 2.5e9
    census.flop[('addmm', 'float32', 'float32')] = 1.234e7
    row = summary('x', census, top=2)
    assert row == dict(
        model='x',
        operators=9,
        mbytes=4,  # 3.5 MiB, rounded to even
        gflop={
            'mm float16 float16': 2.5,
            'addmm float32 float32': 0.01
        },
        top=dict(add=5, mm=3))


def test_paused_launches_count_only_inside_the_census():
    """A paused kernel's launch is counted (with its FLOPs) by a census
    while its block runs, not before it is entered or after it ends."""
    census = Census()
    name = KERNELS[0]
    launch = _PausedLaunch(name, [census])[(1, )]
    q, k, v = torch.zeros(1, 2, 4, 8), torch.zeros(1, 3,
                                                   8), torch.zeros(1, 2, 3, 8)
    launch(q, k, v)
    with census:
        launch(q, k, v)
    launch(q, k, v)
    assert census.count[name] == 1
    assert census.flop[(name, 'float32',
                        'float32')] == kernel_flop(name, q.shape, k.shape,
                                                   v.shape)
