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
- :data:`TORCH_SCOPED_ALLOW_LIST` (``torch.serialization.safe_globals`` with
  ``(function, 'module.name')`` entries, torch 2.6): whether mmrest's safe
  loading uses torch's weights-only loader or its own restricted unpickler
  (:mod:`mmrest.checkpoint.safe_load`);

Inductor's bugs under dynamic shapes, not APIs, are fixed in
:mod:`.inductor_patches`.
"""
import inspect
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
