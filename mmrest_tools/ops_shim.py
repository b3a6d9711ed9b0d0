# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Stand-ins for mmcv's compiled ops, for the GPU check and the oldest
stack's environment (``make test-oldest``, mmcv without compiled ops).

The GPU machines of the project have no compiler time to spare and no
internet: there, mmcv is installed as ``mmcv-lite`` (the same Python code
without ``mmcv._ext``). mmdet imports ``mmcv.ops`` when its models are
imported, and Mask R-CNN needs three compiled functions: ``nms`` (RPN
proposals), ``roi_align_forward`` and ``roi_align_backward`` (the box and
mask heads' RoIAlign, and the mask targets).

:func:`install` puts a module named ``mmcv._ext`` into ``sys.modules`` whose
three functions follow mmcv 2.1.0's calling conventions
(``mmcv/ops/nms.py``, ``mmcv/ops/roi_align.py``) and compute with
torchvision's ops when torchvision is importable, else with plain PyTorch
(slower, same results). Every other name of the module is a stub that
raises :class:`NotImplementedError` when called. It does nothing when the
real ``mmcv._ext`` imports, unless forced (``force=True`` or the
environment variable ``MMREST_FORCE_OPS_SHIM=1``), which the tests use to
exercise this module against the real ops.

Nothing here is used by the model or by training; it must be installed
before anything imports ``mmcv.ops``.
"""
import os
import sys
import types
from typing import Dict, Optional

import torch

FORCE_ENV = 'MMREST_FORCE_OPS_SHIM'
_BACKEND = {'name': None}  # 'torchvision' or 'torch'


# --------------------------------------------------------------------------
# Plain PyTorch versions (mmcv's semantics)
# --------------------------------------------------------------------------
def _axis_samples(start: torch.Tensor, bin_size: torch.Tensor, pooled: int,
                  grid: int, size: int):
    """Sample positions along one axis of a group of RoIs with the same
    ``grid`` samples per bin, as mmcv's ``bilinear_interpolate``: the low
    and high neighbour indices and their weights (zero outside the map).

    Returns:
        tuple: ``low``, ``high`` (long, R x pooled*grid) and ``w_low``,
        ``w_high`` (R x pooled*grid).
    """
    dev = start.device
    p = torch.arange(pooled, device=dev).repeat_interleave(grid)
    i = torch.arange(grid, device=dev).repeat(pooled)
    pos = (
        start[:, None] + p[None, :].to(start.dtype) * bin_size[:, None] +
        (i[None, :].to(start.dtype) + 0.5) * bin_size[:, None] / grid)
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    top = low >= size - 1
    low = torch.where(top, torch.full_like(low, size - 1), low)
    high = torch.where(top, low, low + 1)
    pos = torch.where(top, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    w_high = frac * inside
    w_low = (1 - frac) * inside
    return low, high, w_low, w_high


def _roi_groups(rois: torch.Tensor, out_h: int, out_w: int,
                spatial_scale: float, sampling_ratio: int, aligned: bool,
                height: int, width: int, channels: int, dtype, device,
                max_elements: int):
    """The sampling of mmcv's RoIAlign, by groups of RoIs with the same
    number of samples per bin: yields ``(rois, grid_h, grid_w, corners)``
    where ``corners`` are four ``(flat index, weight)`` pairs, each
    (R, out_h*grid_h, out_w*grid_w), indexing the input as a
    (B*H*W, C) matrix."""
    r = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    roi_w = r[:, 3] * spatial_scale - offset - x1
    roi_h = r[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1)
        roi_h = roi_h.clamp(min=1)
    bin_h = roi_h / out_h
    bin_w = roi_w / out_w
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio).long()
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / out_h).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / out_w).long().clamp(min=0)
    batch = r[:, 0].long()
    pairs = torch.stack([grid_h, grid_w], 1).cpu()
    for gh, gw in torch.unique(pairs, dim=0).tolist():
        if gh * gw == 0:
            continue  # an empty RoI: mmcv divides a zero sum by 1
        idx = ((pairs[:, 0] == gh) & (pairs[:, 1] == gw)).nonzero()[:, 0]
        idx = idx.to(device)
        per_roi = out_h * gh * out_w * gw * channels
        step = max(1, max_elements // per_roi)
        for s in range(0, idx.numel(), step):
            j = idx[s:s + step]
            yl, yh, wyl, wyh = _axis_samples(y1[j], bin_h[j], out_h, gh,
                                             height)
            xl, xh, wxl, wxh = _axis_samples(x1[j], bin_w[j], out_w, gw, width)
            base = (batch[j] * (height * width))[:, None, None]
            corners = []
            for yi, wy in ((yl, wyl), (yh, wyh)):
                for xi, wx in ((xl, wxl), (xh, wxh)):
                    flat = base + yi[:, :, None] * width + xi[:, None, :]
                    corners.append((flat, wy[:, :, None] * wx[:, None, :]))
            yield j, gh, gw, corners


def roi_align_torch(input: torch.Tensor,
                    rois: torch.Tensor,
                    out_h: int,
                    out_w: int,
                    spatial_scale: float,
                    sampling_ratio: int,
                    aligned: bool,
                    max_elements: int = 1 << 24) -> torch.Tensor:
    """RoIAlign (average pooling) as mmcv computes it, in plain PyTorch
    (forward only; see :func:`roi_align_torch_backward`).

    Args:
        input (Tensor): Feature maps, B x C x H x W.
        rois (Tensor): K x 5 boxes ``(batch index, x1, y1, x2, y2)``.
        out_h (int): Output height.
        out_w (int): Output width.
        spatial_scale (float): Scale from box to feature coordinates.
        sampling_ratio (int): Samples per bin along each axis; 0 or less
            for ``ceil(roi size / output size)``.
        aligned (bool): Shift the boxes by half a pixel (``aligned=True``
            in mmcv and torchvision).
        max_elements (int): Bound on the gathered samples held at once.

    Returns:
        Tensor: K x C x out_h x out_w.
    """
    B, C, H, W = input.shape
    out = input.new_zeros(rois.shape[0], C, out_h, out_w)
    if rois.shape[0] == 0:
        return out
    feat = input.detach().permute(0, 2, 3, 1).reshape(B * H * W, C)
    for j, gh, gw, corners in _roi_groups(rois, out_h, out_w, spatial_scale,
                                          sampling_ratio, aligned, H, W, C,
                                          input.dtype, input.device,
                                          max_elements):
        val = 0
        for flat, w in corners:
            val = val + feat.index_select(0, flat.reshape(-1)).view(
                *flat.shape, C) * w[..., None]
        val = val.view(j.numel(), out_h, gh, out_w, gw, C)
        val = val.sum(dim=(2, 4)) / (gh * gw)
        out.index_copy_(0, j, val.permute(0, 3, 1, 2))
    return out


def roi_align_torch_backward(grad_output: torch.Tensor,
                             rois: torch.Tensor,
                             input_shape,
                             spatial_scale: float,
                             sampling_ratio: int,
                             aligned: bool,
                             max_elements: int = 1 << 24) -> torch.Tensor:
    """The gradient of :func:`roi_align_torch` with respect to its input
    (RoIAlign is linear in it: each sample's weights, scattered back).

    Returns:
        Tensor: Of ``input_shape`` (B x C x H x W).
    """
    B, C, H, W = input_shape
    K, _, out_h, out_w = grad_output.shape
    grad = grad_output.new_zeros(B * H * W, C)
    if K == 0:
        return grad.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()
    for j, gh, gw, corners in _roi_groups(rois, out_h, out_w, spatial_scale,
                                          sampling_ratio, aligned, H, W, C,
                                          grad_output.dtype,
                                          grad_output.device, max_elements):
        g = grad_output.index_select(0, j).permute(0, 2, 3, 1) / (gh * gw)
        g = g.repeat_interleave(gh, dim=1).repeat_interleave(gw, dim=2)
        for flat, w in corners:
            grad.index_add_(0, flat.reshape(-1),
                            (g * w[..., None]).reshape(-1, C))
    return grad.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()


def nms_torch(boxes: torch.Tensor,
              scores: torch.Tensor,
              iou_threshold: float,
              offset: int = 0) -> torch.Tensor:
    """Greedy NMS as mmcv computes it (``offset`` added to widths and
    heights), on the CPU.

    Returns:
        Tensor: Indices of the kept boxes (long, on the boxes' device), by
        decreasing score.
    """
    device = boxes.device
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    b = boxes.detach().float().cpu()
    order = torch.argsort(
        scores.detach().float().cpu(), descending=True, stable=True)
    b = b[order]
    x1, y1, x2, y2 = b.unbind(1)
    area = (x2 - x1 + offset) * (y2 - y1 + offset)
    suppressed = torch.zeros(b.shape[0], dtype=torch.bool)
    keep = []
    for i in range(b.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2[i + 1:]) -
             torch.maximum(x1[i], x1[i + 1:]) + offset).clamp(min=0)
        h = (torch.minimum(y2[i], y2[i + 1:]) -
             torch.maximum(y1[i], y1[i + 1:]) + offset).clamp(min=0)
        inter = w * h
        iou = inter / (area[i] + area[i + 1:] - inter)
        suppressed[i + 1:] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)].to(device)


# --------------------------------------------------------------------------
# mmcv._ext's functions
# --------------------------------------------------------------------------
def _tv_ops():
    import torchvision.ops  # noqa: F401
    return torchvision.ops


def nms(bboxes, scores, iou_threshold: float, offset: int = 0):
    """``mmcv._ext.nms``: indices of the kept boxes by decreasing score."""
    if _BACKEND['name'] == 'torchvision' and offset == 0:
        keep = _tv_ops().nms(bboxes.float(), scores.float(),
                             float(iou_threshold))
        return keep.to(bboxes.device)
    return nms_torch(bboxes, scores, float(iou_threshold), int(offset))


def _check_pool_mode(pool_mode):
    if int(pool_mode) != 1:
        raise NotImplementedError(
            "the mmcv ops shim implements RoIAlign with pool_mode='avg' "
            "only (mmdet's default); got pool_mode='max'")


def roi_align_forward(input, rois, output, argmax_y, argmax_x,
                      aligned_height: int, aligned_width: int,
                      spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool):
    """``mmcv._ext.roi_align_forward``: writes RoIAlign into ``output``."""
    _check_pool_mode(pool_mode)
    x = input.float()
    r = rois.float()
    with torch.no_grad():
        if _BACKEND['name'] == 'torchvision':
            y = _tv_ops().roi_align(x, r,
                                    (int(aligned_height), int(aligned_width)),
                                    float(spatial_scale), int(sampling_ratio),
                                    bool(aligned))
        else:
            y = roi_align_torch(x, r, int(aligned_height), int(aligned_width),
                                float(spatial_scale), int(sampling_ratio),
                                bool(aligned))
    output.copy_(y)


def _roi_align_backward_tv_autograd(grad, rois, grad_input, out_h, out_w,
                                    spatial_scale, sampling_ratio, aligned):
    """torchvision's RoIAlign backward through autograd: RoIAlign is linear
    in its input, so its vector-Jacobian product at zeros is the gradient.
    """
    x = torch.zeros(
        grad_input.shape,
        dtype=torch.float32,
        device=grad_input.device,
        requires_grad=True)
    with torch.enable_grad():
        y = _tv_ops().roi_align(x, rois, (out_h, out_w), spatial_scale,
                                sampling_ratio, aligned)
        (g, ) = torch.autograd.grad(y, x, grad)
    return g


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input,
                       aligned_height: int, aligned_width: int,
                       spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool):
    """``mmcv._ext.roi_align_backward``: writes the input's gradient into
    ``grad_input``."""
    _check_pool_mode(pool_mode)
    grad = grad_output.float()
    r = rois.float()
    h, w = int(aligned_height), int(aligned_width)
    args = (float(spatial_scale), int(sampling_ratio), bool(aligned))
    g = None
    if _BACKEND['name'] == 'torchvision':
        try:
            B, C, H, W = grad_input.shape
            g = torch.ops.torchvision._roi_align_backward(
                grad, r, args[0], h, w, B, C, H, W, args[1], args[2])
        except (AttributeError, RuntimeError, TypeError):
            g = _roi_align_backward_tv_autograd(grad, r, grad_input, h, w,
                                                *args)
    else:
        g = roi_align_torch_backward(grad, r, grad_input.shape, *args)
    grad_input.copy_(g)


_PROVIDED = {
    'nms': nms,
    'roi_align_forward': roi_align_forward,
    'roi_align_backward': roi_align_backward,
}


def _stub(name: str):

    def missing(*args, **kwargs):
        raise NotImplementedError(
            f'mmcv._ext.{name} is not available: mmcv has no compiled ops '
            'here (mmcv-lite), and the GPU check\'s shim '
            '(mmrest_tools.ops_shim) provides only '
            f'{sorted(_PROVIDED)}')

    missing.__name__ = name
    return missing


def _module_getattr(name: str):
    if name.startswith('__') and name.endswith('__'):
        raise AttributeError(name)
    return _stub(name)


def make_ext_module() -> types.ModuleType:
    """A module standing in for ``mmcv._ext`` (see the module docstring)."""
    mod = types.ModuleType('mmcv._ext',
                           'mmcv._ext stand-in (mmrest_tools.ops_shim)')
    mod.__dict__.update(_PROVIDED)
    mod.__getattr__ = _module_getattr
    mod.MMREST_OPS_SHIM = True
    # A module spec without a loader: mmengine's mmcv_full_available()
    # (pkgutil.find_loader) then answers False instead of failing.
    import importlib.machinery
    mod.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', None)
    return mod


# --------------------------------------------------------------------------
# Self-check and installation
# --------------------------------------------------------------------------
def self_check(device: str = 'cpu') -> Dict:
    """Compare the torchvision functions with the plain PyTorch ones on a
    small example on ``device`` (forward, backward, NMS); keep torchvision
    only if they agree.

    Returns:
        dict: ``backend`` chosen, the differences found, and an ``error``
        text when torchvision failed.
    """
    report = dict(backend='torch')
    try:
        _tv_ops()
    except Exception as e:  # noqa: BLE001 (any failure means: do not use)
        report['error'] = f'torchvision.ops: {type(e).__name__}: {e}'
        _BACKEND['name'] = 'torch'
        return report
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 13, 17, generator=gen).to(device)
    boxes = torch.tensor([[0, 1.0, 2.0, 9.0, 11.0], [1, -3.0, -2.0, 5.5, 4.0],
                          [0, 10.0, 7.0, 16.9, 12.9], [1, 2.2, 3.3, 2.2, 8.0],
                          [0, 0.0, 0.0, 33.0, 25.0], [1, 4.0, 4.0, 40.0,
                                                      30.0]]).to(device)
    grad = torch.randn(6, 3, 7, 5, generator=gen).to(device)
    try:
        diffs = {}
        for scale, ratio, aligned in ((1.0, 0, True), (0.5, 2, False),
                                      (0.25, 0, True)):
            outs, grads = [], []
            for name in ('torchvision', 'torch'):
                _BACKEND['name'] = name
                out = torch.zeros(6, 3, 7, 5, device=device)
                roi_align_forward(x, boxes, out, None, None, 7, 5, scale,
                                  ratio, 1, aligned)
                gin = torch.zeros_like(x)
                roi_align_backward(grad, boxes, None, None, gin, 7, 5, scale,
                                   ratio, 1, aligned)
                outs.append(out)
                grads.append(gin)
            key = f'scale{scale}_ratio{ratio}_aligned{int(aligned)}'
            diffs[f'roi_align_fwd_{key}'] = float(
                (outs[0] - outs[1]).abs().max())
            diffs[f'roi_align_bwd_{key}'] = float(
                (grads[0] - grads[1]).abs().max())
        b = torch.rand(200, 4, generator=gen) * 50
        b[:, 2:] += b[:, :2]
        s = torch.rand(200, generator=gen)
        b, s = b.to(device), s.to(device)
        keeps = []
        for name in ('torchvision', 'torch'):
            _BACKEND['name'] = name
            keeps.append(nms(b, s, 0.5, 0).cpu().tolist())
        diffs['nms_same_keep'] = keeps[0] == keeps[1]
        report['diffs'] = diffs
        ok = diffs['nms_same_keep'] and all(
            v < 1e-4 for k, v in diffs.items() if k.startswith('roi'))
        report['backend'] = 'torchvision' if ok else 'torch'
        if not ok:
            report['error'] = ('torchvision disagrees with mmcv\'s formulas '
                               '(see diffs): using plain PyTorch')
    except Exception as e:  # noqa: BLE001
        report['error'] = f'torchvision path failed: {type(e).__name__}: {e}'
        report['backend'] = 'torch'
    _BACKEND['name'] = report['backend']
    return report


def _real_ext_error() -> Optional[str]:
    """None when the real ``mmcv._ext`` imports, else why not."""
    try:
        import mmcv._ext  # noqa: F401
    except Exception as e:  # noqa: BLE001 (ImportError, OSError, ...)
        return f'{type(e).__name__}: {e}'
    return None


def install(force: Optional[bool] = None, device: str = 'cpu') -> Dict:
    """Install the ``mmcv._ext`` stand-in when the real one is missing.

    Args:
        force (bool, optional): Install even when the real ops import.
            Defaults to the environment variable ``MMREST_FORCE_OPS_SHIM``.
        device (str): Where :func:`self_check` compares torchvision with
            plain PyTorch.

    Returns:
        dict: ``used`` (bool), ``reason``, and when used the ``backend``
        ('torchvision' or 'torch') and the self-check's report.

    Raises:
        RuntimeError: When forced after ``mmcv.ops`` was imported (its
            modules hold the real functions already).
    """
    if force is None:
        force = os.environ.get(FORCE_ENV, '') not in ('', '0')
    existing = sys.modules.get('mmcv._ext')
    if getattr(existing, 'MMREST_OPS_SHIM', False):
        return dict(
            used=True, reason='already installed', backend=_BACKEND['name'])
    if force:
        reason = f'forced ({FORCE_ENV} or force=True)'
        loaded = [m for m in sys.modules if m.startswith('mmcv.ops')]
        if loaded:
            raise RuntimeError(
                'the mmcv ops shim must be installed before mmcv.ops is '
                f'imported; already imported: {sorted(loaded)[:5]}')
    else:
        reason = _real_ext_error()
        if reason is None:
            return dict(used=False, reason='mmcv._ext imports')
    check = self_check(device)
    sys.modules['mmcv._ext'] = make_ext_module()
    return dict(
        used=True, reason=reason, backend=_BACKEND['name'], self_check=check)


# --------------------------------------------------------------------------
# mmengine without pkg_resources
# --------------------------------------------------------------------------
def patch_package_lookup() -> Optional[str]:
    """Let mmengine find installed packages (``mmdet::`` config paths)
    where ``pkg_resources`` is gone (setuptools >= 81): mmengine 0.10.7
    imports it inside ``is_installed`` and ``get_installed_path``.

    Returns:
        str or None: What was patched, None when nothing was needed.
    """
    try:
        import pkg_resources  # noqa: F401
        return None
    except ImportError:
        pass
    import importlib.util

    def is_installed(package: str) -> bool:
        return importlib.util.find_spec(package) is not None

    def get_installed_path(package: str) -> str:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f'package {package!r} is not installed')
        return os.path.dirname(spec.origin)

    import mmengine.utils
    import mmengine.utils.package_utils as pu
    for mod in (pu, mmengine.utils):
        mod.is_installed = is_installed
        mod.get_installed_path = get_installed_path
    import mmengine.config.config as cc
    cc.is_installed = is_installed
    cc.get_installed_path = get_installed_path
    return 'mmengine package lookup without pkg_resources'


__all__ = [
    'install', 'self_check', 'make_ext_module', 'roi_align_torch',
    'roi_align_torch_backward', 'nms_torch', 'patch_package_lookup',
    'FORCE_ENV'
]
