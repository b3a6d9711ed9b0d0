# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""The torch APIs mmrest uses that changed between torch 2.1 and today.

mmrest supports torch 2.1 (what OpenMMLab's mmcv 2.1.0 wheels are built
for) to the newest release. Where an API it uses appeared later, this
module gives the same behaviour on the older torch; every such choice is
made here, once, by asking torch what it has (never by its version string
alone, except where a feature exists earlier in an incomplete form):

- :func:`is_autocast_enabled` (``torch.is_autocast_enabled(device_type)``,
  torch 2.4; before, ``is_autocast_cpu_enabled()`` and the CUDA-only
  ``is_autocast_enabled()``);
- :func:`is_compiling` (``torch.compiler.is_compiling``, torch 2.3; before,
  ``torch._dynamo.is_compiling``);
- :data:`ONNX_EXPORT_HAS_DYNAMO` (``torch.onnx.export(dynamo=...)``, torch
  2.5);
- :data:`ONNX_SDPA_SCALE_FAILS` (torch 2.1's TorchScript ONNX exporter
  fails on ``scaled_dot_product_attention`` with an explicit ``scale``:
  mmrest writes the formula out while exporting);
- :data:`TORCH_SCOPED_ALLOW_LIST` (``torch.serialization.safe_globals`` with
  ``(function, 'module.name')`` entries, torch 2.6): whether mmrest's safe
  loading uses torch's weights-only loader or its own restricted unpickler
  (:mod:`mmrest.checkpoint.safe_load`);
- :func:`patch_inductor_stride_check`: a torch bug, not an API: Inductor's
  stride comparison raises under dynamic shapes (torch 2.13) where it
  should answer "unknown"; patched only where it does.
"""
import functools
import inspect
import logging
import os
from typing import Tuple

import torch


def torch_version() -> Tuple[int, int]:
    """(major, minor) of the installed torch (``'2.1.2+cu121'`` ->
    ``(2, 1)``)."""
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(''.join(c for c in minor if c.isdigit()) or 0)


def _autocast_takes_device() -> bool:
    try:
        torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4: no argument
        return False
    return True


_AUTOCAST_TAKES_DEVICE = _autocast_takes_device()


def is_autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``'cpu'``, ``'cuda'``,
    ...), on every supported torch."""
    if _AUTOCAST_TAKES_DEVICE:
        return torch.is_autocast_enabled(device_type)
    if device_type == 'cuda':
        return torch.is_autocast_enabled()
    query = getattr(torch, f'is_autocast_{device_type}_enabled', None)
    return bool(query()) if query is not None else False


def _is_compiling_function():
    compiler = getattr(torch, 'compiler', None)
    function = getattr(compiler, 'is_compiling', None)
    if function is not None:
        return function
    try:  # torch < 2.3
        from torch._dynamo import is_compiling
        return is_compiling
    except ImportError:
        return lambda: False


_IS_COMPILING = _is_compiling_function()


def is_compiling() -> bool:
    """Whether ``torch.compile`` (or ``torch.export``) is tracing."""
    return bool(_IS_COMPILING())


def is_exporting() -> bool:
    """Whether ``torch.export`` is tracing (False where torch cannot say:
    before torch 2.5 ``torch.export`` traces through ``torch.compile``'s
    machinery, which :func:`is_compiling` reports)."""
    compiler = getattr(torch, 'compiler', None)
    return bool(getattr(compiler, 'is_exporting', lambda: False)())


def _onnx_export_has_dynamo() -> bool:
    try:
        import torch.onnx
        return 'dynamo' in inspect.signature(torch.onnx.export).parameters
    except (ImportError, TypeError, ValueError):
        return False


#: Whether ``torch.onnx.export`` takes ``dynamo=`` (torch >= 2.5): the
#: ``torch.export``-based ONNX exporter of :mod:`mmrest.onnx_export`.
ONNX_EXPORT_HAS_DYNAMO = _onnx_export_has_dynamo()

#: Whether torch's TorchScript ONNX exporter fails on
#: ``F.scaled_dot_product_attention(..., scale=...)`` (torch 2.1: its
#: symbolic passes the float to a Constant node that wants a tensor).
ONNX_SDPA_SCALE_FAILS = torch_version() < (2, 2)

#: Whether torch's weights-only loader takes a scoped allow-list with
#: stand-in functions under another name (``safe_globals`` with
#: ``(function, 'module.name')`` entries: torch >= 2.6). Otherwise mmrest
#: loads through its own restricted unpickler.
TORCH_SCOPED_ALLOW_LIST = (
    torch_version() >= (2, 6) and hasattr(torch.serialization, 'safe_globals')
    and hasattr(torch.serialization, 'get_safe_globals'))


def grad_scaler(device_type: str = 'cuda', **kwargs):
    """``torch.amp.GradScaler(device_type)`` (torch >= 2.3), or before it
    ``torch.cuda.amp.GradScaler`` for CUDA (the one device it had) and, on
    any device, as a disabled scaler (``enabled=False``: a pass-through)."""
    amp_scaler = getattr(getattr(torch, 'amp', None), 'GradScaler', None)
    if amp_scaler is not None:
        return amp_scaler(device_type, **kwargs)
    if device_type != 'cuda' and kwargs.get('enabled', True):
        raise RuntimeError(
            f'A GradScaler for {device_type!r} needs torch >= 2.3 '
            f'(torch.amp.GradScaler); this is torch {torch.__version__}')
    return torch.cuda.amp.GradScaler(**kwargs)


# torch.backends.cuda.sdp_kernel's flag of each SDPA backend (torch < 2.3)
_SDP_KERNEL_FLAGS = {
    'FLASH_ATTENTION': 'enable_flash',
    'EFFICIENT_ATTENTION': 'enable_mem_efficient',
    'MATH': 'enable_math',
}


def _sdpa_kernel_api():
    """``(SDPBackend, sdpa_kernel)`` of ``torch.nn.attention`` (torch >=
    2.3), or None."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None
    return SDPBackend, sdpa_kernel


def sdpa_backend(name: str):
    """A context in which ``F.scaled_dot_product_attention`` may use only
    the backend ``name`` (``'FLASH_ATTENTION'``, ``'EFFICIENT_ATTENTION'``,
    ``'CUDNN_ATTENTION'``, ``'MATH'``), or None where this torch has no such
    backend: ``torch.nn.attention.sdpa_kernel`` (torch >= 2.3), before it
    ``torch.backends.cuda.sdp_kernel`` with that backend's flag alone."""
    api = _sdpa_kernel_api()
    if api is None:
        if name not in _SDP_KERNEL_FLAGS:
            return None
        return torch.backends.cuda.sdp_kernel(**{
            flag: key == name
            for key, flag in _SDP_KERNEL_FLAGS.items()
        })
    backend = getattr(api[0], name, None)
    return None if backend is None else api[1](backend)


def _cpu_fused_adamw() -> bool:
    param = torch.zeros(1, requires_grad=True)
    try:
        torch.optim.AdamW([param], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


#: Whether ``torch.optim.AdamW(fused=True)`` takes CPU parameters (torch
#: >= 2.4; before, CUDA ones only).
CPU_FUSED_ADAMW = _cpu_fused_adamw()


def drop_unsupported_fused(optimizer_cfg: dict, device_type: str) -> bool:
    """Remove ``fused=True`` from an AdamW / Adam optimizer config when this
    torch has no fused kernel for ``device_type`` (the CPU before torch
    2.4): the same update, computed per tensor. Returns whether it did.

    Args:
        optimizer_cfg (dict): ``optim_wrapper.optimizer`` of a config,
            changed in place.
        device_type (str): Where the parameters will be (``'cpu'``, ...).
    """
    if not optimizer_cfg.get('fused') or device_type != 'cpu' or \
            CPU_FUSED_ADAMW:
        return False
    optimizer_cfg.pop('fused')
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
    (mmengine's ``compile=True`` in a multi-scale run) fails in the
    backward graph (``ValueRangeError: Invalid ranges [0:-1]``). The patch
    turns that one exception into the function's own "unknown". Applied by
    ``import mmrest`` only where the function exists and the range
    analysis raises; ``MMREST_NO_INDUCTOR_PATCH=1``, set before
    ``import mmrest``, leaves torch as it is (set later, it does not undo
    a patch already applied).
    Returns whether it patched (now or before).
    """
    if os.environ.get('MMREST_NO_INDUCTOR_PATCH', '') not in ('', '0'):
        return False
    try:
        from torch._inductor import ir
        from torch.utils._sympy.value_ranges import ValueRangeError
    except ImportError:
        return False
    original = getattr(ir.Layout, '_stride_expr_ge_or_false', None)
    if original is None:
        return False
    if getattr(original, 'mmrest_patch', False):
        return True
    if not _inductor_stride_check_raises():
        return False

    @functools.wraps(original)
    def stride_expr_ge_or_false(left, right) -> bool:
        try:
            return original(left, right)
        except ValueRangeError:  # the range analysis failed: unknown
            return False

    stride_expr_ge_or_false.mmrest_patch = True
    ir.Layout._stride_expr_ge_or_false = staticmethod(stride_expr_ge_or_false)
    return True
