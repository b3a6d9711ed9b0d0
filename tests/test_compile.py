"""torch.compile as users turn it on: a multi-scale training run under
automatic dynamic shapes (the default ``dynamic=None``: the first input size
compiles a static graph, a second size recompiles once with symbolic sizes,
and that graph serves every later size) and mmengine's ``compile=True``.

Inductor (the default backend) compiles the forward and backward graphs to
C++, which takes many minutes on a small shared CPU: its runs are on request
(``MMREST_INDUCTOR_TRAINING=1``, as in tests/test_export.py). Every run
checks the same steps through dynamo and AOTAutograd with the ``aot_eager``
backend, which is where the model's Python code meets symbolic sizes."""
import copy
import os

import pytest
import torch
from _helpers import (assert_float32_close, assert_gradients_close,
                      assert_named_float32_close, float64_literal,
                      golden_model, golden_model_v2, recording_backend,
                      stage_depths, training_step_triples)

from mmrest.backbones import to_literal
from mmrest.utils import torch_compat

# Four sizes, each differing from the previous one in height and width;
# the last two are not multiples of 32.
SIZES = [(64, 96), (96, 64), (80, 80), (88, 72)]
# the mmengine runs below: every size twice, one image a step
RUN_STEPS = 2 * len(SIZES)

INDUCTOR = pytest.param(
    'inductor',
    marks=pytest.mark.skipif(
        not os.environ.get('MMREST_INDUCTOR_TRAINING'),
        reason='Inductor compiles the forward and backward graphs to C++: '
        'many minutes on two cores; set MMREST_INDUCTOR_TRAINING=1'))


@pytest.fixture
def fresh_dynamo():
    """No compiled frame and no automatic-dynamic history from other tests
    (a frame seen at two sizes before would start symbolic)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def inductor_as_on_cuda(request):
    """For a test's Inductor case (its ``backend`` parameter), Inductor's
    layout optimisation off, as Inductor has it on CUDA for graphs with
    symbolic sizes (on the CPU, with oneDNN, it makes convolutions
    channels-last also under dynamic shapes, and the backward graph then
    pins sizes: docs/precision_and_export.md), and no FX graph cache: a
    graph compiled before (by another run, or with torch's lowering
    unpatched) would bring its guards along. (Inductor's own
    ``config.patch``: pytest's ``monkeypatch`` deletes a setting of torch's
    config module when it undoes.)"""
    if request.node.callspec.params.get('backend') != 'inductor':
        yield
        return
    from torch._inductor import config
    with config.patch(layout_optimization=False, fx_graph_cache=False):
        yield


# Measured on torch 2.1.2 (the oldest supported): its PixelShuffle backward
# cannot take symbolic sizes, so ResT v2's symbolic training graph (the
# second size) fails in AOTAutograd; torch 2.13 compiles it.
V2_OLD_TORCH = pytest.mark.xfail(
    torch_compat.torch_version() < (2, 2),
    raises=torch._dynamo.exc.BackendCompilerFailed,
    strict=True,
    reason=f'torch {torch.__version__}: PixelShuffle backward with symbolic '
    'sizes ("Cannot call sizes() on tensor with symbolic sizes/strides")')


def models(golden, golden_v2):
    return {
        'v1': lambda: golden_model(golden),
        'v2': lambda: golden_model_v2(golden_v2)
    }


@pytest.mark.parametrize('backend', ['aot_eager', INDUCTOR])
@pytest.mark.parametrize('family',
                         ['v1', pytest.param('v2', marks=V2_OLD_TORCH)])
def test_multi_scale_training_compiles_dynamically(family, backend, golden,
                                                   golden_v2, fresh_dynamo,
                                                   inductor_as_on_cuda):
    """Training steps at four sizes under ``torch.compile`` with automatic
    dynamic shapes: one static graph, then one symbolic graph that serves
    the later sizes (no recompilation at sizes that are not multiples of
    32); at every size the outputs and every parameter's gradient are as
    accurate as the literal float32 computation's, against float64 (the bar
    of the eager tests, tests/_helpers.py)."""
    model = models(golden, golden_v2)[family]().train()
    literal = to_literal(model)
    reference = float64_literal(model)
    compiled_backend, symbolic = recording_backend(backend)
    compiled = torch.compile(model, backend=compiled_backend)  # dynamic=None
    gen = torch.Generator().manual_seed(0)
    for size in SIZES:
        x = torch.randn(2, 3, *size, generator=gen)
        results, weights = [], None
        for module, runner, inp in ((model, compiled, x), (literal, literal,
                                                           x),
                                    (reference, reference, x.double())):
            module.zero_grad(set_to_none=True)
            outs = runner(inp)
            if weights is None:  # the loss: random weights on every output
                weights = [torch.randn(o.shape, generator=gen) for o in outs]
            sum((o * w.to(o.dtype)).sum()
                for o, w in zip(outs, weights)).backward()
            results.append([o.detach() for o in outs])
        for i, (a, b, c,
                depth) in enumerate(zip(*results, stage_depths(model))):
            assert_float32_close(
                a, b, c, depth=depth, name=f'{size}: stage {i + 1}')
        assert_gradients_close(
            model, literal, reference, depth=sum(stage_depths(model)))
    expected = [False, True]
    assert symbolic == expected, (
        f'expected a static graph, then symbolic graphs as {expected}; got '
        f'symbolic={symbolic} for {len(SIZES)} sizes')


@pytest.mark.skipif(
    torch_compat.torch_version() < (2, 2),
    reason='torch < 2.2: PixelShuffle backward with symbolic sizes fails')
def test_value_branch_crop_serves_every_size_under_inductor(
        golden_v2, fresh_dynamo):
    """ResT v2's attention with a value branch that crops its upsampled
    map (stage 3, s = 2), trained under Inductor (as on CUDA: layout
    optimisation off) at grids whose width is and is not a multiple of s:
    one static graph, then one symbolic graph for the rest (slicing the
    crop compiled one more where the width stopped being a multiple:
    kernels.crop_to_tokens), output and gradients as accurate as eager
    float32 against float64 at every grid."""
    from torch._inductor import config
    attn = golden_model_v2(golden_v2).stage3[0].attn.train()
    assert attn.sr_ratio == 2
    exact = copy.deepcopy(attn).double()
    backend, symbolic = recording_backend('inductor')
    compiled = torch.compile(attn, backend=backend)
    gen = torch.Generator().manual_seed(0)
    C = attn.q.in_features
    with config.patch(layout_optimization=False, fx_graph_cache=False):
        for H, W in [(8, 8), (10, 12), (9, 11), (11, 13)]:
            x = torch.randn(2, H * W, C, generator=gen)
            assert_named_float32_close(
                training_step_triples(
                    [(lambda t, f=f: f(t, (H, W)), m, x.to(m.q.weight.dtype))
                     for f, m in ((compiled, attn), (attn, attn),
                                  (exact, exact))],
                    name=f'{(H, W)}: '))
    assert symbolic == [False, True], symbolic


class _MultiScaleSet(torch.utils.data.Dataset):
    """Images of the sizes in ``SIZES``, in turn (a multi-scale run)."""

    def __len__(self):
        return RUN_STEPS

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(i)
        return dict(
            inputs=torch.randn(3, *SIZES[i % len(SIZES)], generator=gen))


def _tiny_model(golden, dtype=torch.float32):
    """An mmengine model around the golden ResT (in ``dtype``): the
    training loss is a fixed weighting of the four feature maps."""
    from mmengine.model import BaseModel

    class Tiny(BaseModel):

        def __init__(self):
            super().__init__()
            self.backbone = golden_model(golden).to(dtype)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            outs = self.backbone(torch.stack(inputs).to(dtype))
            if mode != 'loss':
                return outs
            return dict(
                loss=sum(
                    (o.square().mean() * (i + 1)) for i, o in enumerate(outs)))

        def init_weights(self):  # keep the golden weights in every run
            pass

    return Tiny()


# SGD's learning rate in the runs below. Small enough that the run is not
# chaotic: with it, eager float32 ends 3e-6 from float64 in its parameter
# updates (relative), so the float32 bar can judge the compiled run. With
# 0.05 the eager float32 run itself ends 26% from float64 (8 steps of the
# tiny model): rounding differences grow step by step, whoever computes.
RUN_LR = 1e-3


def _run(model, tmp_path, name, compile_cfg, hooks=()):
    from mmengine.runner import Runner
    runner = Runner(
        model=model,
        work_dir=str(tmp_path / name),
        train_dataloader=dict(
            dataset=_MultiScaleSet(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='pseudo_collate'),
            batch_size=1,
            num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=RUN_LR)),
        train_cfg=dict(by_epoch=False, max_iters=RUN_STEPS),
        default_hooks=dict(checkpoint=None, logger=None),
        custom_hooks=list(hooks),
        log_level='WARNING',
        cfg=dict(compile=compile_cfg))  # what a config's `compile = ...` sets
    runner.train()
    return runner


@pytest.mark.parametrize('backend', ['aot_eager', INDUCTOR])
def test_mmengine_compile_true_multi_scale_run(backend, golden, tmp_path,
                                               fresh_dynamo,
                                               inductor_as_on_cuda):
    """mmengine 0.10.7's ``compile`` (``Runner._maybe_compile`` wraps
    ``model.train_step`` in ``torch.compile(**cfg)``; ``compile=True`` is
    ``cfg = {}``, here ``dict(backend=...)`` names the backend) on a
    multi-scale run: it compiles with automatic
    dynamic shapes (one static graph, then symbolic ones, not one graph per
    size) and trains as the eager run does: every parameter's update over
    the run is as close to the float64 run's as the eager float32 run's
    (the float32 bar of tests/_helpers.py, with the gradients' factor).
    """
    eager_model = _tiny_model(golden)
    compiled_model = copy.deepcopy(eager_model)
    exact_model = _tiny_model(golden, torch.float64)
    start = {k: v.clone() for k, v in eager_model.state_dict().items()}
    compiled_backend, symbolic = recording_backend(backend)
    # compile=True is dict(): torch.compile's defaults (Inductor, dynamic
    # None); the backend here is that backend, recording the graphs.
    # By name, as a config holds it (mmengine prints the config).
    name = f'mmrest_recording_{backend}_{id(symbolic)}'
    torch._dynamo.register_backend(compiled_backend, name=name)
    from mmengine.hooks import Hook
    graphs_after_step = []

    class CountGraphs(Hook):

        def after_train_iter(self, *args, **kwargs):
            graphs_after_step.append(len(symbolic))

    runner = _run(compiled_model, tmp_path, 'compiled', dict(backend=name),
                  [CountGraphs()])
    assert hasattr(runner.model.train_step, '_torchdynamo_orig_callable'), \
        'mmengine did not compile train_step'
    _run(eager_model, tmp_path, 'eager', False)
    _run(exact_model, tmp_path, 'float64', False)
    assert symbolic and symbolic[0] is False and True in symbolic, symbolic
    # the second size's step compiled the symbolic graphs; they serve the
    # later steps (every size, the first one again included)
    assert graphs_after_step[1:] == [graphs_after_step[1]] * (RUN_STEPS - 1), (
        f'graphs compiled by the end of each step: {graphs_after_step}')
    states = [m.state_dict() for m in (compiled_model, eager_model)]
    updates = {}
    for key, exact in exact_model.state_dict().items():
        if not exact.is_floating_point() or 'running_' in key:
            continue  # BatchNorm statistics are not updates
        updates[f'update of {key}'] = tuple(
            state[key] - start[key]
            for state in states) + (exact - start[key].double(), )
    # the floor's depth: every step's layers, one step after the other
    assert_named_float32_close(
        updates, depth=RUN_STEPS * stage_depths(eager_model.backbone)[-1])
