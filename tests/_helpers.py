"""Helpers shared by the tests (imported by test files; never a test file
itself, so that no test module imports another)."""
import copy
import importlib.util
import inspect
import math
import os
import subprocess
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmrest import ResT
from mmrest.backbones import to_literal
from mmrest_tools.gpu_check.measure import recording_backend  # noqa: F401

#: The repository root.
ROOT = Path(__file__).resolve().parents[1]

#: RetinaNet's anchors (mmdet's and detectron2's RetinaNet configs).
RETINANET_ANCHORS = dict(
    type='AnchorGenerator',
    octave_base_scale=4,
    scales_per_octave=3,
    ratios=[0.5, 1.0, 2.0],
    strides=[8, 16, 32, 64, 128])


def load_tool(name: str):
    """The command-line script ``tools/<name>.py`` as a module (its
    ``main`` callable in the test process)."""
    spec = importlib.util.spec_from_file_location(
        name, ROOT / 'tools' / f'{name}.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


class Ran(NamedTuple):
    """What :func:`run_program` returns: the child's exit status and
    output."""
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Standard output, then standard error."""
        return self.stdout + self.stderr


def run_program(argv: Sequence,
                *,
                cwd=ROOT,
                env: Optional[dict] = None,
                timeout: float = 900,
                ok: bool = True) -> Ran:
    """Runs ``argv`` (its items made strings) in a child process from
    ``cwd``, with this process's environment and ``env`` over it (conftest
    has put this clone first on ``PYTHONPATH``), its output captured as
    text. ``ok``: asserts that it succeeded, with the end of its output as
    the message."""
    proc = subprocess.run([str(a) for a in argv],
                          cwd=cwd,
                          env={
                              **os.environ,
                              **(env or {})
                          },
                          capture_output=True,
                          text=True,
                          timeout=timeout)
    ran = Ran(proc.returncode, proc.stdout, proc.stderr)
    if ok:
        assert ran.returncode == 0, (
            f'{argv[0]} exited with {ran.returncode}:\n{ran.output[-6000:]}')
    return ran


# float32 machine epsilon, 2**-23.
EPS32 = torch.finfo(torch.float32).eps

# How much larger than the literal (authors') path's own float32 error the
# error of a fast path may be. A correct fast path computes the same sums
# in another order or grouping (chunks, folded BatchNorms, other kernels).
# The rounding error of a float32 sum is bounded by the number of terms and
# the depth of the summation tree, not by their order, so reorderings have
# errors of the same order of magnitude. Measured with
# `tools/precision_report.py` (eight variants, 224x224, AMD EPYC): the eval
# fast path is at 0.99x to 1.01x the literal path's error for ResT v2 and
# 0.01x to 0.93x for ResT (its attention core avoids the cancellation that
# dominates the literal error); before that work, kernels that accumulate
# differently (oneDNN's channels-last convolution and long linears) made it
# up to 2.4x (ResT v2-L, stage 4): the ratio of two float32 errors moves by
# that much between kernels, so between CPUs. 4 leaves room for CPUs that
# round differently (another SIMD width or kernel) while a wrong formula (a
# missing normalisation, a transposed weight) is off by 1e-3 to 1, hundreds
# to millions of times the float32 error.
ERROR_FACTOR = 4.0
# The same for gradients. A parameter's gradient is a reduction over all
# tokens of back-propagated quantities that each carry the forward error,
# and a small tensor (a 2 x 2 head-mixing weight) has few entries to
# average the rounding over, so the ratio of two float32 errors spreads
# more: measured up to 2.7x (one thread, norm_eval training of ResT-Lite),
# against 1.8x for outputs. The float64 tests check every gradient formula
# to 1e-8, so the wider float32 margin hides no formula error.
GRADIENT_FACTOR = 8.0

# Where the literal path is by chance very accurate (small ops, lucky
# cancellation), a ratio of two tiny errors is noise: below a floor every
# float32 result is as good as float32 gets. A float32 sum of K terms, each
# rounded with a relative error up to EPS32 / 2 in random direction, is off
# by about EPS32 * sqrt(K) (the random-walk model of rounding; the worst
# case K * EPS32 is far too pessimistic in practice). ResT's longest
# reductions are over the M keys of an attention row or the N x M entries
# of one InstanceNorm, about 4096 terms in these tests, and each of `depth`
# layers adds an independent error of that size: the floor is
# EPS32 * sqrt(4096 * depth), 7.6e-6 for one layer and 2.6e-5 for the 12
# layers of a ResT-Lite. That is 40 to 1000 times below the error of a
# wrong formula, so the floor cannot hide one.
REDUCTION_TERMS = 4096


def _cpu_float16_autocast() -> bool:
    """Whether this torch autocasts to float16 on the CPU (torch 2.1 only to
    bfloat16 there; on CUDA every supported torch has both)."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with torch.autocast('cpu', dtype=torch.float16):
                return True
    except RuntimeError:
        return False


# Tests of float16 autocast on the CPU, and of a GradScaler there, where the
# installed torch has them: a capability of the platform (as CUDA is), so
# skipped where it is absent (the oldest stack, torch 2.1).
CPU_FLOAT16_AUTOCAST = _cpu_float16_autocast()
NEEDS_CPU_FLOAT16 = pytest.mark.skipif(
    not CPU_FLOAT16_AUTOCAST,
    reason=f'torch {torch.__version__} has no float16 autocast on the CPU')
CPU_GRAD_SCALER = hasattr(torch.amp, 'GradScaler')  # torch >= 2.3
NEEDS_CPU_GRAD_SCALER = pytest.mark.skipif(
    not CPU_GRAD_SCALER,
    reason=f'torch {torch.__version__} has no GradScaler for the CPU '
    '(torch.amp.GradScaler: torch >= 2.3)')
CPU_FLOAT16 = pytest.param(torch.float16, marks=NEEDS_CPU_FLOAT16)


def float32_floor(depth: int = 1, terms: int = REDUCTION_TERMS) -> float:
    """The error below which any float32 result is acceptable (see above)."""
    return EPS32 * math.sqrt(terms * depth)


def v2_reduction_terms(model) -> int:
    """The ``terms`` of :func:`float32_floor` for a ResT v2: it has no
    InstanceNorm, so its longest float32 sums are those of a patch
    embedding's 3x3 convolution (9 x the previous stage's channels) and of
    the MLP's second linear (4 x the channels); 576 for the reference
    model, against 4096 for ResT."""
    dims = model.embed_dims
    ratio = max(block.mlp.fc1.out_features // dims[i] for i in range(4)
                for block in getattr(model, f'stage{i + 1}'))
    return max(max(9 * c for c in dims[:3]), ratio * dims[3])


def autocast_floor(dtype: torch.dtype, depth: int = 1) -> float:
    """The floor of :func:`float32_floor` for a result computed under
    autocast in ``dtype`` (bf16 or fp16): there every matrix product and
    convolution accumulates in float32 and rounds its output to ``dtype``
    once, a relative error spread evenly over +-eps / 2 (its RMS is
    eps / sqrt(12)), and each of ``depth`` layers adds one such error
    independently: ``eps * sqrt(depth / 12)``. For the 2 to 8 layers of the
    tiny test models, 2.3e-3 to 4.5e-3 in bf16, 2.8e-4 to 5.6e-4 in fp16:
    below the measured errors of both paths, which round more than once
    per layer."""
    return torch.finfo(dtype).eps * math.sqrt(depth / 12)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, computed in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()


def float32_errors(fast: torch.Tensor,
                   literal: torch.Tensor,
                   reference: torch.Tensor,
                   scale: Optional[float] = None):
    """The errors of ``fast`` and ``literal`` against the float64
    ``reference``, relative to ``scale`` (default: the reference's norm)."""
    assert reference.dtype == torch.float64, 'the reference must be float64'
    assert fast.shape == reference.shape == literal.shape, \
        (fast.shape, literal.shape, reference.shape)
    if scale is None:
        scale = reference.norm().item()
    assert scale > 0
    err_fast = (fast.double() - reference).norm().item() / scale
    err_literal = (literal.double() - reference).norm().item() / scale
    return err_fast, err_literal


def assert_float32_close(fast: torch.Tensor,
                         literal: torch.Tensor,
                         reference: torch.Tensor,
                         *,
                         depth: int = 1,
                         scale: Optional[float] = None,
                         name: str = '',
                         factor: float = ERROR_FACTOR,
                         floor: Optional[float] = None):
    """Assert that a float32 result is as accurate as float32 allows.

    ``err(fast) <= factor * err(literal) + float32_floor(depth)``,
    both errors measured against the exact (float64) ``reference``, where
    ``literal`` is the literal (authors') computation in float32 of the same
    thing on this CPU. ``scale`` sets what the errors are relative to (the
    reference's norm by default; give another norm where the exact result
    is zero, e.g. a gradient that must vanish). ``floor`` replaces
    ``float32_floor(depth)`` (results computed under autocast:
    :func:`autocast_floor`).

    Returns:
        tuple: ``(err_fast, err_literal, bound)``.
    """
    assert fast.dtype != torch.float64, 'compare float32 results'
    err_fast, err_literal = float32_errors(fast, literal, reference, scale)
    if floor is None:
        floor = float32_floor(depth)
    bound = factor * err_literal + floor
    if os.environ.get('MMREST_BOUND_LOG'):  # to see the margins on a CPU
        with open(os.environ['MMREST_BOUND_LOG'], 'a') as f:
            f.write(f'{os.environ.get("PYTEST_CURRENT_TEST", "")}\t{name}\t'
                    f'{err_fast:.3e}\t{err_literal:.3e}\t{bound:.3e}\n')
    assert err_fast <= bound, (
        f'{name}: error {err_fast:.3g} against float64, more than '
        f'{factor} x the literal error {err_literal:.3g} + {floor:.3g}')
    return err_fast, err_literal, bound


def assert_float64_equal(actual: torch.Tensor,
                         expected: torch.Tensor,
                         name: str = '',
                         tol: float = 1e-8):
    """Two float64 computations of the same formula: equal to 1e-8 (float64
    rounding is ~1e-16 per operation; 1e-8 still spots any formula change).
    """
    assert actual.dtype == expected.dtype == torch.float64
    err = relative_error(actual, expected)
    assert err < tol, f'{name}: relative difference {err:.3g}'


ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'sr_ratios', 'mlp_ratios',
             'qkv_bias', 'apply_transform')


def golden_model(golden: dict, **kwargs) -> ResT:
    """The ResT v1 of the golden file, its weights loaded (no head)."""
    arch = {k: golden['config'][k] for k in ARCH_KEYS}
    model = ResT(arch=arch, **kwargs)
    state = {
        k: v
        for k, v in golden['state_dict'].items() if not k.startswith('head.')
    }
    model.load_state_dict(state, strict=True)
    return model


def golden_arch_v2(golden: dict) -> dict:
    """The arch dict of the golden v2 file's model."""
    return {
        k: golden['config'][k]
        for k in ('embed_dims', 'depths', 'num_heads', 'sr_ratios')
    }


def golden_backbone_state_v2(golden: dict) -> dict:
    """The golden v2 state dict without the classifier's ``norm`` and
    ``head``."""
    return {
        k: v
        for k, v in golden['state_dict'].items()
        if not k.startswith(('norm.', 'head.'))
    }


def golden_model_v2(golden: dict, **kwargs) -> torch.nn.Module:
    """The ResT v2 of the golden v2 file, its backbone weights loaded."""
    from mmrest import ResTV2
    model = ResTV2(arch=golden_arch_v2(golden), **kwargs)
    model.load_state_dict(golden_backbone_state_v2(golden), strict=True)
    return model


def stage_depths(model: ResT) -> Sequence[int]:
    """Layers each returned feature map has gone through (stem or patch
    embedding and blocks of every stage up to it): the ``depth`` of its
    float32 floor."""
    depths = model.arch_settings['depths']
    return [sum(depths[:i + 1]) + i + 1 for i in model.out_indices]


def float64_literal(model: torch.nn.Module) -> torch.nn.Module:
    """The literal computation of ``model`` in float64: the exact result
    the float32 paths are measured against."""
    return to_literal(model).double()


def assert_gradients_close(fast: torch.nn.Module,
                           literal: torch.nn.Module,
                           reference: torch.nn.Module,
                           *,
                           depth: int = 1):
    """:func:`assert_float32_close` on the gradient of every parameter
    (with ``GRADIENT_FACTOR``; :func:`assert_named_float32_close`).

    The three modules hold the same parameters (``reference`` in float64)
    and have each run a backward pass of the same loss.
    """
    named = list(fast.named_parameters())
    literal_params = list(literal.parameters())
    reference_params = list(reference.parameters())
    assert len(named) == len(literal_params) == len(reference_params)
    triples = {}
    for (name, pf), pl, pr in zip(named, literal_params, reference_params):
        if pr.grad is None:
            assert pf.grad is None and pl.grad is None, name
            continue
        assert pf.grad is not None, f'{name}: no gradient'
        triples[f'gradient of {name}'] = (pf.grad, pl.grad, pr.grad)
    assert_named_float32_close(triples, depth=depth)


def training_step_triples(runs, name: str = '') -> dict:
    """One training step (loss: the sum of the output's squares) of each
    ``(call, module, input)`` of ``runs``, in the order fast, literal (or
    eager float32), float64 reference: ``{name: [three tensors]}`` of the
    output, the input's gradient and each parameter's gradient, for
    :func:`assert_named_float32_close`. ``call(input)`` runs the step's
    forward pass; ``module`` holds the parameters; each input is a fresh
    leaf with its own gradient."""
    triples = {}
    for call, module, x in runs:
        inp = x.detach().requires_grad_()
        module.zero_grad(set_to_none=True)
        out = call(inp)
        out.square().sum().backward()
        results = dict(output=out.detach(), input=inp.grad)
        results.update((n, p.grad) for n, p in module.named_parameters())
        for key, value in results.items():
            triples.setdefault(f'{name}{key}', []).append(value)
    return triples


def assert_named_float32_close(triples: dict,
                               *,
                               depth: int = 1,
                               factor: float = GRADIENT_FACTOR):
    """:func:`assert_float32_close` on each ``name: (fast, literal,
    reference)`` of ``triples``: the gradients, or the updates, of a
    model's parameters.

    Where the exact tensor is zero (the gradient of a bias that a softmax
    or a train-mode BatchNorm cannot see), both float32 results are
    rounding noise: it is measured against the norm of all the reference
    tensors instead of its own.
    """
    assert triples, 'nothing to compare'
    total = torch.stack([r.norm()
                         for _, _, r in triples.values()]).norm().item()
    for name, (fast, literal, reference) in triples.items():
        exact_zero = reference.norm().item() <= 1e-9 * total
        assert_float32_close(
            fast,
            literal,
            reference,
            depth=depth,
            scale=total if exact_zero else None,
            name=name,
            factor=factor)


def literal_attention(q, k, v, mix, mix_bias, attn_drop=0., eps=1e-5):
    """network.md's EMSA steps 4-6 as written, on scaled queries: N x M maps,
    a 1x1 conv over the heads (bias included), softmax, InstanceNorm,
    (dropout), ``@ v``."""
    h = q.shape[1]
    attn = q @ k.transpose(-2, -1)
    attn = F.conv2d(attn, mix.view(h, h, 1, 1), mix_bias)
    attn = F.instance_norm(attn.softmax(dim=-1), eps=eps)
    attn = F.dropout(attn, attn_drop, training=attn_drop > 0)
    return attn @ v


#: Small arch dicts of both families (two blocks at stage 3), for tests
#: that build many models or compile them.
TINY_V1 = dict(
    embed_dims=[8, 16, 32, 64],
    depths=[1, 1, 2, 1],
    num_heads=[1, 2, 4, 8],
    sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[2, 2, 2, 2])
TINY_V2 = dict(
    embed_dims=[8, 16, 32, 64], depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8])


class Reduce:
    """Pickles as ``func(*args)``: what a hostile checkpoint holds (e.g.
    ``Reduce(os.system, 'touch pwned')``)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class CallCounter:
    """Replaces ``owner.name`` (via pytest's ``monkeypatch``, which raises
    if there is no such attribute: a renamed hook fails the test instead
    of leaving it silently unprobed) with a wrapper that counts the calls
    and passes them on; with ``record`` it keeps each call's arguments
    (``calls``) and what it returned (``results``)."""

    def __init__(self, monkeypatch, owner, name: str, record: bool = False):
        original = getattr(owner, name)
        assert original is not None, f'{owner}.{name} is None'
        self.count = 0
        self.calls = []
        self.results = []

        def wrapper(*args, **kwargs):
            self.count += 1
            if record:
                self.calls.append((args, kwargs))
            result = original(*args, **kwargs)
            if record:
                self.results.append(result)
            return result

        if isinstance(inspect.getattr_static(owner, name), staticmethod):
            wrapper = staticmethod(wrapper)
        monkeypatch.setattr(owner, name, wrapper)


class SavedForBackward:
    """A ``with`` block that records what autograd saves for the backward
    pass of the computations run inside it
    (``torch.autograd.graph.saved_tensors_hooks``). ``nbytes`` is the
    memory those tensors hold: the bytes of their storages, each storage
    counted once (a view, or a tensor saved by two operations, shares
    one). The tensors stay referenced here, so no storage is freed and
    reused while the block runs.

    Gradient checkpointing (non-reentrant) saves the inputs of each
    checkpointed function through the hooks seen here, and what the
    function itself saves through its own hooks: that is not recorded,
    it is recomputed in the backward pass."""

    def __enter__(self):
        self.tensors, self.storages = [], {}

        def pack(t):
            self.tensors.append(t)
            storage = t.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


# The ATen operators of matrix products (the backward's shapes of
# interest: see OpsRecorded)
MATRIX_PRODUCTS = frozenset(('mm', 'bmm', 'addmm', 'baddbmm', 'addbmm', 'mv',
                             'addmv', 'dot', 'matmul', 'linear'))


class OpsRecorded(TorchDispatchMode):
    """A ``with`` block that records the names of the ATen operators run
    inside it (``names``, in order; autograd's backward included) and the
    elements of each one's largest tensor argument (``largest``, 0 for
    none)."""

    def __enter__(self):
        self.names, self.largest = [], []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        self.largest.append(
            max((a.numel() for a in args if isinstance(a, torch.Tensor)),
                default=0))
        return func(*args, **(kwargs or {}))


def build_detector(config):
    """The mmdet model of a config file (a path), its backbone from scratch
    (no ImageNet checkpoint needed). Returns ``(cfg, model)``."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    return cfg, MODELS.build(cfg.model)


def random_state_dict(model: torch.nn.Module) -> dict:
    """``model``'s state dict with every floating-point entry drawn anew
    (uniform in [0, 1)), the others (counters, indices) as they are: weights
    that differ from the model's own, to see that a load took them."""
    return {
        k: torch.rand_like(v) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def file_bytes(root) -> dict:
    """Every file below the folder ``root`` (a ``Path``): its path relative
    to ``root`` to its bytes (to compare two generated data sets)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def export_module(module, example, prefix, output_names, switch):
    """``module`` exported by mmdeploy for ONNX Runtime (the segmentation
    deploy config, opset 11) at ``example``, its input ``x``, with dynamic
    batch, height and width, within the rewrite switch ``switch``, to
    ``prefix + '.onnx'``; a function running the file in ONNX Runtime
    (:func:`mmrest.deploy.onnx_outputs`)."""
    import functools

    from mmdeploy.apis.onnx import export

    from mmrest.deploy import (load_deploy_cfg, mmdeploy_torch_shims,
                               onnx_outputs)
    with torch.no_grad(), mmdeploy_torch_shims(), switch:
        export(
            module,
            example,
            prefix,
            backend='onnxruntime',
            context_info={'deploy_cfg': load_deploy_cfg('segmentation')},
            input_names=['x'],
            output_names=output_names,
            opset_version=11,
            dynamic_axes={'x': {
                0: 'batch',
                2: 'height',
                3: 'width'
            }})
    return functools.partial(onnx_outputs, prefix + '.onnx')


def run_tiny_demo(tmp_path_factory, config, splits: dict, schedule: dict):
    """:func:`mmrest_tools.demo.run_demo` on a tiny generated set: ``splits``
    images, batches of 2, every iteration logged, the ``schedule``
    overrides; the set goes to ``tmp/data``, the outputs to ``tmp/work``
    (``tmp`` a new folder of pytest's ``tmp_path_factory``). Returns
    ``tmp`` and the summary (metrics.json)."""
    from mmrest_tools.demo import run_demo
    tmp = tmp_path_factory.mktemp('demo')
    options = {
        'shapes_data.splits': splits,
        'train_dataloader.batch_size': 2,
        'val_dataloader.batch_size': 2,
        'default_hooks.logger.interval': 1,
        # a visualizer of its own: mmengine hands out an existing instance
        # of the same name (another test's, writing to its folder)
        'visualizer.name': f'visualizer_{tmp.name}_{id(tmp)}',
        **schedule,
    }
    start = time.perf_counter()
    summary = run_demo(
        str(config),
        str(tmp / 'work'),
        num_threads=2,
        cfg_options=options,
        data_root=str(tmp / 'data'))
    elapsed = time.perf_counter() - start
    assert summary['data_generated'] is True
    assert_demo_timings(summary, elapsed)
    return tmp, summary


def assert_demo_timings(summary: dict, elapsed: float) -> None:
    """metrics.json's ``time_s`` (seconds, to 0.1; per iteration to 1e-4)
    fits the ``elapsed`` seconds of the run: each phase inside the whole
    and the phases one after the other, the training iterations inside
    training and evaluation, the time per iteration their mean."""
    t, half = summary['time_s'], 0.05  # half the rounding step
    assert 0 <= t['data'] <= t['total'] + half, t
    assert 0 <= t['train_and_eval'] <= t['total'] + half, t
    assert t['total'] <= elapsed + half, (t, elapsed)
    assert t['data'] + t['train_and_eval'] <= t['total'] + 2 * half, t
    assert 0 < t['train_iterations'] <= t['train_and_eval'] + 2 * half, t
    iterations = summary['iterations']
    assert abs(t['per_iteration'] * iterations - t['train_iterations']) <= \
        half + iterations * 5e-5, t
    assert t['cpu_per_iteration'] > 0, t


def demo_training_records(work, summary: dict) -> list:
    """Checks what every demo writes to its work dir ``work``: metrics.json
    (equal to ``summary``), a loss curve and a picture of predictions that
    are not blank. Returns mmengine's logged training records."""
    import json

    import cv2

    from mmrest_tools.demo import read_scalars
    assert json.loads((work / 'metrics.json').read_text()) == summary
    for name in ('loss.png', 'predictions.png'):
        image = cv2.imread(str(work / name))
        assert image is not None and image.std() > 0, name
    scalars = next(work.glob('*/vis_data/scalars.json'))
    return [r for r in read_scalars(str(scalars)) if 'loss' in r]


def assert_frozen_stages(model, frozen_stages: int, sizes: Sequence[int]):
    """``model.train()`` (twice) keeps the frozen levels frozen: level 0 is
    the stem, level i the patch embedding, blocks and output norm of stage
    i; a frozen level has no parameter that needs a gradient and every
    module in eval mode, the others the reverse. ``sizes``: the number of
    modules of levels 1 to 4."""
    assert model.train() is model
    model.train()  # a second call keeps them frozen
    levels = [[model.stem]
              ] + [[m for m in model._stage_modules(i) if m is not model.stem]
                   for i in range(4)]
    assert [len(level) for level in levels[1:]] == list(sizes)
    for level, modules in enumerate(levels):
        frozen = level <= frozen_stages if level else frozen_stages >= 0
        for module in modules:
            assert all(not p.requires_grad
                       for p in module.parameters()) == frozen, level
            assert all(m.training != frozen for m in module.modules()), level


def settings_by_param(optim_wrapper):
    """{id(param): (lr, weight_decay)} over the optimizer's groups; each
    parameter in exactly one group."""
    out = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            assert id(p) not in out, 'a parameter in two groups'
            out[id(p)] = (group['lr'], group['weight_decay'])
    return out


def scheduled_lrs(optim_wrapper,
                  param_scheduler,
                  iterations: int,
                  epoch_length: Optional[int] = None) -> list:
    """The lr of the optimizer's first group at each of ``iterations``
    training iterations under the scheduler configs ``param_scheduler``
    (left unchanged), stepped as mmengine's ``ParamSchedulerHook`` steps
    them: iteration-based schedulers after every iteration, then
    epoch-based ones after the last iteration of each epoch of
    ``epoch_length`` iterations (also the length with which mmengine's
    Runner converts ``convert_to_iter_based`` schedulers). Without
    ``epoch_length`` an epoch-based scheduler is refused."""
    from mmengine.registry import PARAM_SCHEDULERS
    default_args = dict(optimizer=optim_wrapper)
    if epoch_length is not None:
        default_args['epoch_length'] = epoch_length
    schedulers = [
        PARAM_SCHEDULERS.build(
            copy.deepcopy(dict(s)), default_args=dict(default_args))
        for s in param_scheduler
    ]
    if epoch_length is None and any(s.by_epoch for s in schedulers):
        raise ValueError('an epoch-based scheduler needs epoch_length')
    lrs = []
    for it in range(iterations):
        lrs.append(optim_wrapper.get_lr()['lr'][0])
        for s in schedulers:
            if not s.by_epoch:
                s.step()
        if epoch_length is not None and (it + 1) % epoch_length == 0:
            for s in schedulers:
                if s.by_epoch:
                    s.step()
    return lrs


class LoadedKernel:
    """Stands in for Triton's compiled kernel as
    ``emsa_triton.spilled_bytes`` reads it: loading it (``_init_handles``)
    raises ``refusal`` (Triton's ``OutOfResources``: a GPU without the
    shared memory), if given, else gives ``spilled`` bytes a thread as
    ``n_spills`` (Triton's 4-byte words)."""
    n_spills = None

    def __init__(self, spilled: int, refusal: Optional[Exception] = None):
        self.spilled, self.refusal = spilled, refusal

    def _init_handles(self):
        if self.refusal is not None:
            raise self.refusal
        self.n_spills = self.spilled // 4


class GridRecorder:
    """Stands in for the kernel ``name`` of mmrest.backbones.emsa_triton,
    recording the grid of each launch (``kernel[grid](...)``, in
    ``grids``), its ``SPLIT`` switch (in ``switches``) and its rows and
    stages (in ``launches``), and launching the kernel itself, unless
    ``refuse`` of the launch's options says the GPU has too little shared
    memory for it (Triton's ``OutOfResources`` raised).

    Its compilation without a launch (``warmup``, which
    ``emsa_triton.spilled_bytes`` asks for) is the interpreter's (nothing
    compiled: None) unless ``spills`` is given: then, as on a GPU, a
    stand-in for Triton's compiled kernel whose loading
    (``_init_handles``) raises where ``refuse`` says so and then gives
    ``spills`` of the options, in bytes a thread, as ``n_spills`` (4-byte
    words); its rows and stages are recorded in ``compiled``."""

    def __init__(self, monkeypatch, name, refuse=None, spills=None):
        from mmrest.backbones import emsa_triton
        self.module = emsa_triton
        self.kernel, self.grids, self.switches = getattr(emsa_triton,
                                                         name), [], []
        self.launches, self.refuse = [], refuse
        self.spills, self.compiled = spills, []
        monkeypatch.setattr(emsa_triton, name, self)

    def _refusal(self, kwargs):
        """Triton's refusal of a launch beyond the GPU's shared memory,
        where ``refuse`` says so, else None."""
        if self.refuse and self.refuse(kwargs):
            return self.module.OutOfResources(kwargs['BLOCK_N'] * 1024,
                                              16 * 1024, 'shared memory')
        return None

    def __getitem__(self, grid):
        self.grids.append(grid)

        def launch(*args, **kwargs):
            self.switches.append(kwargs.get('SPLIT'))
            self.launches.append((kwargs['BLOCK_N'], kwargs['num_stages']))
            refusal = self._refusal(kwargs)
            if refusal is not None:
                raise refusal
            return self.kernel[grid](*args, **kwargs)

        return launch

    def warmup(self, *args, grid, **kwargs):
        if self.spills is None:
            return self.kernel.warmup(*args, grid=grid, **kwargs)
        self.compiled.append((kwargs['BLOCK_N'], kwargs['num_stages']))
        return LoadedKernel(self.spills(kwargs), self._refusal(kwargs))
