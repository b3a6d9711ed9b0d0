# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Two fixes for Inductor's training graphs under dynamic shapes (torch
bugs met by ResT, measured on torch 2.13), and how mmrest applies them.

A multi-scale run compiled with mmengine's ``compile=True`` (dynamo's
automatic dynamic shapes) compiles, at the second input size, graphs with
symbolic sizes. On torch 2.13 ResT's training step then

- fails in the backward graph (``ValueRangeError: Invalid ranges [0:-1]``):
  Inductor's stride comparison raises where it should answer "unknown"
  (:func:`patch_inductor_stride_check`);
- recompiles at every new size: Inductor's ``convolution_backward``
  lowering fixes the input gradient's symbolic strides to the current
  size's integers, with a guard, only to choose their order
  (:func:`patch_inductor_conv_backward_strides`).

``import mmrest`` calls :func:`install`: each fix is applied when the
Inductor module it changes is first imported (``import mmrest`` does not
load Inductor, which takes seconds), and only where the problem is
detected in that torch. ``MMREST_NO_INDUCTOR_PATCH=1``, set before
``import mmrest``, refuses both (set later, it does not undo a patch
already applied). Why Inductor recompiled, and how this was measured:
``docs/precision_and_export.md``, "Why Inductor recompiled at each size".
"""
import functools
import importlib.abc
import importlib.machinery
import inspect
import logging
import os
import sys
import warnings

import torch


def refused() -> bool:
    """Whether ``MMREST_NO_INDUCTOR_PATCH`` asks to leave torch as it is."""
    return os.environ.get('MMREST_NO_INDUCTOR_PATCH', '') not in ('', '0')


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a module's first import: finds the module
    as the path finder does and wraps its loader's ``exec_module`` once."""

    def __init__(self):
        self.waiting = {}  # module name -> callbacks

    def find_spec(self, name, path, target=None):
        if name not in self.waiting:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or not hasattr(spec.loader, 'exec_module'):
            return None  # left to the other finders, without callbacks
        callbacks = self.waiting.pop(name)
        loader = spec.loader

        def exec_module(module):
            del loader.exec_module  # the loader's own method again
            loader.exec_module(module)
            for callback in callbacks:
                _run(callback)

        loader.exec_module = exec_module
        return spec


_FINDER = _AfterImport()


def _run(patch) -> None:
    """A patch never breaks the import it follows: its failure is a
    warning, and torch stays as it was for that patch."""
    try:
        patch()
    except Exception as error:  # noqa: BLE001 (any failure: torch's code)
        warnings.warn(f'mmrest: {patch.__name__} failed ({error!r}); '
                      'torch left as it is')


def after_import(module_name: str, patch) -> None:
    """Call ``patch()`` once ``module_name`` is imported: now if it is,
    else right after its first import.

    Args:
        module_name (str): A module's full name.
        patch (callable): Called without arguments.
    """
    if module_name in sys.modules:
        _run(patch)
        return
    _FINDER.waiting.setdefault(module_name, []).append(patch)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def install() -> None:
    """Apply each fix when its Inductor module is imported (what
    ``import mmrest`` does); nothing with ``MMREST_NO_INDUCTOR_PATCH=1``."""
    if refused():
        return
    after_import('torch._inductor.ir', patch_inductor_stride_check)
    after_import('torch._inductor.kernel.conv',
                 patch_inductor_conv_backward_strides)


def _replace(original, detected, wrap, install) -> bool:
    """The steps of each patch: nothing without torch's ``original``;
    ``True`` if it is mmrest's already; else, where ``detected()``, the
    function ``wrap(original)`` marked as mmrest's (``mmrest_patch``, with
    ``original`` as its ``__wrapped__``) goes in through ``install``.
    Nothing if :func:`refused`. Returns whether torch's function is
    patched now."""
    if refused() or original is None:
        return False
    if getattr(original, 'mmrest_patch', False):
        return True
    if not detected():
        return False
    patched = functools.wraps(original)(wrap(original))
    patched.mmrest_patch = True
    install(patched)
    return True


def _stage_width_and_area(h, w):
    """A stage's width W and area H * W at stride 16 as Inductor writes a
    map's strides under dynamic shapes (floor divisions of the input's
    height ``h`` and width ``w``, the product expanded)."""
    import sympy
    from torch.utils._sympy.functions import FloorDiv
    width = FloorDiv(w - 1, 16) + 1
    return width, sympy.expand((FloorDiv(h - 1, 16) + 1) * width)


def _inductor_stride_check_raises() -> bool:
    """Whether torch's range analysis raises on the divisibility question
    that Inductor asks of two strides of a map whose sizes are floor
    divisions (measured: torch 2.13).

    Inductor's ``Layout._stride_expr_ge_or_false(W, H * W)`` bounds
    ``Mod(W, H * W)``; with ``W = (w - 1) // 16 + 1`` (a stage's width under
    dynamic shapes) and ``H * W`` expanded, sympy rewrites the ``Mod`` with
    a reciprocal, and ``bound_sympy`` raises ``ValueRangeError`` on its
    negative exponent instead of answering "unknown".
    """
    import sympy
    from torch.utils._sympy.value_ranges import (ValueRangeError, ValueRanges,
                                                 bound_sympy)
    h, w = sympy.symbols('h w', integer=True, positive=True)
    width, area = _stage_width_and_area(h, w)
    quiet = logging.getLogger('torch.utils._sympy.interp')
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs the failure as a warning too
    try:
        bound_sympy(
            sympy.Eq(width % area, 0), {
                h: ValueRanges(2, 64),
                w: ValueRanges(2, 64)
            })
    except ValueRangeError:
        return True
    finally:
        quiet.setLevel(level)
    return False


def patch_inductor_stride_check() -> bool:
    """Make Inductor's stride comparison answer "unknown" where torch's
    range analysis raises (:func:`_inductor_stride_check_raises`).

    ``torch._inductor.ir.Layout._stride_expr_ge_or_false`` answers whether
    one stride is at least another, ``False`` when that cannot be shown;
    Inductor then copies the tensor into the layout it needs. On torch
    2.13 the question raises instead for ResT's maps under dynamic shapes,
    and the training step of a model compiled with a second input size
    fails in the backward graph. The patch turns that one exception into
    the function's own "unknown". Nothing where the function does not
    exist, the range analysis does not raise, or :func:`refused`.
    Returns whether it patched (now or before).
    """
    try:
        from torch._inductor import ir
        from torch.utils._sympy.value_ranges import ValueRangeError
    except ImportError:
        return False

    def answer_unknown(original):

        def stride_expr_ge_or_false(left, right) -> bool:
            try:
                return original(left, right)
            except ValueRangeError:  # the range analysis failed: unknown
                return False

        return stride_expr_ge_or_false

    return _replace(
        getattr(ir.Layout, '_stride_expr_ge_or_false', None),
        _inductor_stride_check_raises, answer_unknown, lambda patched: setattr(
            ir.Layout, '_stride_expr_ge_or_false', staticmethod(patched)))


def _conv_backward_guards_integers(conv_module) -> bool:
    """Whether this torch's ``convolution_backward`` lowering asks the
    graph's size variables for integers (``guard_int_seq``), the call that
    fixes the input gradient's symbolic strides (torch 2.13, ``kernel/
    conv.py``; older torch has no such lowering: the ATen kernel is a
    fallback there)."""
    lowering = getattr(conv_module, 'convolution_backward_lowering', None)
    # registered lowerings are wrapped (argument checks): torch's own body
    code = getattr(inspect.unwrap(lowering), '__code__', None)
    return code is not None and 'guard_int_seq' in code.co_names


def _hints_for_symbols(sizevars, values) -> list:
    """``values`` as integers: symbolic ones by their size hint (no guard),
    the others by ``sizevars.guard_int_seq``, as torch does.

    Args:
        sizevars: Inductor's size variables of the graph being lowered
            (``V.graph.sizevars``).
        values (Sequence): Integers and sympy expressions.
    """
    hint = getattr(sizevars, 'optimization_hint', None) or \
        sizevars.size_hint
    guard = type(sizevars).guard_int_seq
    return [
        hint(v)
        if getattr(v, 'free_symbols', None) else guard(sizevars, [v])[0]
        for v in values
    ]


def patch_inductor_conv_backward_strides() -> bool:
    """Stop Inductor's ``convolution_backward`` lowering from recompiling
    the graph at every input size.

    To give the input gradient's inputs (``grad_out``, the weight) the
    stride order of the gradient, the lowering evaluates the gradient's
    symbolic strides to integers with ``guard_int_seq``: a guard that
    pins the map's size (e.g. ``H W == 100``), so every new input size
    recompiles (until dynamo's ``recompile_limit``, after which it runs
    eagerly). The strides' order is all it needs, and that order is the
    same at every size (contiguous strides are products of the sizes):
    the patched lowering evaluates symbolic entries by their size hint,
    without a guard, and every integer as before (where a size is 1 and
    two strides tie, either order describes the same memory). Nothing
    where the lowering does not ask for integers, or :func:`refused`.
    Returns whether it patched (now or before).
    """
    try:
        from torch._inductor import lowering
        from torch._inductor.kernel import conv
        from torch._inductor.virtualized import V
    except ImportError:
        return False
    key = torch.ops.aten.convolution_backward.default

    def order_by_hints(original):

        def convolution_backward(*args, **kwargs):
            sizevars = V.graph.sizevars
            if 'guard_int_seq' in vars(sizevars):  # already answered: nested
                return original(*args, **kwargs)
            sizevars.guard_int_seq = functools.partial(_hints_for_symbols,
                                                       sizevars)
            try:
                return original(*args, **kwargs)
            finally:
                del sizevars.guard_int_seq

        return convolution_backward

    return _replace(
        lowering.lowerings.get(key),
        lambda: _conv_backward_guards_integers(conv), order_by_hints,
        functools.partial(lowering.lowerings.__setitem__, key))
