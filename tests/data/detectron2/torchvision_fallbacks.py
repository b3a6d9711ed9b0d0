# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Stand-ins for torchvision's compiled ops, for the scratch environment in
which the reference data was made (see README.md); never used by mmrest or
its tests.

"""
import sys

import numpy as np
import torch

# ---------------------------------------------------------------------------
# torchvision's compiled ops. The only torchvision wheel for this torch on the
# build machine was linked against CUDA and its ops library does not load.
# detectron2 uses two torchvision ops here, defined below as torchvision's
# C++ CPU kernels compute them:
# - nms: scores sorted descending, a box is dropped when its IoU with a kept
#   one is > the threshold, areas without +1;
# - roi_align: torchvision's own pure-PyTorch fallback (``_roi_align``) is
#   not used: with adaptive sampling (sampling_ratio 0) it samples a grid of
#   the whole feature map for every RoI (tens of GB here), and it clamps
#   samples that lie outside the map where the C++ kernels (torchvision's
#   and mmcv's) count them as 0. ``_roi_align_cpu`` follows the kernel:
#   one RoI at a time, its own ceil(roi_size / 7) sampling grid, samples
#   below -1 or beyond the map set to 0, bilinear weights as the kernel.
# ---------------------------------------------------------------------------


def _nms_cpu(dets, scores, iou_threshold):
    if dets.numel() == 0:
        return torch.empty((0, ), dtype=torch.long)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.sort(dim=0, descending=True, stable=True)[1]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for _i in range(len(order)):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(int(i))
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        ovr = inter / (areas[i] + areas - inter)
        suppressed |= ovr > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def _roi_align_cpu(input, rois, spatial_scale, pooled_height, pooled_width,
                   sampling_ratio, aligned):
    """RoIAlign as torchvision's CPU kernel computes it (the same formulas
    as torchvision's pure-PyTorch ``_roi_align``, which samples a full
    feature-map grid per RoI when ``sampling_ratio`` is 0 and so needs tens
    of GB here): one RoI at a time, its own adaptive sampling grid."""
    n_rois = rois.shape[0]
    _, channels, height, width = input.shape
    out = input.new_zeros((n_rois, channels, pooled_height, pooled_width))
    offset = 0.5 if aligned else 0.0
    for k in range(n_rois):
        b = int(rois[k, 0])
        x1, y1, x2, y2 = (rois[k, 1:] * spatial_scale - offset).tolist()
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / pooled_height, roi_w / pooled_width
        grid_h = sampling_ratio if sampling_ratio > 0 else int(
            np.ceil(roi_h / pooled_height))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(
            np.ceil(roi_w / pooled_width))
        count = max(grid_h * grid_w, 1)
        if grid_h == 0 or grid_w == 0:
            continue
        # sample positions, float32 as in the kernel
        ph = torch.arange(pooled_height).repeat_interleave(grid_h)
        iy = torch.arange(grid_h).repeat(pooled_height)
        pw = torch.arange(pooled_width).repeat_interleave(grid_w)
        ix = torch.arange(grid_w).repeat(pooled_width)
        f = torch.float32
        y = (
            torch.tensor(y1, dtype=f) +
            ph.to(f) * torch.tensor(bin_h, dtype=f) +
            (iy.to(f) + 0.5) * torch.tensor(bin_h / grid_h, dtype=f))
        x = (
            torch.tensor(x1, dtype=f) +
            pw.to(f) * torch.tensor(bin_w, dtype=f) +
            (ix.to(f) + 0.5) * torch.tensor(bin_w / grid_w, dtype=f))

        def axis(v, size):
            valid = (v >= -1.0) & (v <= size)
            v = v.clamp(min=0)
            low = v.floor().long()
            edge = low >= size - 1
            low = torch.where(edge, torch.full_like(low, size - 1), low)
            high = torch.where(edge, low, low + 1)
            v = torch.where(edge, low.to(v.dtype), v)
            lv = v - low.to(v.dtype)
            return valid, low, high, 1 - lv, lv

        vy, yl, yh, hy, ly = axis(y, height)
        vx, xl, xh, hx, lx = axis(x, width)
        feat = input[b]
        val = (
            hy[:, None] * hx[None, :] * feat[:, yl][:, :, xl] +
            hy[:, None] * lx[None, :] * feat[:, yl][:, :, xh] +
            ly[:, None] * hx[None, :] * feat[:, yh][:, :, xl] +
            ly[:, None] * lx[None, :] * feat[:, yh][:, :, xh])
        val = val * (vy[:, None] & vx[None, :]).to(val.dtype)
        val = val.reshape(channels, pooled_height, grid_h, pooled_width,
                          grid_w)
        out[k] = val.sum(dim=(2, 4)) / count
    return out


def install_torchvision_fallbacks():
    try:
        torch.ops.torchvision.nms  # noqa: B018
        return  # torchvision's compiled ops are there: use them
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library('torchvision', 'DEF')  # noqa: TOR901
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    lib.impl('nms', _nms_cpu, 'CPU')
    install_torchvision_fallbacks.lib = lib  # keep the library alive
    import torchvision.ops.boxes as box_ops
    box_ops._assert_has_ops = lambda: None
    roi_align_module = sys.modules['torchvision.ops.roi_align']
    roi_align_module._roi_align = _roi_align_cpu
