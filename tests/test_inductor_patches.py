"""mmrest.utils.inductor_patches: each fix applied exactly where its torch
bug is detected, when Inductor is imported; refusable; torch's answers
unchanged where torch can answer; and, for the ``convolution_backward``
lowering, a compiled convolution over six input sizes: two graphs with
the fix (one per size without), as accurate as eager float32 against
float64 at every size."""
import sys

import pytest
import torch
from _helpers import (assert_named_float32_close, recording_backend,
                      run_program, training_step_triples)

from mmrest.utils import inductor_patches

CONV_BACKWARD = torch.ops.aten.convolution_backward.default


def _stage_strides():
    """:func:`inductor_patches._stage_width_and_area` over symbols of a
    shape environment (as Inductor's are), and the environment."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    env = ShapeEnv()
    h = env.create_symbol(64, ConstantSource('h'))
    w = env.create_symbol(96, ConstantSource('w'))
    return (*inductor_patches._stage_width_and_area(h, w), env)


@pytest.mark.parametrize('size', [(95, 97), (97, 95), (96, 113)])
def test_stage_width_and_area_are_resTs_stride_16_map(size):
    """The question the detection asks is about ResT's real maps: the
    expressions, at an input size, are the width and area of the stage at
    stride 16 that the backbone computes (sizes around multiples of 16,
    where ``(w - 1) // 16 + 1`` and its neighbours differ)."""
    import sympy

    from mmrest import ResT
    h, w = sympy.symbols('h w', integer=True, positive=True)
    width, area = inductor_patches._stage_width_and_area(h, w)
    model = ResT(
        arch=dict(
            embed_dims=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            num_heads=[1, 2, 4, 8],
            sr_ratios=[8, 4, 2, 1],
            mlp_ratios=[4, 4, 4, 4]),
        out_indices=(2, )).eval()
    with torch.no_grad():
        stage3 = model(torch.zeros(1, 3, *size))[0]
    values = {h: size[0], w: size[1]}
    assert (int(width.subs(values)), int(area.subs(values))) == \
        (stage3.shape[-1], stage3.shape[-2] * stage3.shape[-1])


def test_inductor_stride_check_patch():
    """Where torch's range analysis raises on Inductor's stride comparison
    (torch 2.13), importing Inductor after mmrest has patched it to answer
    "unknown" (False), the function's own answer when it cannot decide, and
    every answer torch can give is unchanged; elsewhere torch is left as
    is."""
    ir = pytest.importorskip('torch._inductor.ir')
    from types import SimpleNamespace

    from torch._inductor.sizevars import SizeVarAllocator
    from torch._inductor.virtualized import V
    from torch.utils._sympy.value_ranges import ValueRangeError

    import mmrest  # noqa: F401  (applies the patch)
    check = getattr(ir.Layout, '_stride_expr_ge_or_false', None)
    if check is None:
        assert not inductor_patches.patch_inductor_stride_check()
        pytest.skip(f'torch {torch.__version__}: no such Inductor function')
    patched = getattr(check, 'mmrest_patch', False)
    # torch's own function asked about ResT's stride-16 map: whether it
    # raises decides, and the detection (a sympy probe) must agree
    width, area, env = _stage_strides()
    with V.set_graph_handler(SimpleNamespace(sizevars=SizeVarAllocator(env))):
        try:
            getattr(check, '__wrapped__', check)(width, area)
            raises = False
        except ValueRangeError:
            raises = True
    assert patched == raises == inductor_patches._inductor_stride_check_raises(
    )
    # asked again: "patched (before)", and torch's function wrapped once
    assert inductor_patches.patch_inductor_stride_check() == patched
    assert getattr(ir.Layout, '_stride_expr_ge_or_false') is check
    if not patched:
        pytest.skip(f'torch {torch.__version__}: no range-analysis failure')
    with V.set_graph_handler(SimpleNamespace(sizevars=SizeVarAllocator(env))):
        with pytest.raises(ValueRangeError):  # torch's own function
            check.__wrapped__(width, area)
        assert bool(check(width, area)) is False
        # decidable questions: the same answers as torch's
        for left, right, expected in ((area, width, True), (2 * width, width,
                                                            True),
                                      (width, 0, True), (0, width, False)):
            assert bool(check(left, right)) is expected
            assert bool(check.__wrapped__(left, right)) is expected


def _conv_backward_patch_expected() -> bool:
    """Whether this torch has the lowering the patch fixes: read from its
    source text (mmrest detects it from the compiled code's names)."""
    import inspect

    from torch._inductor.kernel import conv
    lowering = getattr(conv, 'convolution_backward_lowering', None)
    if lowering is None:
        return False
    expected = 'guard_int_seq(' in inspect.getsource(inspect.unwrap(lowering))
    assert expected == inductor_patches._conv_backward_guards_integers(conv)
    return expected


def test_patches_need_inductor(monkeypatch):
    """Without Inductor's modules (an import that fails) neither patch
    applies, and neither says it did."""
    for name in ('torch.utils._sympy.value_ranges',
                 'torch._inductor.virtualized'):
        monkeypatch.setitem(sys.modules, name, None)  # ImportError
    assert inductor_patches.patch_inductor_stride_check() is False
    assert inductor_patches.patch_inductor_conv_backward_strides() is False


@pytest.mark.parametrize('refuse', ['1', None])
def test_inductor_patches_can_be_refused(monkeypatch, refuse):
    """``MMREST_NO_INDUCTOR_PATCH=1`` set before ``import mmrest``: torch's
    functions stay torch's (checked in a fresh interpreter, where nothing
    imported mmrest or Inductor before; ``import mmrest`` alone does not
    import Inductor); without it, each is patched exactly where its bug is
    detected, once Inductor is imported."""
    pytest.importorskip('torch._inductor.lowering')
    if refuse:
        monkeypatch.setenv('MMREST_NO_INDUCTOR_PATCH', refuse)
        assert not inductor_patches.patch_inductor_stride_check()
        assert not inductor_patches.patch_inductor_conv_backward_strides()
    else:
        monkeypatch.delenv('MMREST_NO_INDUCTOR_PATCH', raising=False)
    probe = ('import sys, torch, mmrest; '
             'print("torch._inductor.ir" in sys.modules); '
             'from torch._inductor import ir, lowering; '
             'f = getattr(ir.Layout, "_stride_expr_ge_or_false", None); '
             'g = lowering.lowerings.get('
             'torch.ops.aten.convolution_backward.default); '
             'print(getattr(f, "mmrest_patch", False), '
             'getattr(g, "mmrest_patch", False))')
    result = run_program([sys.executable, '-c', probe])
    expected = (not refuse
                and inductor_patches._inductor_stride_check_raises(),
                not refuse and _conv_backward_patch_expected())
    assert result.stdout.split() == ['False'] + [str(e) for e in expected], \
        result.stdout


def test_replace_steps(monkeypatch):
    """Each patch's steps, whatever torch is here: nothing without the
    original or when refused, "patched" for mmrest's own function, nothing
    where the bug is not detected, else the wrapped function installed."""
    monkeypatch.delenv('MMREST_NO_INDUCTOR_PATCH', raising=False)
    installed = []

    def original():
        return 'torch'

    def replace(original, detected):
        return inductor_patches._replace(original, lambda: detected,
                                         lambda f: lambda: 'mmrest',
                                         installed.append)

    assert replace(None, True) is False
    assert replace(original, False) is False and installed == []
    assert replace(original, True) is True
    patched, = installed
    assert patched() == 'mmrest' and patched.__wrapped__ is original
    assert patched.mmrest_patch is True
    assert replace(patched, True) is True and len(installed) == 1
    monkeypatch.setenv('MMREST_NO_INDUCTOR_PATCH', '1')
    assert replace(original, True) is False and len(installed) == 1


def test_after_import_runs_once_after_the_module(tmp_path, monkeypatch):
    """A callback waits for its module's first import and runs right after
    the module's code (the module's names are there); a module already
    imported gets its callback at once; the loader is the module's own
    again afterwards; a failing callback warns and the import succeeds."""
    (tmp_path / 'mmrest_probe_a.py').write_text('value = 1\n')
    (tmp_path / 'mmrest_probe_b.py').write_text('value = 2\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def record_a():
        seen.append(('a', sys.modules['mmrest_probe_a'].value))

    def broken():
        raise RuntimeError('probe')

    inductor_patches.after_import('mmrest_probe_a', record_a)
    inductor_patches.after_import('mmrest_probe_b', broken)
    inductor_patches.after_import('mmrest_probe_missing', record_a)
    assert seen == []
    with pytest.raises(ModuleNotFoundError):  # as without the callback
        import mmrest_probe_missing  # noqa: F401
    assert 'mmrest_probe_missing' in inductor_patches._FINDER.waiting
    inductor_patches._FINDER.waiting.pop('mmrest_probe_missing')
    import mmrest_probe_a
    assert seen == [('a', 1)]
    assert 'exec_module' not in vars(mmrest_probe_a.__loader__)
    with pytest.warns(UserWarning, match='broken failed .*probe'):
        import mmrest_probe_b
    assert mmrest_probe_b.value == 2
    inductor_patches.after_import('mmrest_probe_a', record_a)  # imported
    assert seen == [('a', 1), ('a', 1)]
    import importlib
    importlib.reload(mmrest_probe_a)  # not a first import: no callback
    assert seen == [('a', 1), ('a', 1)]
    for name in ('mmrest_probe_a', 'mmrest_probe_b'):
        sys.modules.pop(name)


class _StridedConv(torch.nn.Module):
    """EMSA's spatial reduction in small: a depth-wise convolution of
    stride 2 on the tokens' map, then a softmax over its positions."""

    def __init__(self):
        super().__init__()
        self.sr = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)

    def forward(self, x):
        return (2 * self.sr(x)).flatten(2).softmax(-1)


# six sizes, each differing from the previous one in height and width
CONV_SIZES = [(8, 12), (12, 8), (10, 10), (11, 9), (9, 13), (14, 10)]


def _compiled_training_over_sizes(module):
    """``module`` compiled with Inductor (automatic dynamic shapes), a
    training step at each of ``CONV_SIZES`` checked against float64
    (output, input and parameter gradients, with eager float32 as the
    bar); returns whether each graph Inductor compiled had symbolic
    sizes."""
    backend, symbolic = recording_backend('inductor')
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=backend)
    exact = _StridedConv().double()
    exact.load_state_dict(module.state_dict())
    gen = torch.Generator().manual_seed(0)
    for size in CONV_SIZES:
        x = torch.randn(2, 4, *size, generator=gen)
        assert_named_float32_close(
            training_step_triples([(compiled, module, x), (module, module, x),
                                   (exact, exact, x.double())],
                                  name=f'{size}: '))
    torch._dynamo.reset()
    return symbolic


def test_inductor_conv_backward_patch(monkeypatch):
    """Where Inductor's ``convolution_backward`` lowering guards the input
    gradient's symbolic strides (torch 2.13), the patched lowering lets one
    symbolic graph serve every later size (as on CUDA: Inductor's layout
    optimisation off), as accurate as the eager float32 step at each; with
    torch's own lowering put back, each size compiles a graph of its own
    (the bug the patch removes, seen by the same count)."""
    lowering = pytest.importorskip('torch._inductor.lowering')
    import mmrest  # noqa: F401  (applies the patch)
    current = lowering.lowerings.get(CONV_BACKWARD)
    patched = getattr(current, 'mmrest_patch', False)
    assert patched == _conv_backward_patch_expected()
    if not patched:
        pytest.skip(f'torch {torch.__version__}: no such lowering')
    from torch._inductor import config
    module = _StridedConv()
    # as on CUDA; no FX graph cache: a graph from the cache brings the
    # guards it was compiled with (config.patch: pytest's monkeypatch
    # deletes a setting of torch's config module when it undoes)
    with config.patch(layout_optimization=False, fx_graph_cache=False):
        assert _compiled_training_over_sizes(module) == [False, True]
        monkeypatch.setitem(lowering.lowerings, CONV_BACKWARD,
                            current.__wrapped__)
        assert _compiled_training_over_sizes(module) == \
            [False] + [True] * (len(CONV_SIZES) - 1), \
            'torch no longer recompiles per size: is the patch still needed?'
