"""The prepared GPU check (tools/gpu_check.py) and its mmcv ops shim.

The shim's plain-PyTorch RoIAlign and NMS are checked against mmcv's
compiled ops (an independent implementation, in C++); the whole check runs
in its CPU quick mode with the shim forced in, so that Mask R-CNN's forward
and backward go through it as they do on the GPU machine (mmcv-lite).
"""
import functools
import inspect
import json
import math
import os
import os.path as osp
import re
import sys
import time
import types

import pytest
import torch
import torch.nn.functional as F
from _helpers import (CPU_FLOAT16_AUTOCAST, CPU_GRAD_SCALER, GRADIENT_FACTOR,
                      NEEDS_CPU_FLOAT16, NEEDS_CPU_GRAD_SCALER, ROOT,
                      GridRecorder, float32_floor, float64_literal,
                      golden_model, run_program, stage_depths)

from mmrest import ResT
from mmrest.backbones import emsa_triton, to_literal
from mmrest_tools import gpu_check, ops_shim


# --------------------------------------------------------------------------
# ops shim against mmcv's compiled ops
# --------------------------------------------------------------------------
def _rois(num_images, height, width, scale, gen):
    """Boxes (in image coordinates) of all kinds: inside, crossing and
    outside the border, degenerate (zero width), tiny and large."""
    h, w = height / scale, width / scale
    boxes = []
    for _ in range(40):
        x1 = float(torch.rand(1, generator=gen)) * w * 1.2 - 0.1 * w
        y1 = float(torch.rand(1, generator=gen)) * h * 1.2 - 0.1 * h
        bw = float(torch.rand(1, generator=gen)) * w * 0.8
        bh = float(torch.rand(1, generator=gen)) * h * 0.8
        b = float(torch.randint(num_images, (1, ), generator=gen))
        boxes.append([b, x1, y1, x1 + bw, y1 + bh])
    boxes += [[0, 3.0, 4.0, 3.0, 9.0], [1, 0.0, 0.0, w, h],
              [0, -5.0, -5.0, -1.0, -2.0], [1, 0.2, 0.3, 0.9, 0.8],
              [0, w - 1.5, h - 2.5, w + 3.0, h + 1.0]]
    return torch.tensor(boxes, dtype=torch.float32)


def _bilinear_loop(height, width, y, x):
    """mmcv's bilinear_interpolate, one sample: [(y, x, weight)]."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def _roi_align_loop(x, rois, out_h, out_w, scale, ratio, aligned, grad):
    """mmcv's RoIAlign CUDA kernels (average mode) transcribed as scalar
    loops, float64: the forward and the input gradient for ``grad``."""
    B, C, H, W = x.shape
    out = torch.zeros(rois.shape[0], C, out_h, out_w, dtype=torch.float64)
    gin = torch.zeros(B, C, H, W, dtype=torch.float64)
    off = 0.5 if aligned else 0.0
    for n, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sw, sh = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sw, y2 * scale - off - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out_h, rw / out_w
        gh = ratio if ratio > 0 else int(math.ceil(rh / out_h))
        gw = ratio if ratio > 0 else int(math.ceil(rw / out_w))
        count = max(gh * gw, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                for iy in range(gh):
                    yy = sh + ph * bh + (iy + .5) * bh / gh
                    for ix in range(gw):
                        xx = sw + pw * bw + (ix + .5) * bw / gw
                        for yi, xi, w in _bilinear_loop(H, W, yy, xx):
                            out[n, :, ph,
                                pw] += w * x[int(b), :, yi, xi] / count
                            gin[int(b), :, yi, xi] += (
                                w * grad[n, :, ph, pw] / count)
    return out, gin


@pytest.mark.parametrize('scale,ratio,aligned', [(0.5, 0, True),
                                                 (0.25, 2, False),
                                                 (0.5, 1, True)])
@pytest.mark.parametrize('num_rois', [7, 1, 0])
def test_roi_align_torch_matches_mmcv_kernel_loops(scale, ratio, aligned,
                                                   num_rois):
    """Against mmcv's kernels written out as loops (no mmcv needed):
    boxes of zero width and of zero height (no samples where the grid
    follows the box, so a zero output), one sample per bin, a single box
    and none."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 9, 11, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 2.0, 13.0, 15.0], [1, -4.0, -3.0, 9.0, 6.5],
                         [0, 15.0, 12.0, 30.0, 22.0], [1, 6.0, 6.0, 6.0, 9.0],
                         [0, 0.0, 0.0, 44.0, 36.0], [1, 2.3, 4.1, 5.2, 6.9],
                         [0, 3.0, 8.0, 12.0, 8.0]],
                        dtype=torch.float64)[:num_rois]
    grad = torch.randn(num_rois, 2, 3, 4, generator=gen, dtype=torch.float64)
    exp_out, exp_grad = _roi_align_loop(x, rois, 3, 4, scale, ratio, aligned,
                                        grad)
    out = ops_shim.roi_align_torch(x, rois, 3, 4, scale, ratio, aligned)
    gin = ops_shim.roi_align_torch_backward(grad, rois, x.shape, scale, ratio,
                                            aligned)
    torch.testing.assert_close(out, exp_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gin, exp_grad, rtol=1e-10, atol=1e-10)
    assert gin.is_contiguous()
    if num_rois == 7 and aligned and ratio == 0:
        # a box of zero height: no samples where the grid follows the box
        assert not exp_out[-1].any() and exp_out[:-1].any()


def test_nms_torch_greedy():
    """Hand-made boxes, greedy by score, and mmcv's ``offset=1``."""
    boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30],
                          [0, 0, 9, 9]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # offset 0: IoU(box3, box0) = 81 / 100, IoU(box3, box1) = 64 / 117
    assert ops_shim.nms_torch(boxes, scores, 0.5).tolist() == [3, 2]
    assert ops_shim.nms_torch(boxes, scores, 0.7).tolist() == [3, 1, 2]
    # offset 1: IoU(box3, box0) = 100 / 121, IoU(box3, box1) = 81 / 140
    assert ops_shim.nms_torch(
        boxes, scores, 0.6, offset=1).tolist() == [3, 1, 2]
    # between 81 / 100 and 100 / 121: only offset 1 (not the default)
    # suppresses box 0; an IoU equal to the threshold does not suppress
    assert ops_shim.nms_torch(boxes, scores, 0.82).tolist() == [3, 0, 1, 2]
    assert ops_shim.nms_torch(boxes, scores, 0.81).tolist() == [3, 0, 1, 2]
    assert ops_shim.nms_torch(boxes, scores, 0.8099).tolist() == [3, 1, 2]
    assert ops_shim.nms_torch(boxes[:0], scores[:0], 0.5).numel() == 0


@pytest.mark.parametrize('scale,ratio,aligned', [(0.25, 0, True),
                                                 (0.125, 2, True),
                                                 (0.5, 0, False),
                                                 (1.0, 3, False)])
def test_roi_align_torch_matches_mmcv(scale, ratio, aligned):
    from mmcv.ops import roi_align
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 19, 23, generator=gen, dtype=torch.float32)
    rois = _rois(2, 19, 23, scale, gen)
    grad = torch.randn(rois.shape[0], 3, 7, 5, generator=gen)

    x1 = x.clone().requires_grad_()
    expected = roi_align(x1, rois, (7, 5), scale, ratio, 'avg', aligned)
    expected.backward(grad)

    actual = ops_shim.roi_align_torch(x, rois, 7, 5, scale, ratio, aligned)
    grad_in = ops_shim.roi_align_torch_backward(grad, rois, x.shape, scale,
                                                ratio, aligned)

    torch.testing.assert_close(actual, expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_in, x1.grad, rtol=1e-5, atol=1e-5)


def test_shim_ext_functions_match_mmcv_signatures(monkeypatch):
    """The stand-in functions, called as mmcv/ops/roi_align.py and
    mmcv/ops/nms.py call mmcv._ext, write what mmcv's ops compute."""
    from mmcv.ops import nms, roi_align
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 20, generator=gen)
    rois = _rois(2, 16, 20, 0.5, gen)
    monkeypatch.setitem(ops_shim._BACKEND, 'name', 'torch')  # restored
    out = x.new_zeros(rois.shape[0], 4, 7, 7)
    ops_shim.roi_align_forward(
        x,
        rois,
        out,
        x.new_zeros(0),
        x.new_zeros(0),
        aligned_height=7,
        aligned_width=7,
        spatial_scale=0.5,
        sampling_ratio=0,
        pool_mode=1,
        aligned=True)
    torch.testing.assert_close(
        out, roi_align(x, rois, 7, 0.5, 0, 'avg', True), rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, generator=gen)
    gin = torch.zeros_like(x)
    ops_shim.roi_align_backward(
        g,
        rois,
        x.new_zeros(0),
        x.new_zeros(0),
        gin,
        aligned_height=7,
        aligned_width=7,
        spatial_scale=0.5,
        sampling_ratio=0,
        pool_mode=1,
        aligned=True)
    xr = x.clone().requires_grad_()
    roi_align(xr, rois, 7, 0.5, 0, 'avg', True).backward(g)
    torch.testing.assert_close(gin, xr.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="pool_mode='avg'"):
        ops_shim.roi_align_forward(x, rois, out, out, out, 7, 7, 0.5, 0, 0,
                                   True)

    boxes = torch.rand(300, 4, generator=gen) * 60
    boxes[:, 2:] += boxes[:, :2] * 0.5 + 1
    scores = torch.rand(300, generator=gen)
    for offset in (0, 1):
        for thr in (0.3, 0.7):
            _, expected = nms(boxes, scores, thr, offset=offset)
            actual = ops_shim.nms(
                boxes, scores, iou_threshold=thr, offset=offset)
            assert actual.tolist() == expected.tolist()


class _RoIAlignFunction(torch.autograd.Function):
    """The plain functions with autograd, called as torchvision's
    ``roi_align`` is."""

    @staticmethod
    def forward(ctx, x, rois, output_size, scale, ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (x.shape, scale, ratio, aligned)
        return ops_shim.roi_align_torch(x, rois, *output_size, scale, ratio,
                                        aligned)

    @staticmethod
    def backward(ctx, grad):
        (rois, ) = ctx.saved_tensors
        return (ops_shim.roi_align_torch_backward(grad, rois, *ctx.args), None,
                None, None, None, None)


class _FakeTorchvision:
    """``torchvision.ops`` (``roi_align``, ``nms``) and the
    ``torch.ops.torchvision._roi_align_backward`` kernel with torchvision's
    argument orders, computing mmcv's formulas (the forward times ``1 +
    forward_error``, the kernel's gradient times ``1 + backward_error``,
    NMS without its last kept box if ``drop_one``); records what was
    called."""

    def __init__(self, forward_error=0., backward_error=0., drop_one=False):
        self.forward_error = forward_error
        self.backward_error = backward_error
        self.drop_one = drop_one
        self.calls = []

    def roi_align(self, x, rois, output_size, scale, ratio, aligned):
        self.calls.append('roi_align')
        return _RoIAlignFunction.apply(x, rois, output_size, scale, ratio,
                                       aligned) * (1 + self.forward_error)

    def _roi_align_backward(self, grad, rois, scale, out_h, out_w, batch,
                            channels, height, width, ratio, aligned):
        self.calls.append('_roi_align_backward')
        assert grad.shape[-2:] == (out_h, out_w)
        return ops_shim.roi_align_torch_backward(
            grad, rois, (batch, channels, height, width), scale, ratio,
            aligned) * (1 + self.backward_error)

    def nms(self, boxes, scores, iou_threshold):
        self.calls.append('nms')
        keep = ops_shim.nms_torch(boxes, scores, iou_threshold)
        return keep[:-1] if self.drop_one else keep


@pytest.mark.parametrize('kernel', [True, False])
def test_self_check_keeps_torchvision_only_where_it_agrees(
        monkeypatch, kernel):
    """The GPU machine's torchvision path (not installed here: a stand-in
    with its argument orders): ``self_check`` keeps it where its RoIAlign
    forward, backward (torchvision's kernel, or autograd where the kernel
    is missing) and NMS give mmcv's results, else falls back to plain
    PyTorch and says why; ``nms`` with mmcv's ``offset=1`` never goes to
    torchvision (it has no offset)."""
    fake = _FakeTorchvision()
    monkeypatch.setattr(ops_shim, '_tv_ops', lambda: fake)
    monkeypatch.setattr(
        torch.ops, 'torchvision', fake if kernel else object(), raising=False)
    monkeypatch.setitem(ops_shim._BACKEND, 'name', None)  # restored after
    report = ops_shim.self_check()
    assert report['backend'] == 'torchvision' and 'error' not in report
    assert report['diffs'].pop('nms_same_keep') is True
    assert len(report['diffs']) == 6
    assert max(report['diffs'].values()) < 1e-6
    assert ('_roi_align_backward' in fake.calls) == kernel
    assert ops_shim._BACKEND['name'] == 'torchvision'

    boxes = torch.tensor([[0., 0, 10, 10], [0, 0, 9, 9]])
    scores = torch.tensor([0.9, 0.95])
    fake.calls.clear()
    # IoU 81 / 100 with offset 0, 100 / 121 with offset 1
    assert ops_shim.nms(boxes, scores, 0.82, 1).tolist() == [1]
    assert ops_shim.nms(boxes, scores, 0.82, 0).tolist() == [1, 0]
    assert fake.calls == ['nms']

    failing = _FakeTorchvision()
    failing.nms = None
    wrongs = [(_FakeTorchvision(forward_error=1e-3), 'disagrees'),
              (_FakeTorchvision(backward_error=1e-3), 'disagrees'),
              (_FakeTorchvision(drop_one=True), 'disagrees'),
              (failing, 'path failed')]
    for wrong, why in wrongs:
        if kernel:
            monkeypatch.setattr(torch.ops, 'torchvision', wrong)
        elif wrong.backward_error:
            continue  # autograd: the backward is the forward's
        monkeypatch.setattr(ops_shim, '_tv_ops', lambda: wrong)
        report = ops_shim.self_check()
        assert report['backend'] == 'torch'
        assert ops_shim._BACKEND['name'] == 'torch'
        assert why in report['error']


def test_ext_stand_in_module():
    mod = ops_shim.make_ext_module()
    assert hasattr(mod, 'nms') and hasattr(mod, 'anything_else')
    with pytest.raises(NotImplementedError, match='mmcv._ext.ball_query'):
        mod.ball_query_forward()
    with pytest.raises(AttributeError):
        mod.__path__  # not a package for the import system
    assert mod.MMREST_OPS_SHIM is True  # how install() knows its own
    for name in ('__private', 'trailing__'):  # stubs, not dunders
        with pytest.raises(NotImplementedError, match=name):
            getattr(mod, name)()


def test_install_only_where_mmcv_ext_is_missing(monkeypatch):
    """``install`` leaves a working ``mmcv._ext`` alone, recognises its
    own stand-in, installs one when forced (the self-check's report with
    it) and refuses to once ``mmcv.ops`` holds the real functions;
    ``MMREST_FORCE_OPS_SHIM=0`` is not forcing."""
    import types
    real = pytest.importorskip('mmcv._ext')  # the compiled ops
    if getattr(real, 'MMREST_OPS_SHIM', False):
        pytest.skip('mmcv without its compiled ops: the shim is in use')
    monkeypatch.setitem(sys.modules, 'mmcv._ext', real)  # restored after
    monkeypatch.setitem(ops_shim._BACKEND, 'name', ops_shim._BACKEND['name'])
    for value in ('', '0'):
        monkeypatch.setenv(ops_shim.FORCE_ENV, value)
        assert ops_shim.install() == dict(
            used=False, reason='mmcv._ext imports')
    assert sys.modules['mmcv._ext'] is real
    monkeypatch.setitem(sys.modules, 'mmcv.ops.stand_in',
                        types.ModuleType('mmcv.ops.stand_in'))
    monkeypatch.setenv(ops_shim.FORCE_ENV, '1')
    with pytest.raises(RuntimeError, match='before mmcv.ops is imported'):
        ops_shim.install()
    for name in [m for m in sys.modules if m.startswith('mmcv.ops')]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test
    report = ops_shim.install()
    assert report['used'] is True and report['reason'].startswith('forced')
    assert report['backend'] == report['self_check']['backend']
    assert sys.modules['mmcv._ext'].MMREST_OPS_SHIM is True
    monkeypatch.delenv(ops_shim.FORCE_ENV)
    assert ops_shim.install() == dict(
        used=True, reason='already installed', backend=report['backend'])


def test_package_lookup_without_pkg_resources(monkeypatch):
    """Where ``pkg_resources`` is gone, mmengine's package lookups answer
    from the import system: installed or not, and the package's folder."""
    import mmengine.config.config as cc
    import mmengine.utils
    import mmengine.utils.package_utils as pu
    for mod in (pu, mmengine.utils, cc):  # restored after the test
        for name in ('is_installed', 'get_installed_path'):
            monkeypatch.setattr(mod, name, getattr(mod, name))
    monkeypatch.setitem(sys.modules, 'pkg_resources', None)  # ImportError
    assert ops_shim.patch_package_lookup() is not None
    import mmdet
    for mod in (pu, mmengine.utils, cc):
        assert mod.is_installed('mmdet') is True
        assert mod.is_installed('mmrest_no_such_package') is False
        assert mod.get_installed_path('mmdet') == os.path.dirname(
            mmdet.__file__)
        with pytest.raises(ModuleNotFoundError, match='not installed'):
            mod.get_installed_path('mmrest_no_such_package')


# --------------------------------------------------------------------------
# helpers and bookkeeping of the check
# --------------------------------------------------------------------------
def test_randomize_norms_draws_every_norms_parameters():
    """BatchNorm's statistics and the affine parameters of BatchNorm,
    LayerNorm and GroupNorm are drawn (the same for a seed); a norm without
    affine parameters is left as it is."""
    from torch import nn

    from mmrest_tools.gpu_check.measure import randomize_norms

    def model():
        return nn.Sequential(
            nn.BatchNorm2d(8), nn.LayerNorm(8), nn.GroupNorm(2, 8),
            nn.LayerNorm(8, elementwise_affine=False),
            nn.BatchNorm2d(8, affine=False))

    a, b = model(), model()
    randomize_norms(a, seed=1)
    randomize_norms(b, seed=1)
    for m in list(a)[:3]:
        assert (m.weight != 1).all() and (m.bias != 0).all()
    assert (a[0].running_mean != 0).all() and (a[0].running_var != 1).all()
    assert (a[4].running_mean != 0).all()
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_device_info_names_the_cpu(monkeypatch):
    import platform

    from mmrest_tools.gpu_check.measure import device_info
    for processor, name in (('', 'cpu'), ('x86_64', 'x86_64')):
        monkeypatch.setattr(platform, 'processor', lambda p=processor: p)
        info = device_info(torch.device('cpu'))
        assert info['name'] == name and info['type'] == 'cpu'


def test_versions_name_triton(monkeypatch):
    """The check's environment names Triton's release (the 'triton' core's
    launches depend on it, docs/benchmarks.md) beside OpenMMLab's, or
    why it is not importable."""
    from mmrest_tools.gpu_check.measure import versions
    found = versions()
    if emsa_triton.available():
        import triton
        assert found['triton'] == triton.__version__
    monkeypatch.setitem(sys.modules, 'triton', None)  # import fails
    assert versions()['triton'].startswith('not importable')
    assert set(found) >= {'triton', 'mmengine', 'mmcv', 'mmdet'}


def test_error_measures():
    ref = [torch.tensor([1.0, -4.0]), torch.tensor([2.0])]
    out = [torch.tensor([1.5, -4.0]), torch.tensor([2.0 + 1e-3])]
    # worst of 0.5 / 4 and 1e-3 / 2
    assert gpu_check.output_error(out, ref) == pytest.approx(0.125)
    assert gpu_check.output_error([torch.tensor([float('nan')])],
                                  [torch.tensor([1.0])]) == float('inf')
    g = dict(a=torch.tensor([3.0, 0.0]), b=torch.tensor([0.0, 4.0]))
    r = dict(a=torch.tensor([3.0, 1.0]), b=torch.tensor([0.0, 4.0]))
    assert gpu_check.grad_error(g, r) == pytest.approx(1 / 26**0.5)
    assert gpu_check.grad_error({}, r) == float('inf')
    # nothing compared is not an error of 0: NaN fails every bound
    assert math.isnan(gpu_check.grad_error(g, {}))
    assert math.isnan(gpu_check.output_error([], []))
    # outputs missing (or extra) are a mismatch, not a shorter comparison
    assert gpu_check.output_error(out[:1], ref) == float('inf')
    assert gpu_check.output_error(out + out, ref) == float('inf')
    # relative to references of any size: below 1, and zero (absolute)
    small = [torch.tensor([0.5, -0.25])]
    assert gpu_check.output_error([torch.tensor([0.4, -0.25])],
                                  small) == pytest.approx(0.2)
    assert gpu_check.output_error([torch.tensor([0.1])],
                                  [torch.zeros(1)]) == pytest.approx(0.1)
    assert gpu_check.grad_error(dict(a=torch.tensor([0.3, 0.4])),
                                dict(a=torch.tensor([0.3, 0.]))) == \
        pytest.approx(0.4 / 0.3)
    assert gpu_check.grad_error(
        dict(a=torch.tensor([0.3, 0.4])),
        dict(a=torch.zeros(2))) == pytest.approx(0.5)


def test_time_calls_in_milliseconds_after_warmup(monkeypatch):
    """Off the GPU, each timed call's wall-clock time in milliseconds,
    after the untimed warm-up calls."""
    from mmrest_tools.gpu_check import measure
    now = [100.0]
    calls = []

    def fn():
        calls.append(now[0])
        now[0] += 0.25 if len(calls) > 2 else 5.0  # warm-ups are slow

    monkeypatch.setattr(measure.time, 'perf_counter', lambda: now[0])
    ms = measure.time_calls(fn, torch.device('cpu'), repeats=3, warmup=2)
    assert ms == pytest.approx([250.0] * 3) and len(calls) == 5


def _quick_check(out_dir):
    """A quick-mode check on the CPU writing to ``out_dir``, silent."""
    return gpu_check.GpuCheck(
        'cpu',
        str(out_dir),
        gpu_check.Settings(quick=True),
        log=lambda msg: None)


def test_sections_are_independent_and_saved(tmp_path, monkeypatch):
    from mmrest_tools.gpu_check import base
    check = _quick_check(tmp_path)
    # a clock that moves only where a row says so: exact durations
    clock = types.SimpleNamespace(now=check.t0)
    monkeypatch.setattr(base, 'time',
                        types.SimpleNamespace(monotonic=lambda: clock.now))

    def broken(sec):
        sec['rows'].append(dict(kind='maskrcnn', model='m'))
        raise ValueError('boom in section')

    def slow_row():
        clock.now += 2.5
        return dict(iter_ms=12.5, peak_MiB=None)

    def rows(sec):
        check._guarded_row(sec, dict(kind='maskrcnn', model='ok'), slow_row)
        check._guarded_row(sec, dict(kind='maskrcnn', model='bad'),
                           lambda: 1 / 0)

    check.run_section('equality', broken)
    check.run_section('maskrcnn', rows)
    saved = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert saved['sections']['equality']['status'] == 'error'
    assert 'boom in section' in saved['sections']['equality']['error']
    mr = saved['sections']['maskrcnn']
    assert mr['status'] == 'errors in some rows'
    assert mr['rows'][0]['iter_ms'] == 12.5
    # each row's and section's own duration, not a clock reading
    assert [r['seconds'] for r in mr['rows']] == [2.5, 0.0]
    assert mr['seconds'] == 2.5
    assert saved['sections']['equality']['seconds'] == 0.0
    assert 'ZeroDivisionError' in mr['rows'][1]['error']
    md = (tmp_path / 'gpu_check.md').read_text()
    assert '### equality: error (ValueError: boom in section)' in md
    assert '| ok | - | 12 |' in md or '| ok | - | 13 |' in md
    assert 'error: ZeroDivisionError' in md

    monkeypatch.undo()  # the real clock: a deadline of 0 has passed
    late = gpu_check.GpuCheck(
        'cpu',
        str(tmp_path / 'late'),
        gpu_check.Settings(quick=True),
        deadline_s=0.0,
        log=lambda msg: None)
    late.run_section('throughput', lambda sec: 1 / 0)
    assert late.results['sections']['throughput']['status'] == 'skipped'


@NEEDS_CPU_FLOAT16
@NEEDS_CPU_GRAD_SCALER
@pytest.mark.parametrize('start, nonfinite', [(1.0, ['w']), (2.0, [])])
def test_amp_steps_report_nonfinite_gradients(tmp_path, monkeypatch, start,
                                              nonfinite):
    """The GradScaler rows: a step whose gradients are not finite (here
    the square root's at 0: a NaN gradient under a finite loss) is counted,
    its parameters named, the scaler's skip (scale lowered) seen, the row
    failed; a parameter without a gradient is not counted; a finite step
    passes. Only the 'literal' row's model is made literal."""
    from mmrest_tools.gpu_check import equality

    class Net(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((3, ), start))
            self.unused = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return [torch.sqrt(self.w - 1) * x.mean()]

    monkeypatch.setattr(equality, 'build_rest', lambda arch: Net())
    check = _quick_check(tmp_path)
    check.s.amp_steps = 2
    made_literal = []  # to_literal's calls: the 'literal' row's only

    def spy(model, copy_model=True):
        made_literal.append(copy_model)
        return model

    res = check._amp_steps('quick', Net().state_dict(), 'fast', spy)
    assert made_literal == []
    assert [s['nonfinite_grads'] for s in res['steps']] == [len(nonfinite)] * 2
    assert all(s['nonfinite_examples'] == nonfinite for s in res['steps'])
    assert all(math.isfinite(s['loss']) for s in res['steps'])
    assert [s['skipped'] for s in res['steps']] == [bool(nonfinite)] * 2
    assert res['skipped_steps'] == (2 if nonfinite else 0)
    assert res['nonfinite_grads'] == 2 * len(nonfinite)
    assert res['pass'] is (not nonfinite)
    check._amp_steps('quick', Net().state_dict(), 'literal', spy)
    assert made_literal == [False]


def test_equality_section_plan_of_the_device_run(tmp_path, monkeypatch):
    """With the device run's settings, the equality section checks
    ResT-Small and ResT v2-T (named so) at every shape and mode, each from
    weights of a fixed seed, then the GradScaler rows of both paths; TF32
    off (matmul and cuDNN) inside the section and restored after it. The
    cases and the models' building are recorded, not run."""
    from mmrest_tools.gpu_check import equality
    check = gpu_check.GpuCheck(
        'cpu',
        str(tmp_path),
        gpu_check.Settings(quick=False),
        log=lambda msg: None)
    built, cases, amp_rows = [], [], []

    def build_rest(arch):
        built.append((arch, float(torch.rand(1))))  # the seed's first draw
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(equality, 'build_rest', build_rest)
    tf32_inside = set()

    def case(sec, name, arch, state, shape, mode, to_literal):
        cases.append((name, arch, shape, mode))
        tf32_inside.add((torch.backends.cuda.matmul.allow_tf32,
                         torch.backends.cudnn.allow_tf32))

    monkeypatch.setattr(check, '_equality_case', case)
    monkeypatch.setattr(
        check, '_guarded_row', lambda sec, base, fn: amp_rows.append(
            (base['model'], base['path'], base['input'])))
    before = (torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32)
    sec = dict(rows=[])
    try:  # the flags are torch's properties: set and restored by hand
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        check.equality(sec)
        after = (torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.allow_tf32)
    finally:
        (torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = before
    s = check.s
    assert [a for a, _ in built] == ['small', 'v2_tiny']
    assert built[0][1] == built[1][1]  # both from torch.manual_seed(0)
    assert cases == [(name, arch, shape, mode)
                     for name, arch in (('rest_small', 'small'),
                                        ('restv2_tiny', 'v2_tiny'))
                     for shape in s.eq_shapes for mode in s.eq_modes]
    assert amp_rows == [(name, path, '2x3x224x288')
                        for name in ('rest_small', 'restv2_tiny')
                        for path in ('fast', 'literal')]
    assert sec['tf32'].startswith('off') and after == (True, True)
    assert tf32_inside == {(False, False)}


def _wrong_literal(model):
    """to_literal, then the first weight changed: a literal path (and so a
    float64 reference) that computes something else than ``model``."""
    literal = to_literal(model)
    with torch.no_grad():
        next(literal.parameters()).add_(0.1)
    return literal


@pytest.mark.parametrize('mode', ['eval_nograd', 'train_grad_cp'])
def test_equality_case_rows(mode):
    """The equality section's rows of one case, each path against the
    float64 reference: the models in the case's mode; gradients compared
    where the mode has them (float32 against float64: never exactly
    equal); the row passes for the fast path and fails for a fast path
    that computes something else, in outputs alone when no gradient is
    measured; an autocast row compares with the float32 result, which it
    needs first."""
    from mmrest_tools.compared import QUICK_REST_ARCH, build_rest
    from mmrest_tools.gpu_check.equality import EqualityCase
    torch.manual_seed(0)
    base = build_rest(QUICK_REST_ARCH)
    gpu_check.randomize_norms(base)  # as the section does
    state = base.state_dict()
    cpu = torch.device('cpu')
    case = EqualityCase(cpu, QUICK_REST_ARCH, state, (1, 3, 33, 47), mode,
                        to_literal)
    with pytest.raises(RuntimeError, match='no float32 result'):
        case.amp_row(torch.bfloat16)
    row = case.fp32_row()
    train = mode.startswith('train')
    assert [case.built[k].training for k in ('fast', 'lit', 'ref')] == \
        [train] * 3
    assert row['pass'] is True and row['err_literal'] > 0, row
    assert ('grad_err_fast' in row) is train
    if train:
        assert row['grad_err_fast'] > 0 and row['grad_err_literal'] > 0, row
    amp = case.amp_row(torch.bfloat16)
    assert amp['err_fast'] > 0 and amp['pass'] is True, amp
    assert amp.get('grads_finite_fast', True) is True

    wrong = EqualityCase(cpu, QUICK_REST_ARCH, state, (1, 3, 33, 47), mode,
                         _wrong_literal).fp32_row()
    # failed by its outputs (the float32 criterion's first part)
    assert wrong['err_fast'] > 4 * wrong['err_literal'] + \
        gpu_check.FP32_FLOOR, wrong
    assert wrong['pass'] is False, wrong


@pytest.mark.parametrize('mode', ['eval_nograd', 'train_grad'])
def test_equality_float32_row_criterion(mode):
    """A float32 row passes when the fast path's error against the
    float64 reference is within 4 times the literal path's plus
    FP32_FLOOR, in outputs and, where measured, in gradients: just inside
    passes, just outside fails, each part alone, and with an exact literal
    path the floor alone is the bound; the ratio reported is the fast
    path's error over the literal one's. The paths' results given
    directly (relative errors of all ones)."""
    from mmrest_tools.gpu_check.equality import EqualityCase
    case = EqualityCase(torch.device('cpu'), None, None, (1, ), mode, None)
    grad = mode != 'eval_nograd'
    ones = torch.ones(4, dtype=torch.float64)

    def row(lit_err, err, grad_err=None):
        grad_err = err if grad_err is None else grad_err
        results = dict(
            ref=([ones], {
                'w': ones
            }),
            fast=([ones * (1 + err)], {
                'w': ones * (1 + grad_err)
            }),
            lit=([ones * (1 + lit_err)], {
                'w': ones * (1 + lit_err)
            }))
        case.run = lambda model, dtype, amp: (results[model][0], results[model]
                                              [1] if grad else {})
        case.build = lambda: None
        case.built = dict(fast='fast', lit='lit', ref='ref', reference='r')
        return case.fp32_row()

    for lit_err in (0.01, 0.0):
        bound = 4 * lit_err + gpu_check.FP32_FLOOR
        ok = row(lit_err, bound * 0.9)
        assert ok['pass'] is True, ok
        if lit_err:
            assert ok['ratio'] == pytest.approx(bound * 0.9 / lit_err)
        assert row(lit_err, bound * 1.1)['pass'] is False
        # the gradients alone outside the bound fail the row where measured
        assert row(
            lit_err, bound * 0.9, grad_err=bound * 1.1)['pass'] is (not grad)
        assert row(lit_err, bound * 1.1, grad_err=bound * 0.9)['pass'] is False


@pytest.mark.parametrize('mode', ['eval_nograd', 'train_grad'])
def test_equality_autocast_row_criterion(mode):
    """An autocast row passes when the fast path's error against its own
    float32 result is within AMP_FACTOR times the literal path's plus
    AMP_FLOOR and, where gradients are measured, they are finite: each of
    the two conditions alone fails it; without gradients, non-finite ones
    do not count. The paths' results given directly (relative output
    errors of ``err``)."""
    from mmrest_tools.gpu_check.equality import EqualityCase
    case = EqualityCase(torch.device('cpu'), None, None, (1, ), mode, None)
    grad = mode != 'eval_nograd'
    ones, lit_err = torch.ones(4, dtype=torch.float64), 0.01
    bound = gpu_check.AMP_FACTOR * lit_err + gpu_check.AMP_FLOOR

    def row(err, grads_finite):
        g = {'w': torch.tensor([1.0 if grads_finite else math.inf])}
        results = dict(
            fast=([ones * (1 + err)], g if grad else {}),
            lit=([ones * (1 + lit_err)], g if grad else {}))
        case.run = lambda model, dtype, amp: results[model]
        case.built = dict(
            fast='fast',
            lit='lit',
            fast32=([ones], {
                'w': torch.ones(1)
            } if grad else {}),
            lit32=([ones], {
                'w': torch.ones(1)
            } if grad else {}))
        return case.amp_row(torch.float16)

    ok = row(bound * 0.9, True)
    assert ok['pass'] is True and ok['err_literal'] == pytest.approx(lit_err)
    assert ok['ratio'] == pytest.approx(bound * 0.9 / lit_err)
    assert row(bound * 1.1, True)['pass'] is False
    assert row(bound * 0.9, False)['pass'] is (not grad)
    if grad:
        assert ok['grads_finite_fast'] is True
        assert row(bound * 0.9, False)['grads_finite_fast'] is False


def test_synthetic_det_batch_is_a_coco_training_batch():
    """The Mask R-CNN section's batch, as mmdet's PackDetInputs gives it:
    uint8 noise images; boxes inside the image, 10 to 40 % of its sides;
    COCO's labels (the config's 80 classes); each mask the ellipse
    inscribed in its box (pixels inside the box, area pi/4 w h, centred);
    no ignored instances; the same seed, the same batch."""
    from mmengine.config import Config

    from mmrest_tools.gpu_check.maskrcnn import synthetic_det_batch
    config = dict(gpu_check.MASKRCNN_MODELS)['mask_rcnn_rest_small']
    num_classes = Config.fromfile(config).model.roi_head.bbox_head.num_classes
    h, w, n = 256, 320, 6
    data = synthetic_det_batch(2, h, w, objects=n, seed=3)
    assert len(data['inputs']) == len(data['data_samples']) == 2
    for img, sample in zip(data['inputs'], data['data_samples']):
        assert img.dtype == torch.uint8 and img.shape == (3, h, w)
        assert img.float().std() > 60  # uniform over 0..255: 73.9
        assert sample.ori_shape == sample.img_shape == (h, w)
        assert sample.scale_factor == (1.0, 1.0) and sample.flip is False
        gt = sample.gt_instances
        b = gt.bboxes
        assert b.shape == (n, 4) and b.dtype == torch.float32
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() \
            and (b[:, 3] <= h).all()
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        assert ((bw >= 0.1 * w) & (bw <= 0.4 * w)).all(), bw
        assert ((bh >= 0.1 * h) & (bh <= 0.4 * h)).all(), bh
        assert gt.labels.dtype == torch.int64
        assert 0 <= int(gt.labels.min()) and int(gt.labels.max()) < \
            num_classes == 80
        masks = gt.masks.masks
        assert masks.shape == (n, h, w) and set(masks.ravel()) <= {0, 1}
        for m, (x1, y1, x2, y2) in zip(masks, b.tolist()):
            ys, xs = m.nonzero()
            # pixel centres (index + 0.5) inside the box
            assert xs.min() + 0.5 >= x1 and xs.max() + 0.5 <= x2 + 1
            assert ys.min() + 0.5 >= y1 and ys.max() + 0.5 <= y2 + 1
            ellipse = math.pi / 4 * (x2 - x1) * (y2 - y1)
            assert abs(m.sum() - ellipse) < 0.1 * ellipse
            assert abs(xs.mean() - (x1 + x2) / 2) < 1
            assert abs(ys.mean() - (y1 + y2) / 2) < 1
        assert sample.ignored_instances.bboxes.shape == (0, 4)
        assert sample.ignored_instances.labels.shape == (0, )
    again = synthetic_det_batch(2, h, w, objects=n, seed=3)
    assert all(
        torch.equal(a, b) for a, b in zip(data['inputs'], again['inputs']))


def test_maskrcnn_config_read_directly_where_mmengine_lookup_fails(
        tmp_path, monkeypatch):
    """An ``mmdet::`` config is read through mmengine's package lookup, as
    users write it; where that fails, from mmdet's own copy of its configs
    (the path named in the log and the row)."""
    from mmengine.config import Config
    check = _quick_check(tmp_path)
    logged = []
    check.log = logged.append
    swin = dict(gpu_check.MASKRCNN_MODELS)['mask_rcnn_swin_t']
    cfg, used = check._load_det_config(swin)
    assert used == swin and cfg.model.backbone.type == 'SwinTransformer'
    assert logged == []
    real = Config.fromfile  # a staticmethod

    def no_lookup(path, *args, **kwargs):
        if open(path).read().startswith("_base_ = 'mmdet::"):
            raise FileNotFoundError('no package lookup here')
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Config, 'fromfile', staticmethod(no_lookup))
    cfg, used = check._load_det_config(swin)
    assert used.endswith(
        osp.join('.mim', 'configs', 'swin',
                 'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')), used
    assert cfg.model.backbone.type == 'SwinTransformer'
    assert 'via mmengine failed (FileNotFoundError' in logged[0]
    assert used in logged[0]


def test_maskrcnn_optimizer_is_the_configs(tmp_path):
    """The Mask R-CNN section steps each config's own optimizer as
    mmengine builds it for training: its type, lr, betas and weight decay,
    every parameter in a group of its own, the paramwise_cfg's decay (none
    on the norms; ResT v2's output norms decayed; Swin's position bias
    tables not)."""
    from mmrest_tools.gpu_check.maskrcnn import config_optimizer
    check = _quick_check(tmp_path)
    decay_of = dict(
        mask_rcnn_rest_small={
            'backbone.stage1.0.attn.q.weight': 0.05,
            'backbone.stage1.0.norm1.weight': 0.0,
            'backbone.stage1.0.attn.sr_norm.bias': 0.0,
            'roi_head.bbox_head.fc_cls.weight': 0.05,
        },
        mask_rcnn_restv2_tiny={
            'backbone.stem.norm.weight': 0.0,
            'backbone.norm_1.weight': 0.05,
            'neck.lateral_convs.0.conv.weight': 0.05,
        },
        mask_rcnn_swin_t={
            'backbone.stages.0.blocks.0.norm1.weight':
            0.0,
            'backbone.stages.0.blocks.0.attn.w_msa.'
            'relative_position_bias_table':
            0.0,
            'backbone.stages.0.blocks.0.ffn.layers.0.0.weight':
            0.05,
        })
    for name, path in gpu_check.MASKRCNN_MODELS:
        model, cfg, _ = check._build_detector(path)
        want = cfg.optim_wrapper.optimizer
        opt = config_optimizer(model, cfg)
        assert type(opt).__name__ == want.type == 'AdamW', name
        groups = opt.param_groups
        params = dict(model.named_parameters())
        assert len(groups) == len(params), name
        by_param = {id(g['params'][0]): g for g in groups}
        for g in groups:
            assert len(g['params']) == 1, name
            assert g['lr'] == want.lr and tuple(g['betas']) == tuple(
                want.betas), name
        for pname, decay in decay_of[name].items():
            g = by_param[id(params[pname])]
            assert g['weight_decay'] == pytest.approx(decay), (name, pname)


class _StandInDetector(torch.nn.Module):
    """What the Mask R-CNN section calls of a detector, recording the
    preprocessor's training flags and each loss."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.unused = torch.nn.Parameter(torch.ones(1))
        self.training_flags, self.losses = [], []

    def data_preprocessor(self, data, training):
        self.training_flags.append(training)
        return dict(inputs=data)

    def forward(self, inputs, mode):
        assert mode == 'loss'
        loss = 100 * (self.w * inputs).sum()
        self.losses.append(float(loss))
        return dict(loss_a=loss, acc=3.0)

    def parse_losses(self, losses):
        return sum(v for k, v in losses.items() if 'loss' in k), {}


@pytest.mark.parametrize('clip', [None, dict(max_norm=0.01, norm_type=2)])
def test_maskrcnn_iteration_as_amp_optim_wrapper(tmp_path, clip):
    """One Mask R-CNN iteration of the maskrcnn section, as mmengine's
    AmpOptimWrapper: the data preprocessed in training mode, the loss
    terms summed, the config's clipping (if any) applied to the gradients
    that exist (they stay in ``.grad`` after the step), the loss and the
    scaler's verdict recorded. A stand-in detector records its calls."""
    from mmrest.utils.torch_compat import grad_scaler
    check = _quick_check(tmp_path)
    model, iters = _StandInDetector(), []
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = grad_scaler('cpu', enabled=False)  # quick mode: no autocast
    check._amp_train_iteration(model, opt, scaler, clip, torch.ones(3), iters)
    assert model.training_flags == [True]
    assert iters == [dict(loss=300.0, skipped=False)]
    assert model.unused.grad is None
    norm = float(model.w.grad.norm())
    assert norm == pytest.approx(0.01 if clip else 100 * math.sqrt(3))


class FakeClock:
    """A clock whose every step call advances it by the next of
    ``durations`` (seconds), and a device sync that logs itself."""

    def __init__(self, durations):
        self.now, self.durations, self.log = 100.0, list(durations), []

    def step(self):
        self.log.append('step')
        self.now += self.durations.pop(0)

    def clock(self):
        self.log.append('clock')
        return self.now

    def sync(self, device):
        self.log.append('sync')


def test_maskrcnn_row_is_the_median_of_the_timed_iterations(
        tmp_path, monkeypatch):
    """The Mask R-CNN row: the warm-up iterations untimed, then each timed
    one between two syncs; the median of the timed ones; every iteration
    listed once, in order, the last loss the last iteration's."""
    from mmengine.config import Config

    from mmrest_tools.gpu_check import maskrcnn
    check = _quick_check(tmp_path)
    check.s.mr_warmup, check.s.mr_iters = 2, 3
    model = _StandInDetector()
    cfg = Config(
        dict(
            optim_wrapper=dict(
                optimizer=dict(type='AdamW', lr=1e-2), clip_grad=None)))
    monkeypatch.setattr(check, '_build_detector', lambda path:
                        (model, cfg, 'used.py'))
    monkeypatch.setattr(maskrcnn, 'synthetic_det_batch',
                        lambda batch, h, w: torch.ones(3))
    fake = FakeClock([0.030, 0.010, 0.020])
    real = maskrcnn.time_steps

    def timed(step, device, repeats, warmup):

        def step_and_advance():
            step()
            fake.step()

        return real(step_and_advance, device, repeats, warmup, fake.clock,
                    fake.sync)

    monkeypatch.setattr(maskrcnn, 'time_steps', timed)
    row = check._maskrcnn_one('config.py')
    assert len(model.losses) == 5 and model.training_flags == [True] * 5
    assert [i['ms'] for i in row['iters']][:2] == [None, None]
    assert [i['ms'] for i in row['iters']][2:] == pytest.approx([30, 10, 20])
    assert [i['loss'] for i in row['iters']] == pytest.approx(model.losses)
    assert row['iter_ms'] == pytest.approx(20)
    assert row['loss_last'] == pytest.approx(model.losses[-1])
    assert row['config'] == 'used.py' and row['skipped_steps'] == 0
    assert row['params_M'] == pytest.approx(4 / 1e6)  # w (3) and unused
    assert row['optimizer']['type'] == 'AdamW' and row['clip_grad'] is None


def test_time_steps_warms_up_then_times_each_step_between_syncs():
    """Warm-up steps are untimed (their durations, the slowest, never
    show), each timed step lies between a sync and the clock on either
    side, and the figures are milliseconds per step."""
    fake = FakeClock([5.0, 4.0, 0.010, 0.030, 0.020])
    ms = gpu_check.time_steps(
        fake.step,
        torch.device('cpu'),
        repeats=3,
        warmup=2,
        clock=fake.clock,
        sync=fake.sync)
    assert ms == pytest.approx([10.0, 30.0, 20.0])
    assert fake.log == ['step'
                        ] * 2 + ['sync', 'clock', 'step', 'sync', 'clock'] * 3
    with pytest.raises(ValueError, match='repeats >= 1'):
        gpu_check.time_steps(fake.step, torch.device('cpu'), 0, 1)
    one = FakeClock([0.5])
    assert gpu_check.time_steps(
        one.step, torch.device('cpu'), 1, 0, clock=one.clock,
        sync=one.sync) == pytest.approx([500.0])


class _TwoMaps(torch.nn.Module):
    """A stand-in backbone: two maps from one weight (x @ w and its
    square), recording the autocast state and grad mode of each call."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.w = torch.nn.Parameter(torch.randn(4, 5, generator=gen))
        self.seen = []

    def forward(self, x):
        from mmrest.utils.torch_compat import is_autocast_enabled
        self.seen.append((is_autocast_enabled('cpu'), torch.is_grad_enabled()))
        y = x @ self.w
        return y, y * y


def test_backbone_step_is_the_backward_of_all_outputs_means():
    """backbone_step: the gradient is that of the sum of every output's
    mean (float64, by hand: d/dw of mean(xw) + mean((xw)^2)), accumulated
    over calls; the forward runs under the autocast dtype given (a bfloat16
    product) and without it otherwise; backward=False is a forward without
    autograd that leaves the gradients alone."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, generator=gen)
    model = _TwoMaps()
    outs = gpu_check.backbone_step(model, x)
    xd, wd = x.double(), model.w.detach().double()
    y = xd @ wd
    expected = xd.T @ (torch.ones_like(y) + 2 * y) / y.numel()
    torch.testing.assert_close(
        model.w.grad.double(), expected, rtol=1e-5, atol=1e-6)
    assert [o.dtype for o in outs] == [torch.float32] * 2
    gpu_check.backbone_step(model, x)  # accumulates
    torch.testing.assert_close(
        model.w.grad.double(), 2 * expected, rtol=1e-5, atol=1e-6)
    before = model.w.grad.clone()
    outs = gpu_check.backbone_step(model, x, backward=False)
    assert not any(o.requires_grad for o in outs)
    assert torch.equal(model.w.grad, before)
    outs = gpu_check.backbone_step(model, x, torch.bfloat16)
    assert outs[0].dtype == torch.bfloat16
    assert model.seen == [(False, True), (False, True), (False, False),
                          (True, True)]


def test_train_step_is_median_after_warmup(tmp_path, monkeypatch):
    """The backbone training-step column: train_warmup untimed steps, then
    the median of train_repeats timed ones (one slow first step, as
    cuDNN's autotuning makes it, does not move the figure); the model is
    left in eval mode without gradients."""
    settings = gpu_check.Settings(quick=True)
    settings.train_warmup, settings.train_repeats = 2, 3
    check = gpu_check.GpuCheck(
        'cpu', str(tmp_path), settings, log=lambda msg: None)
    durations = [9.0, 1.0, 0.008, 0.004, 0.002]
    now = [0.0]
    model = torch.nn.Conv2d(3, 4, 3)
    calls = []

    def forward_hook(module, args, out):
        calls.append(module.training)
        now[0] += durations[len(calls) - 1]

    model.register_forward_hook(forward_hook)
    monkeypatch.setattr(time, 'perf_counter', lambda: now[0])
    # the throughput section's module times the steps
    monkeypatch.setattr(
        gpu_check.throughput, 'time_steps',
        functools.partial(gpu_check.time_steps, clock=lambda: now[0]))
    wrapped = lambda x: [model(x)]  # noqa: E731 (outputs as a list)
    holder = torch.nn.Module()
    holder.forward = wrapped
    holder.add_module('conv', model)
    out = check._train_step_memory(holder, torch.randn(1, 3, 8, 8), None)
    assert calls == [True] * 5  # 2 warm-ups + 3 timed, in train mode
    assert out['step_all_ms'] == pytest.approx([8.0, 4.0, 2.0])
    assert out['step_ms'] == pytest.approx(4.0)
    assert not holder.training and model.weight.grad is None


def test_cudnn_benchmark_is_set_per_section():
    before = torch.backends.cudnn.benchmark
    try:
        assert gpu_check.set_cudnn_benchmark('throughput') is True
        assert torch.backends.cudnn.benchmark is True
        assert gpu_check.set_cudnn_benchmark('maskrcnn') is False
        assert torch.backends.cudnn.benchmark is False
        assert gpu_check.CUDNN_BENCHMARK['variants'] is True
    finally:
        torch.backends.cudnn.benchmark = before


def test_variants_markdown_lists_every_core():
    """The variants table: one line per row, errors and skips as text."""
    from mmrest.backbones import kernels
    rows = [
        dict(
            kind='variant',
            model='rest_small',
            core=c,
            err_fp32=1e-6,
            grad_err_fp32=2e-6,
            err_float16=1e-3,
            err_bfloat16=1e-2,
            **{'pass': True},
            train_float16_step_ms=120.0,
            train_bfloat16_step_ms=121.0,
            train_float16_step_peak_MiB=3000.0,
            small_fp16_img_s=5e3) for c in kernels.EMSA_CORES[:-1]
    ]
    rows.append(
        dict(
            kind='variant',
            model='rest_small',
            core='literal_compiled',
            skipped='--compile-backend off'))
    rows.append(
        dict(
            kind='variant',
            model='swin_t',
            core=None,
            error='RuntimeError: boom'))
    md = gpu_check.to_markdown(
        dict(
            meta={},
            sections=dict(
                variants=dict(
                    status='ok',
                    rows=rows,
                    settings=dict(
                        train='2x3x800x1344',
                        train_amp=['float16', 'bfloat16'])))))
    lines = [
        ln for ln in md.splitlines()
        if ln.startswith('| rest_small') or ln.startswith('| swin_t')
    ]
    assert len(lines) == len(rows)
    assert '| rest_small | sdpa | 1e-06 | 2e-06 | 0.001 | 0.01 | yes | 120.0' \
        in md
    assert 'skipped: --compile-backend off' in lines[-2]
    assert 'error: RuntimeError' in lines[-1]
    width = {ln.count('|') for ln in md.splitlines() if ln.startswith('|')}
    assert len(width) == 1, width  # every line of the table has all cells


def test_markdown_tables_keep_their_columns_on_error_rows():
    """Every table of the report has as many cells in each row as in its
    header, for rows with figures, with a failed figure and with a failed
    or skipped row; a failed figure's cell names its error; the
    throughput table calls float16 'fp16'; the variants' SDPA backends are
    one line after their table."""
    bad = dict(error='RuntimeError: boom')
    late = dict(skipped='not started: deadline')
    thr = dict(
        kind='throughput',
        model='ok',
        params_M=13.7,
        small_fp32_img_s=100.0,
        small_fp16_error='RuntimeError: no fp16 here',
        large_fp32_ms=9.5,
        large_fp16_ms=8.0,
        train_fp32_step_ms=50.0,
        train_amp_error='OutOfMemoryError: 2 GiB',
        train_fp32_step_peak_MiB=100.0)
    sections = dict(
        throughput=dict(
            settings=dict(amp='float16', small='S', large='L'),
            rows=[thr,
                  dict(model='bad', **bad),
                  dict(model='late', **late)]),
        maskrcnn=dict(rows=[
            dict(
                model='m',
                params_M=44.0,
                iter_ms=200.0,
                skipped_steps=0,
                loss_last=2.5),
            dict(model='bad', **bad)
        ]),
        syncbn=dict(rows=[
            dict(
                model='m',
                norms=['BN'],
                grads_finite=True,
                train_err_vs_bn=0.0,
                eval_err_vs_bn=0.0),
            dict(model='bad', **bad)
        ]),
        compile=dict(
            settings=dict(backend='inductor'),
            rows=[
                dict(
                    model='rest_small',
                    compile_s=40.0,
                    eager_ms=9.0,
                    compiled_ms=6.0,
                    speedup=1.5,
                    err_vs_eager=1e-6),
                dict(model='bad', **bad)
            ]))
    sections['variants'] = dict(
        settings=dict(train_amp=['float16']),
        rows=[
            dict(
                kind='variant',
                model='rest_small',
                core='maps',
                err_fp32=1e-7,
                grad_err_fp32=1e-7,
                err_float16=1e-3,
                train_float16_error='RuntimeError: no kernel'),
            dict(kind='variant', model='rest_small', core='triton', **bad),
            dict(kind='sdpa_backends', backends=dict(C128_math='ok'))
        ])
    md = gpu_check.to_markdown(dict(meta={}, sections=sections))
    tables, table = [], []
    for line in md.splitlines() + ['']:
        if line.startswith('|'):
            table.append(line.count('|'))
        elif table:
            tables.append(table)
            table = []
    assert len(tables) == 5, md
    for table in tables:
        assert len(set(table)) == 1 and len(table) >= 4, (table, md)
    assert '| S fp16 img/s |' in md and '| train step fp16 ms |' in md
    assert 'error: RuntimeError: no fp16 here' in md
    assert 'error: OutOfMemoryError: 2 GiB' in md
    assert 'error: RuntimeError: no kernel' in md
    # the backends' line once, for the one row that has them
    assert md.count('SDPA backends') == 1 and 'C128_math: ok' in md


def test_markdown_header_lines_and_gradscaler_steps():
    """The report's header names the ops shim when one is recorded and the
    EMSA cores chosen (with what was excluded, or 'none'); the GradScaler
    table counts its steps."""
    meta = dict(
        ops_shim=dict(used=True, backend='torch', reason='forced'),
        emsa_core=dict(
            requested='auto',
            chosen='sdpa',
            by='train_float16_step_ms',
            step_ms=dict(chunked=2.0, sdpa=1.0),
            excluded={},
            inference=dict(
                chosen='chunked',
                by='ms',
                ms=dict(chunked=1.0),
                excluded=dict(maps='slower'))))
    steps = dict(
        kind='amp_steps',
        model='rest_small',
        path='fast',
        input='2x3x64x64',
        steps=[{}, {}, {}],
        scale=1024.0,
        skipped_steps=0,
        nonfinite_grads=0,
        **{'pass': True})
    md = gpu_check.to_markdown(
        dict(
            meta=meta,
            sections=dict(equality=dict(status='ok', rows=[steps]))))
    assert 'mmcv ops shim: used, torch (forced)' in md
    assert 'sdpa 1.0; excluded: none' in md
    assert 'chunked 1.0; excluded: maps (slower)' in md
    assert '| fp16 + GradScaler, 3 steps |' in md
    assert 'mmcv ops shim' not in gpu_check.to_markdown(dict(meta={}))


def _core_row(core, passes=True, **figures):
    """A variants row of ResT-Small with ``core``."""
    return dict(
        kind='variant',
        model='rest_small',
        core=core,
        **{'pass': passes},
        **figures)


def _variant(core, ms, mib, passes=True, **extra):
    return _core_row(
        core,
        passes,
        train_float16_step_ms=ms,
        train_float16_step_peak_MiB=mib,
        **extra)


def test_choose_core_takes_the_fastest_passing_core_within_memory():
    """--emsa-core auto: the fastest fp16 training step among the cores
    that pass and need no more memory than the default; the default
    otherwise."""
    settings = dict(train_amp=['float16', 'bfloat16'])
    rows = [
        dict(
            kind='variant',
            model='rest_small_literal',
            core=None,
            train_float16_step_ms=1.0),  # not a core
        dict(
            kind='variant',
            model='swin_t',
            core=None,
            train_float16_step_ms=1.0),
        _variant('chunked', 120.0, 3000.0, passes=None),  # no literal bar
        _variant('sdpa', 90.0, 2900.0),
        _variant('sdpa_padded', 80.0, 3100.0),  # faster, more memory
        _variant('literal', 50.0, 2000.0, passes=False),  # inexact
        dict(
            kind='variant',
            model='rest_small',
            core='triton',
            error='RuntimeError: boom'),
        _variant('sdpa_lse_kernel', 95.0, 3000.0),
    ]
    # ResT-Small's variant rows only: another model's or another kind of
    # row of a core is not a candidate
    others = [
        dict(_variant('maps', 1.0, 10.0), model='rest_large'),
        dict(_variant('maps', 1.0, 10.0), kind='profile'),
    ]
    choice = gpu_check.choose_core(dict(settings=settings, rows=rows + others))
    assert choice['chosen'] == 'sdpa' and choice['default'] == 'chunked'
    assert choice['by'] == 'train_float16_step_ms'
    assert choice['step_ms'] == dict(
        chunked=120.0, sdpa=90.0, sdpa_lse_kernel=95.0)
    assert set(choice['excluded']) == {'sdpa_padded', 'literal', 'triton'}
    assert '3100 MiB > 3000 MiB' in choice['excluded']['sdpa_padded']
    assert 'boom' in choice['excluded']['triton']
    # none faster: the default
    rows[3]['train_float16_step_ms'] = 130.0
    rows[-1]['train_float16_step_ms'] = 120.5
    assert gpu_check.choose_core(dict(settings=settings,
                                      rows=rows))['chosen'] == 'chunked'
    # the default without figures: kept, whatever the others measured
    del rows[2]['train_float16_step_ms']
    choice = gpu_check.choose_core(dict(settings=settings, rows=rows))
    assert choice['chosen'] == 'chunked' and choice['step_ms'] == {}
    assert "'chunked' has no train_float16_step_ms" in choice['reason']
    # quick mode (float32 only) compares the float32 step
    quick = [
        _core_row(c, train_float32_step_ms=ms)
        for c, ms in (('chunked', 5.0), ('triton', 4.0))
    ]
    choice = gpu_check.choose_core(
        dict(settings=dict(train_amp=['float32']), rows=quick))
    assert choice['chosen'] == 'triton'
    assert choice['by'] == 'train_float32_step_ms'


def _inference(core, small, large, passes=True, **extra):
    return _core_row(
        core, passes, small_fp16_ms=small, large_fp16_ms=large, **extra)


def test_choose_core_for_inference_by_both_sizes():
    """--emsa-core auto for inference: the least geometric mean of the
    fp16 inference times at both sizes among the passing cores, chosen
    apart from the training step (its memory does not count); float32 in
    quick mode; the default when it has no figures."""
    settings = dict(train_amp=['float16', 'bfloat16'])
    rows = [
        _inference('chunked', 40.0, 10.0, passes=None),  # 20.0
        _inference('sdpa', 10.0, 30.0, train_float16_step_ms=50.0),  # 17.3
        _inference('triton', 20.0, 18.0, train_float16_step_ms=40.0),  # 19
        _inference('literal', 1.0, 1.0, passes=False),  # inexact
        _inference('sdpa_padded', 30.0, None, large_fp16_error='OOM'),
        _inference(
            'sdpa_lse_kernel',
            5.0,
            5.0,
            train_float16_step_ms=10.0,
            train_float16_step_peak_MiB=9e9),  # memory: training only
    ]
    rows[0].update(train_float16_step_ms=60.0, train_float16_step_peak_MiB=3e3)
    choice = gpu_check.choose_core(dict(settings=settings, rows=rows))
    assert choice['chosen'] == 'triton'  # with autograd: the step
    inf = choice['inference']
    assert inf['chosen'] == 'sdpa_lse_kernel' and inf['default'] == 'chunked'
    assert inf['by'] == 'geometric mean of small_fp16_ms and large_fp16_ms'
    assert inf['ms'] == pytest.approx(
        dict(
            chunked=20.0, sdpa=300**0.5, triton=360**0.5, sdpa_lse_kernel=5.0))
    assert set(inf['excluded']) == {'literal', 'sdpa_padded'}
    assert inf['excluded']['sdpa_padded'] == 'OOM'
    rows.pop()
    choice = gpu_check.choose_core(dict(settings=settings, rows=rows))
    assert choice['inference']['chosen'] == 'sdpa'
    # the default of each mode is the device's own
    choice = gpu_check.choose_core(
        dict(settings=settings, rows=rows), 'triton', 'sdpa')
    assert choice['default'] == 'triton'
    assert choice['inference']['default'] == 'sdpa'
    # none faster: the default; without figures: kept
    rows[1]['small_fp16_ms'] = rows[2]['small_fp16_ms'] = 100.0
    assert gpu_check.choose_core(dict(
        settings=settings, rows=rows))['inference']['chosen'] == 'chunked'
    del rows[0]['large_fp16_ms']
    inf = gpu_check.choose_core(dict(settings=settings,
                                     rows=rows))['inference']
    assert inf['chosen'] == 'chunked' and inf['ms'] == {}
    assert "'chunked' has no geometric mean" in inf['reason']
    # quick mode: no autocast, the float32 times
    quick = [
        _core_row(c, small_fp32_ms=ms, large_fp32_ms=ms)
        for c, ms in (('chunked', 5.0), ('sdpa', 4.0))
    ]
    inf = gpu_check.choose_core(
        dict(settings=dict(train_amp=['float32']), rows=quick))['inference']
    assert inf['chosen'] == 'sdpa'
    assert inf['by'] == 'geometric mean of small_fp32_ms and large_fp32_ms'


def test_a_core_passes_within_the_literal_paths_error():
    """The bar a core must clear to be chosen, against the literal path's
    errors (float64 references): in float32, output and gradient errors
    at most 4 x the literal's + 100 float32 eps; under each autocast dtype
    other than float32, the output error at most 1.5 x the literal's +
    1e-3; finite gradients. At the bound passes, above it fails."""
    from mmrest_tools.gpu_check.variants import _passes
    eps = torch.finfo(torch.float32).eps
    lit = dict(
        err_fp32=1e-4, grad_err_fp32=2e-4, err_float16=4e-3, err_bfloat16=2e-2)
    amps = [torch.float16, torch.bfloat16]
    at_bound = dict(
        err_fp32=4 * 1e-4 + 100 * eps,
        grad_err_fp32=4 * 2e-4 + 100 * eps,
        err_float16=1.5 * 4e-3 + 1e-3,
        err_bfloat16=1.5 * 2e-2 + 1e-3,
        grads_finite=True)
    assert _passes(at_bound, lit, amps)
    for key, over in (('err_fp32', 4.5e-4), ('grad_err_fp32', 9e-4),
                      ('err_float16', 7.5e-3), ('err_bfloat16', 3.2e-2)):
        # just above its bound; far below a bound with '/' for '*'
        assert at_bound[key] < over
        assert not _passes(dict(at_bound, **{key: over}), lit, amps), key
    assert not _passes(dict(at_bound, grads_finite=False), lit, amps)
    # float32 in the autocast list (quick mode) adds no autocast bar
    assert _passes(
        dict(at_bound, err_float16=1.), lit, [torch.float32, torch.bfloat16])
    assert not _passes(
        dict(at_bound, err_bfloat16=1.), lit, [torch.float32, torch.bfloat16])


def test_choose_core_compares_the_first_autocast_dtype():
    """Autocast dtypes listed after float32: the training step compared
    is the first other dtype's."""
    rows = [  # by the float32 step, 'chunked' would be the faster
        _core_row(c, train_float16_step_ms=ms, train_float32_step_ms=1 / ms)
        for c, ms in (('chunked', 5.0), ('sdpa', 4.0))
    ]
    choice = gpu_check.choose_core(
        dict(settings=dict(train_amp=['float32', 'float16']), rows=rows))
    assert choice['by'] == 'train_float16_step_ms'
    assert choice['chosen'] == 'sdpa'


def test_bad_arguments():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--sections', 'equality,speed'])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--device', 'tpu'])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(['--emsa-core', 'flash'])
    with pytest.raises(SystemExit):  # auto chooses from the variants
        gpu_check.parse_args(
            ['--sections', 'throughput', '--emsa-core', 'auto'])
    assert gpu_check.parse_args(['--emsa-core', 'sdpa']).emsa_core == 'sdpa'
    for bad in ('chunked,flash', ','):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(['--variant-cores', bad])
    assert gpu_check.parse_args([]).variant_cores is None
    # auto needs the variants section; the other choices do not
    assert gpu_check.parse_args(['--sections',
                                 'throughput']).sections == ['throughput']
    assert gpu_check.parse_args(
        ['--sections', 'variants,throughput', '--emsa-core',
         'auto']).emsa_core == 'auto'


def test_cuda_check_without_cuda_is_refused(monkeypatch, tmp_path):
    """A check on 'cuda' where torch sees no CUDA device stops at once,
    saying so, and writes nothing; 'cpu' is always taken."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(RuntimeError, match='torch sees no CUDA device'):
        gpu_check.GpuCheck('cuda', str(tmp_path / 'cuda'),
                           gpu_check.Settings(quick=True))
    assert not (tmp_path / 'cuda').exists()
    _quick_check(tmp_path / 'cpu')
    assert (tmp_path / 'cpu').is_dir()


def test_full_settings_measure_what_the_issue_and_the_configs_say(tmp_path):
    """The device run's sizes are the comparison's (224x224 batch 64,
    800x1344 batch 1, training at 2x3x800x1344 in float16 autocast, medians
    after warm-ups), and Mask R-CNN's are the three configs' own."""
    s = gpu_check.Settings(quick=False)
    assert s.small == (64, 3, 224, 224)
    assert s.large == (1, 3, 800, 1344)
    assert s.train == (2, 3, 800, 1344) == s.train_sizes[0]
    assert s.amp is torch.float16 and s.amp_name == 'float16'
    assert set(s.eq_amp) == {torch.float16, torch.bfloat16}
    assert set(s.eq_modes) == {
        'eval_nograd', 'eval_grad', 'train_grad', 'train_grad_cp'
    }
    # medians of several timed calls, each after untimed warm-ups
    for warmup, repeats in ((s.warmup, s.repeats),
                            (s.train_warmup, s.train_repeats), (s.mr_warmup,
                                                                s.mr_iters)):
        assert warmup >= 1 and repeats >= 3
    assert {'rest_small', 'rest_small_literal', 'restv2_tiny',
            'swin_t'} <= set(s.throughput_models)
    check = gpu_check.GpuCheck('cpu', str(tmp_path), s, log=lambda m: None)
    for name, path in gpu_check.MASKRCNN_MODELS:
        cfg, _ = check._load_det_config(path)
        assert s.mr_batch == cfg.train_dataloader.batch_size, name
        assert gpu_check.CUDNN_BENCHMARK['maskrcnn'] == \
            cfg.env_cfg.cudnn_benchmark, name
        # the largest image of the training pipeline, (H, W)
        resize = [
            t for t in cfg.train_dataloader.dataset.pipeline
            if 'Resize' in t['type']
        ][0]
        scales = resize.get('scales', [resize.get('scale')])
        assert s.mr_image == (max(min(x) for x in scales),
                              max(max(x) for x in scales)), name
        # the padded batches of that pipeline: at most the padded largest
        div = cfg.model.data_preprocessor.pad_size_divisor
        padded = [-(-v // div) * div for v in s.mr_image]
        for size in s.train_sizes:
            assert size[:2] == (s.mr_batch, 3), name
            assert size[2] % div == 0 and size[3] % div == 0, name
            assert size[2] <= padded[0] and size[3] <= padded[1], name
        assert list(s.train_sizes[0][2:]) == padded


def test_throughput_settings_name_both_emsa_cores(tmp_path, monkeypatch):
    """The throughput section records the EMSA core of its training steps
    and the one of its inference, each the one in force for that kind of
    call (here two different ones), with its sizes and counts."""
    from mmrest.backbones import kernels

    # the section sets cuDNN's autotuning; restored after the test
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    check = _quick_check(tmp_path)
    sec = dict(rows=[])
    with kernels.use_emsa_core('maps', inference='chunked'):
        check.throughput(sec, names=())
    settings = sec['settings']
    assert (settings['emsa_core'], settings['emsa_inference_core']) == \
        ('maps', 'chunked')
    assert settings['repeats'] == check.s.repeats and sec['rows'] == []
    assert settings['cudnn_benchmark'] is True


def test_throughput_row_figures_and_what_each_timed(tmp_path, monkeypatch):
    """A throughput row: parameters in millions; per input size and
    precision the median of the timed calls and images a second (batch x
    1000 / median ms); inference without autograd, its 'fp16' rows under
    the autocast dtype and its 'fp32' rows not; the training steps in
    train mode with autograd, the 'amp' one under autocast and the 'fp32'
    one not. A stand-in backbone records each call (a matrix product's
    dtype tells autocast); the inference timer gives fixed figures."""
    from mmrest_tools.gpu_check import throughput
    check = _quick_check(tmp_path)
    s = check.s
    s.small, s.large, s.train = (4, 3, 8, 8), (1, 3, 8, 12), (2, 3, 8, 12)
    s.amp = torch.bfloat16  # the CPU's autocast dtype
    calls = []

    class Net(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2, 2))

        def train(self, mode=True):  # as mmdet's Swin: returns None
            super().train(mode)

        def forward(self, x):
            y = x.flatten(2)[..., :2] @ self.w
            calls.append(
                (x.shape[0], torch.is_grad_enabled(), self.training, y.dtype))
            return [y]

    monkeypatch.setattr(throughput, 'build_backbone',
                        lambda name, quick: Net())
    figures = iter([[4.0, 2.0, 3.0], [5.0] * 3, [8.0, 9.0, 10.0], [2.0] * 3])

    def time_calls(fn, device, repeats, warmup):
        fn()
        return next(figures)

    monkeypatch.setattr(throughput, 'time_calls', time_calls)
    row = check._throughput_one('net')
    assert row['params_M'] == pytest.approx(4 / 1e6)
    for tag, ms, batch in (('small_fp32', 3.0, 4), ('small_fp16', 5.0, 4),
                           ('large_fp32', 9.0, 1), ('large_fp16', 2.0, 1)):
        assert row[f'{tag}_ms'] == ms, tag
        assert row[f'{tag}_img_s'] == pytest.approx(batch * 1e3 / ms), tag
    fp32, bf16 = torch.float32, torch.bfloat16
    assert calls[:4] == [(4, False, False, fp32), (4, False, False, bf16),
                         (1, False, False, fp32), (1, False, False, bf16)]
    steps = s.train_warmup + s.train_repeats
    assert calls[4:] == [(2, True, True, fp32)] * steps + \
        [(2, True, True, bf16)] * steps
    assert len(row['train_fp32_step_all_ms']) == s.train_repeats
    assert 'train_amp_step_ms' in row and 'train_amp_error' not in row


@pytest.mark.parametrize('requested, core', [('maps', 'maps'),
                                             ('default', 'chunked')])
def test_sections_run_in_order_under_the_requested_core(requested, core):
    """Without --emsa-core auto: the sections in the check's order (the
    further throughput models after the variants; syncbn skipped on the
    CPU; compile skipped when off), every one but compile under the
    requested EMSA core, or the device's defaults for 'default' (the CPU:
    'chunked' both ways); the choice recorded in meta."""
    from mmrest.backbones import kernels
    from mmrest_tools.gpu_check import cli
    ran = []

    class Check:
        device = torch.device('cpu')
        s = types.SimpleNamespace(
            throughput_models=('a', ), more_models=('b', ))
        results = dict(meta={}, sections={})
        log = staticmethod(lambda msg: None)
        equality = syncbn = maskrcnn = throughput = variants = None

        def run_section(self, name, fn):
            ran.append((name, kernels.emsa_core(self.device),
                        kernels.emsa_core(self.device, autograd=False)))

        def skip_section(self, name, why):
            ran.append((name, 'skipped', why))

    check = Check()
    args = types.SimpleNamespace(
        sections=list(gpu_check.SECTIONS),
        emsa_core=requested,
        compile_backend='off')
    cli._run_sections(check, args)
    under = (core, core)
    assert ran == [('equality', ) + under,
                   ('syncbn', 'skipped', 'SyncBatchNorm runs on GPUs only'),
                   ('throughput', ) + under, ('maskrcnn', ) + under,
                   ('variants', ) + under, ('throughput', ) + under,
                   ('compile', 'skipped', '--compile-backend off')]
    assert check.results['meta']['emsa_core'] == dict(
        requested=requested, chosen=core, inference=dict(chosen=core))


def test_prepare_environment_records_the_ops_shim(monkeypatch, tmp_path):
    """The check asks for the ops shim as the environment says unless
    --force-ops-shim forces it, and records a failed install as not
    used, with the error."""
    from mmrest_tools.gpu_check import cli
    asked = []

    def install(force, device):
        asked.append(force)
        if force:
            raise RuntimeError('mmcv.ops imported already')
        return dict(used=False, reason='mmcv._ext imports')

    monkeypatch.setattr(ops_shim, 'install', install)
    monkeypatch.setattr(ops_shim, 'patch_package_lookup', lambda: None)
    check = _quick_check(tmp_path)
    meta = check.results['meta']
    for argv in ([], ['--force-ops-shim']):
        cli._prepare_environment(check,
                                 gpu_check.parse_args(argv + ['--quick']))
        if argv:
            assert meta['ops_shim']['used'] is False
            assert 'mmcv.ops imported already' in meta['ops_shim']['error']
        else:
            assert meta['ops_shim'] == dict(
                used=False, reason='mmcv._ext imports')
    assert asked == [None, True]
    assert meta['device']['type'] == 'cpu'


def test_variant_cores_reach_the_settings(monkeypatch):
    """``--variant-cores`` lists the cores of the variants section (a short
    device run): parsed in order and given to the check's settings; without
    it, all of them."""
    from mmrest.backbones import kernels
    from mmrest_tools.gpu_check import cli
    seen = []

    class Stop(Exception):
        pass

    def fake_check(device, out, settings, **kw):
        seen.append(settings.variant_cores)
        raise Stop

    monkeypatch.setattr(cli, 'GpuCheck', fake_check)
    for argv, want in ((['--variant-cores', ' triton, chunked'],
                        ('triton', 'chunked')), ([], kernels.EMSA_CORES)):
        with pytest.raises(Stop):
            cli.main(['--device', 'cpu'] + argv)
        assert seen.pop() == tuple(want)


def _run_tool(argv: list, timeout: float, **env: str):
    """``python <argv>`` (a tool and its arguments) from the repository in
    a child process (warnings off, ``env`` added); asserts it succeeded and
    returns it (:func:`_helpers.run_program`)."""
    return run_program([sys.executable, *argv],
                       timeout=timeout,
                       env=dict(PYTHONWARNINGS='ignore', **env))


# --------------------------------------------------------------------------
# the whole check, quick mode on the CPU, ops shim forced in
# --------------------------------------------------------------------------
def test_quick_cpu_run_with_ops_shim(tmp_path):
    # no deadline: every row runs however loaded the CPU (the deadline's
    # logic: test_sections_are_independent_and_saved)
    proc = _run_tool([
        'tools/gpu_check.py', '--device', 'cpu', '--quick', '--deadline-s',
        '100000', '--emsa-core', 'auto', '--out',
        str(tmp_path)
    ],
                     timeout=1500,
                     MMREST_FORCE_OPS_SHIM='1')
    res = json.loads((tmp_path / 'gpu_check.json').read_text())
    meta = res['meta']
    assert meta['argv'] == [
        '--device', 'cpu', '--quick', '--deadline-s', '100000', '--emsa-core',
        'auto', '--out',
        str(tmp_path)
    ]
    assert meta['ops_shim']['used'] is True
    assert meta['ops_shim']['backend'] in ('torch', 'torchvision')
    secs = res['sections']
    for name in ('equality', 'throughput', 'maskrcnn', 'variants'):
        assert secs[name]['status'] not in ('error', 'skipped'), secs[name]
    assert secs['compile']['status'] == 'skipped'
    assert secs['syncbn'] == dict(
        status='skipped', error='SyncBatchNorm runs on GPUs only', rows=[])
    md = (tmp_path / 'gpu_check.md').read_text()
    skipped = md.split(
        '### syncbn: skipped (SyncBatchNorm runs on GPUs '
        'only)\n', 1)[1]
    assert skipped.startswith('\n### '), md  # no empty table

    eq = [r for r in secs['equality']['rows'] if r['kind'] == 'equality']
    # quick mode: one size, two modes (eval without autograd, train with
    # autograd and with_cp), float32 and fp16
    assert len(eq) == 1 * 2 * 2
    fp32 = [r for r in eq if r['dtype'] == 'float32']
    for r in fp32:  # float32: both paths close to the float64 reference
        assert 'error' not in r, r
        assert 0 < r['err_literal'] < 1e-4 and r['err_fast'] < 1e-4, r
        assert r['err_fast'] <= 4 * r['err_literal'] + gpu_check.FP32_FLOOR
        if r['mode'] != 'eval_nograd':  # gradients measured, both paths
            # (float32 against float64: 0 would mean nothing compared)
            assert r['grad_err_fast'] > 0 and r['grad_err_literal'] > 0
    for r in eq:  # every low-precision row has figures (or, where the
        # CPU has no float16 autocast, an error text)
        if CPU_FLOAT16_AUTOCAST:
            assert 'error' not in r and r['err_fast'] > 0, r
        else:
            assert 'err_fast' in r or r.get('error'), r
    steps = [r for r in secs['equality']['rows'] if r['kind'] == 'amp_steps']
    assert {r['path'] for r in steps} == {'fast', 'literal'}
    lit = [r for r in steps if r['path'] == 'literal'][0]
    if CPU_GRAD_SCALER:
        assert len(lit['steps']) == 1 and 'pass' in lit, lit
    else:  # torch < 2.3 has no GradScaler for the CPU: the row says so
        assert 'needs torch >= 2.3' in lit['error'], lit

    tp = {r['model']: r for r in secs['throughput']['rows']}
    assert set(tp) == set(gpu_check.THROUGHPUT_MAIN)
    for name in ('rest_small_literal', 'swin_t', 'resnet50'):
        r = tp[name]
        assert 'error' not in r, r
        assert r['small_fp32_img_s'] > 0 and r['large_fp32_ms'] > 0, r
        assert r['train_fp32_step_ms'] > 0, r
        # a median over the timed steps, after warm-ups
        assert len(r['train_fp32_step_all_ms']) == 2, r
    assert secs['throughput']['settings']['cudnn_benchmark'] is True
    assert secs['maskrcnn']['settings']['cudnn_benchmark'] is False

    mr = {r['model']: r for r in secs['maskrcnn']['rows']}
    assert set(mr) == {
        'mask_rcnn_rest_small', 'mask_rcnn_restv2_tiny', 'mask_rcnn_swin_t'
    }
    for r in mr.values():  # forward and backward through the shim's ops
        assert 'error' not in r, r
        assert r['iter_ms'] > 0 and r['iters'][0]['loss'] > 0, r
        # quick mode trains without autocast, so without loss scaling
        assert r['loss_scale'] == 1.0 and r['skipped_steps'] == 0, r
        # the config's optimizer, a group a parameter as mmengine builds it
        assert r['optimizer']['type'] == 'AdamW', r
        assert r['optimizer']['groups'] > 100, r
    # the config's gradient clipping (detectron2's, ResT-Small's only)
    from mmengine.config import Config

    from mmrest_tools.gpu_check.settings import REST_MASKRCNN_CONFIG
    clip = Config.fromfile(REST_MASKRCNN_CONFIG).optim_wrapper
    assert mr['mask_rcnn_rest_small']['clip_grad'] == clip.clip_grad != {}
    from mmrest.backbones import emsa_triton, kernels
    var = secs['variants']['rows']
    backends = [r for r in var if r['kind'] == 'sdpa_backends']
    assert len(backends) == 1 and 'error' not in backends[0], backends
    # on the CPU the math backend takes both; flash needs one head size
    found = backends[0]['backends']
    assert found['C128_h2_vd_math'] == 'ok' and found['C512_h8_vC_math'] \
        == 'ok', found
    var = [r for r in var if r['kind'] == 'variant']
    assert [
        (r['model'], r['core']) for r in var
    ] == ([('rest_small_literal', None)] + [
        ('rest_small', c)
        for c in kernels.EMSA_CORES if c not in ('triton', 'literal_compiled')
    ] + [('restv2_tiny', None), ('swin_t', None), ('rest_small', 'triton'),
         ('rest_small', 'literal_compiled')])
    for r in var:
        if r['core'] == 'literal_compiled':  # --compile-backend off
            assert 'skipped' in r
            continue
        if r['core'] == 'sdpa_lse_kernel' and not \
                kernels.cpu_flash_attention_available():  # torch 2.1
            assert 'no CPU flash attention kernel' in r['error'], r
            continue
        if r['core'] == 'triton' and not emsa_triton.available():
            assert 'needs triton >= 3' in r['error'], r  # torch 2.1's 2.1
            continue
        assert 'error' not in r, r
        assert r['train_float32_step_ms'] > 0 and r['large_fp32_ms'] > 0, r
        if r['model'] == 'rest_small':  # each core as exact as the literal
            assert r['pass'] is True, r
            # (float32 against float64 is never exact: an error of 0
            # would mean nothing was compared)
            assert 0 < r['err_fp32'] < 1e-4, r
            assert 0 < r['grad_err_fp32'] < 1e-4, r
    # --emsa-core auto: the variants ran first, then the other sections
    # with the fastest core that passes (CPU: no peak memory to compare)
    assert list(secs)[0] == 'variants'
    choice = meta['emsa_core']
    passing = {
        r['core']: r['train_float32_step_ms']
        for r in var if r['model'] == 'rest_small' and r.get('pass') is True
    }
    passing['chunked'] = [r for r in var if r['core'] == 'chunked'
                          ][0]['train_float32_step_ms']
    assert choice['requested'] == 'auto' and choice['step_ms'] == passing
    assert choice['chosen'] == min(passing, key=passing.get)
    for name in ('throughput', 'maskrcnn'):
        assert secs[name]['settings']['emsa_core'] == choice['chosen']
    # and for inference, the least geometric mean of the inference times
    inference = {
        r['core']: (r['small_fp32_ms'] * r['large_fp32_ms'])**0.5
        for r in var if r['model'] == 'rest_small' and r['core'] in passing
    }
    assert choice['inference']['ms'] == pytest.approx(inference)
    assert choice['inference']['chosen'] == min(inference, key=inference.get)
    assert secs['throughput']['settings']['emsa_inference_core'] == \
        choice['inference']['chosen']
    md = (tmp_path / 'gpu_check.md').read_text()
    for header in ('### equality', '### throughput', '### maskrcnn',
                   '### variants'):
        assert header in md
    assert (f'sections but variants and compile: {choice["chosen"]} with '
            f'autograd, {choice["inference"]["chosen"]} for inference') in md
    assert md.strip() in proc.stdout  # the table is printed last


# --------------------------------------------------------------------------
# the GPU experiments beside the check (mmrest_tools.gpu_profile and
# gpu_variants, behind tools/device/*.py)
# --------------------------------------------------------------------------
def test_multi_scale_training_of_the_compile_section(golden):
    """The compile section's training steps at several sizes (the golden
    ResT, ``aot_eager`` on the CPU for speed): one static graph, then one
    symbolic graph for the later sizes and none while timed, the compiled
    gradients as the eager ones at every size, a timing per size; its
    Markdown has one line per size."""
    from mmrest_tools.gpu_check.measure import grad_error
    from mmrest_tools.gpu_check.report import _md_multi_scale
    from mmrest_tools.gpu_check.torch_compile import (multi_scale_inputs,
                                                      multi_scale_training,
                                                      training_loss)
    sizes = [(1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 80, 80)]
    model = golden_model(golden).train()
    # the bar per size, from the literal float32 step's gradient error
    # against float64: compiled and eager each within the float32 bar of
    # tests/_helpers.py (GRADIENT_FACTOR, the floor), so their difference
    # within twice that
    depth = sum(stage_depths(model))
    bounds = []
    for x in multi_scale_inputs(sizes, torch.device('cpu')):
        grads = []
        for net, inp in ((to_literal(model), x), (float64_literal(model),
                                                  x.double())):
            training_loss(net(inp)).backward()
            grads.append({n: p.grad for n, p in net.named_parameters()})
        bounds.append(
            2 * (GRADIENT_FACTOR * grad_error(*grads) + float32_floor(depth)))
    ms = multi_scale_training(
        model,
        torch.device('cpu'),
        sizes,
        'aot_eager',
        repeats=1,
        warmup=0,
        amp=None)
    assert ms['graphs'] == [False, True]
    assert ms['graphs_while_timed'] == 0
    assert len(ms['grad_err']) == len(sizes)
    assert all(err <= bound for err, bound in zip(ms['grad_err'], bounds)), \
        (ms['grad_err'], bounds)
    assert len(ms['eager_ms']) == len(ms['compiled_ms']) == len(sizes)
    assert all(t > 0 for t in ms['eager_ms'] + ms['compiled_ms'])
    lines = _md_multi_scale('golden', ms)
    assert '2 graphs (1 symbolic)' in lines[1]
    assert [line.split(' | ')[0] for line in lines[-len(sizes):]] == \
        ['| 1x3x64x96', '| 1x3x96x64', '| 1x3x80x80']


def test_compile_child_result_survives_a_timeout():
    """The compile child's row is its last printed result: cut short in
    the training steps, the inference figures stay and the training part
    says it timed out; with no result, the error says why."""
    from mmrest_tools.gpu_check.torch_compile import read_child_result
    first = 'COMPILE_RESULT ' + json.dumps(dict(compiled_ms=5.0))
    both = 'COMPILE_RESULT ' + json.dumps(
        dict(compiled_ms=5.0, multi_scale_training=dict(graphs=[False])))
    cut = read_child_result(f'log\n{first}\ncompiling', -9, True, 300)
    assert cut == dict(
        compiled_ms=5.0,
        multi_scale_training=dict(error='timed out after 300 s'))
    assert read_child_result(f'{first}\n{both}', 0, False, 300) == \
        json.loads(both[len('COMPILE_RESULT '):])
    assert read_child_result('Traceback', 1, False, 300)['error'] == \
        'child exited 1 without a result'
    assert read_child_result('', -9, True, 300)['error'] == \
        'timed out after 300 s'
    # finished without the training part: not a timeout
    assert read_child_result(first, 0, False, 300) == dict(compiled_ms=5.0)


def test_compile_child_is_killed_at_its_budget(tmp_path):
    """The compile child runs in its own process group, killed whole when
    its time is up; the row says it timed out, with the child's text
    output as its log."""
    check = _quick_check(tmp_path)
    row = check._compile_child('eager', 0.5)
    assert set(row) == {'error', 'log_tail'}
    assert row['error'] == 'timed out after 0 s'
    assert isinstance(row['log_tail'], str)  # read as text


def test_compile_child_in_time_gives_its_result(monkeypatch, tmp_path):
    """A child that ends within its budget: its last result as it is."""
    from mmrest_tools.gpu_check import torch_compile

    class Child:
        pid, returncode = 0, 0

        def __init__(self, *args, **kwargs):
            pass

        def communicate(self, timeout=None):
            return 'COMPILE_RESULT {"compiled_ms": 4.0}\n', None

    monkeypatch.setattr(torch_compile.subprocess, 'Popen', Child)
    check = _quick_check(tmp_path)
    assert check._compile_child('eager', 60) == dict(compiled_ms=4.0)


def test_compile_section_budget_is_what_the_deadline_leaves(
        monkeypatch, tmp_path):
    """The compile child gets the check's compile budget, or what the
    deadline leaves less 5 s (to save the results) where that is less; it
    is not started with under 30 s."""
    check = _quick_check(tmp_path)
    check.compile_budget_s = 100.0
    budgets = []
    monkeypatch.setattr(check, '_compile_child',
                        lambda backend, budget: budgets.append(budget) or {})
    for left, given in ((500.0, 100.0), (60.0, 55.0), (35.0, 30.0)):
        monkeypatch.setattr(check, 'remaining', lambda left=left: left)
        sec = dict(rows=[])
        check.compile(sec, 'eager')
        assert budgets[-1] == pytest.approx(given), left
        assert sec['settings'] == dict(backend='eager', budget_s=given)
    monkeypatch.setattr(check, 'remaining', lambda: 34.0)
    with pytest.raises(gpu_check.DeadlinePassed, match='29 s left < 30 s'):
        check.compile(dict(rows=[]), 'eager')
    assert len(budgets) == 3


def test_depthwise_by_slices_is_a_depthwise_convolution():
    """gpu_profile's candidate kernel computes what F.conv2d with one group
    per channel computes (float64, ResT's reduction and PA shapes)."""
    from mmrest_tools.gpu_profile import depthwise_by_slices
    gen = torch.Generator().manual_seed(0)
    for c, h, w, k, s, p in ((4, 17, 23, 9, 8, 4), (3, 10, 9, 5, 4, 2),
                             (2, 7, 8, 3, 1, 1)):
        x = torch.randn(2, c, h, w, generator=gen, dtype=torch.float64)
        wt = torch.randn(c, 1, k, k, generator=gen, dtype=torch.float64)
        b = torch.randn(c, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(
            depthwise_by_slices(x, wt, b, s, p),
            F.conv2d(x, wt, b, s, p, groups=c),
            rtol=1e-12,
            atol=1e-12)


def _profile_on_cpu(monkeypatch, scale=16):
    """mmrest_tools.gpu_profile set to run here as its ``--smoke`` does (the
    CPU, one timed call, no warm-up) at sizes divided by ``scale``."""
    from mmrest_tools import gpu_profile
    monkeypatch.setattr(gpu_profile, 'DEVICE', 'cpu')
    monkeypatch.setattr(gpu_profile, 'SCALE', scale)
    monkeypatch.setattr(gpu_profile, 'REPEATS', (1, 0))
    return gpu_profile


def test_triton_section_inputs(monkeypatch):
    """The triton section's inputs are ResT-Small's at batch 2 with 64
    channels a head: q (2, h, N, 64), k and v (2, h, M, 64) in the autocast
    dtype, the mixing weight and bias in float32 (the module's, under
    autocast), all requiring grad; the upstream gradient as the output."""
    gpu_profile = _profile_on_cpu(monkeypatch)
    (q, k, v, mix, bias), grad = gpu_profile._core_inputs(4, 30, 7)
    assert [tuple(t.shape)
            for t in (q, k, v, mix, bias, grad)] == [(2, 4, 30, 64),
                                                     (2, 4, 7, 64),
                                                     (2, 4, 7, 64), (4, 4),
                                                     (4, ), (2, 4, 30, 64)]
    assert [t.dtype for t in (q, k, v, mix, bias, grad)] == \
        [torch.float16] * 3 + [torch.float32] * 2 + [torch.float16]
    assert all(t.requires_grad for t in (q, k, v, mix, bias))
    # the spreads the docstring gives: queries 64 ** -0.5 (the attention's
    # scale), keys, values and the gradient 1, the mixing weight 0.5; a
    # zero bias
    (q, k, v, mix, bias), grad = gpu_profile._core_inputs(32, 30, 7)
    for t, std, tol in ((q, 64**-0.5, 0.05), (k, 1.0, 0.05), (v, 1.0, 0.05),
                        (grad, 1.0, 0.05), (mix, 0.5, 0.1)):
        assert abs(t.float().std().item() / std - 1) < tol
    assert not bias.any()
    assert [s[1:] for s in gpu_profile.TRITON_SHAPES] == \
        [(2, 16800, 1050), (4, 4200, 1050), (8, 1050, 1050)]
    # stage 3's kernels: per (batch, head) N M (C + D) products forward,
    # N M (2C + D) and N M (2C + 2D) backward; C = 4 * 64, D = 64
    per_head = 2 * 2 * 4 * 4200 * 1050
    assert gpu_profile.core_flop(4, 4200,
                                 1050) == (per_head * (256 + 64),
                                           per_head * (5 * 256 + 4 * 64))


def _run_device_script(tmp_path, script, *args, timeout=900, **extra):
    """``bash tools/device/<script> <args>`` as on the GPU machine: this
    interpreter as the device's ``python3`` (first on PATH), results under
    ``tmp/out``, wheels (if a .whl/ folder is here) into an empty
    ``tmp/site``, ``extra`` variables set; its output as text."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    python3 = bin_dir / 'python3'
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    env = dict(
        PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
        OUT=str(tmp_path / 'out'),
        SITE=str(tmp_path / 'site'),
        PYTHONPATH='',
        **extra)
    return run_program(['bash', f'tools/device/{script}', *args],
                       env=env,
                       timeout=timeout,
                       ok=False)


def test_device_scripts_run_here(tmp_path):
    """tools/device/run_gpu_profile.sh and run_gpu_check.sh, as run on the
    GPU machine (its ``python3``: here this interpreter, first on PATH;
    the wheels, if a .whl/ folder is here, go to an empty $SITE): the
    shared set-up is sourced and the program runs from the checkout, its
    results under $OUT (the profile's CPU smoke run of the triton section;
    the check's --help)."""
    for script, args in (('run_gpu_profile.sh',
                          ['--smoke', '--sections',
                           'triton']), ('run_gpu_check.sh', ['--help'])):
        proc = _run_device_script(tmp_path, script, *args, timeout=600)
        assert proc.returncode == 0, proc.output[-6000:]
        assert '== ' in proc.stdout and 'setup' in proc.stdout, proc.stdout
    log = (tmp_path / 'out' / 'gpu_profile' / 'gpu_profile.log').read_text()
    assert 'gpu_profile exit code 0' in log, log[-3000:]
    rows = json.loads(
        (tmp_path / 'out' / 'gpu_profile' / 'profile.json').read_text())
    assert {r['stage'] for r in rows['triton']} == \
        {'stage 2', 'stage 3', 'stage 4'}
    timed = [r for r in rows['triton'] if 'fwd_bwd_ms' in r]
    assert timed and all(r['fwd_bwd_tflops'] > 0 for r in timed
                         if r['core'] == 'triton'), rows['triton']
    assert 'usage: gpu_check.py' in proc.stdout, proc.stdout[-2000:]


def test_device_session_parts_fit_their_budget(tmp_path):
    """tools/device/run_session.sh, the device work left for issue #22:
    part 1 runs the profile, then the check with the time left of TOTAL_S
    (its deadline 60 s and its hard limit 10 s before the end), both
    writing their results; with too little left it says so and fails;
    part 2 runs the check alone; an unknown part is refused. The programs'
    arguments are the CPU's (smoke / quick) through PROFILE_ARGS and
    CHECK_ARGS."""
    check_args = ('--device cpu --quick --sections variants,maskrcnn '
                  '--emsa-core auto --variant-cores chunked,maps')

    def run(*args, **extra):
        return _run_device_script(tmp_path, 'run_session.sh', *args, **extra)

    proc = run(
        PROFILE_ARGS='--smoke --sections triton',
        CHECK_ARGS=check_args,
        TOTAL_S='10000')
    assert proc.returncode == 0, proc.output[-6000:]
    out = tmp_path / 'out'
    log = (out / 'session.log').read_text().splitlines()
    assert [line.split(': ', 1)[1] for line in log] == [
        'gpu_profile, limit 200 s', 'gpu_profile done',
        log[2].split(': ', 1)[1], 'gpu_check done'
    ], log
    left = int(re.search(r'gpu_check with (\d+) s left', log[2]).group(1))
    spent = int(re.search(r', (\d+) s:', log[2]).group(1))
    assert left == 10000 - spent, log
    assert 'gpu_profile exit code 0' in (
        out / 'gpu_profile/gpu_profile.log').read_text()
    result = json.loads((out / 'gpu_check/gpu_check.json').read_text())
    assert result['meta']['deadline_s'] == left - 60
    assert set(result['sections']) == {'variants', 'maskrcnn'}
    assert result['meta']['emsa_core']['requested'] == 'auto'

    proc = run(
        'compile', CHECK_ARGS='--help',
        TOTAL_S='50')  # less than a minute left: no check
    assert proc.returncode == 1, proc.stdout
    assert 'no time for the check' in proc.stdout
    assert 'usage: gpu_check.py' not in proc.stdout
    proc = run('compile', CHECK_ARGS='--help')
    assert proc.returncode == 0 and 'usage: gpu_check.py' in proc.stdout
    proc = run('speed')
    assert proc.returncode == 2
    assert "unknown part 'speed'" in proc.stderr


def test_profile_kernel_categories():
    """gpu_profile's summary files CUDA kernels by name: names the H200
    profiles recorded (docs/results/gpu_profile_h200_*.json), the Triton
    core's kernels, and an unknown name."""
    from mmrest_tools.gpu_profile import kernel_category
    names = {
        '_grad_keys_values_kernel':
        'emsa triton',
        '_forward_kernel':
        'emsa triton',
        'cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26':
        'attention',
        'fmha_cutlassB_f32_aligned_64x64_k64_sm80(PyTorchMemEffAttention::':
        'attention',
        'void cudnn::cnn::wgrad2d_grouped_direct_kernel<false, true, int,':
        'convolution',
        'dgrad2d_c1_k1_nhwc':
        'convolution',
        'void cutlass__5x_cudnn::Kernel<cutlass_tensorop_f16_s16816fprop_op':
        'convolution',
        'sm80_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize64x32x8_stage3':
        'gemm',
        'void gemmSN_TN_kernel<float, 128, 16, 2, 4, 2, 2, true, cublasGemvT':
        'gemm',
        'void at::native::(anonymous namespace)::vectorized_layer_norm_kerne':
        'norm',
        'void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel':
        'norm',
        'void at::native::(anonymous namespace)::cunn_SoftMaxBackward<4, fl':
        'softmax',
        'void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_'
        'impl_nocast<at::native::direct_copy_kernel_':
        'copy / cast',
        'void tensorTransformGeneric<__half, __half, float, true, false, fa':
        'copy / cast',
        'void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float,':
        'reduce',
        'void at::native::vectorized_elementwise_kernel<4, at::native::CUDAF'
        'unctor_add<float>':
        'elementwise',
        'void some_new_kernel<float>':
        'other',
    }
    assert {n: kernel_category(n) for n in names} == names


def test_profile_timed_is_the_rounded_median_of_time_steps(monkeypatch):
    """gpu_profile's ``timed``: the check's time_steps on the profile's
    device, REPEATS' timed calls and warm-ups unless given, the median
    rounded to 0.01 ms."""
    gpu_profile = _profile_on_cpu(monkeypatch)
    monkeypatch.setattr(gpu_profile, 'REPEATS', (3, 2))
    calls = []

    def time_steps(fn, device, repeats, warmup):
        calls.append((fn, device, repeats, warmup))
        return [7.0, 1.234567, 2.5]

    monkeypatch.setattr(gpu_profile, 'time_steps', time_steps)
    step = object()
    assert gpu_profile.timed(step) == 2.5
    assert gpu_profile.timed(step, repeats=10, warmup=0) == 2.5
    assert calls == [(step, torch.device('cpu'), 3, 2),
                     (step, torch.device('cpu'), 10, 0)]
    monkeypatch.setattr(gpu_profile, 'time_steps',
                        lambda *args: [1.234567, 1.0, 9.0])
    assert gpu_profile.timed(step) == 1.23


class _TimedRecorder:
    """gpu_profile's ``timed`` replaced: each call runs the step once and
    records the cuDNN flags it ran under, the ``backward`` calls it made
    (torch.Tensor.backward patched), the timed calls and warm-ups asked
    for and what ``state()`` returns before it,
    then returns the call's index, so a row's figure names the call it came
    from."""

    def __init__(self, monkeypatch, state=dict):
        self.calls, self._backwards, self._state = [], 0, state
        backward = torch.Tensor.backward

        def counted(tensor, *args, **kwargs):
            self._backwards += 1
            return backward(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, 'backward', counted)

    def __call__(self, fn, repeats=None, warmup=None):
        before = self._backwards
        flags = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark)
        state = self._state()
        fn()
        self.calls.append(
            dict(
                cudnn=flags[0],
                benchmark=flags[1],
                backward=self._backwards > before,
                repeats=repeats,
                warmup=warmup,
                **state))
        return len(self.calls) - 1


def _tiny_profile_model():
    from mmrest_tools.gpu_check.settings import QUICK_REST_ARCH
    torch.manual_seed(0)
    return ResT(arch=dict(QUICK_REST_ARCH, depths=[1, 1, 1, 1])).train()


@NEEDS_CPU_FLOAT16
def test_profile_model_rows_label_what_was_timed(monkeypatch):
    """gpu_profile's ``models`` section: each row's ``fwd_ms`` is a step
    without backward and ``fwd_bwd_ms`` one with it, under the cuDNN
    autotuning and dtype the row names (off, then on; fp16, then float32),
    and autotuning is off afterwards; a model that fails to build gets an
    error row and the others still run."""
    gpu_profile = _profile_on_cpu(monkeypatch)
    timed = _TimedRecorder(monkeypatch)
    monkeypatch.setattr(gpu_profile, 'timed', timed)
    dtypes = []
    step_fn = gpu_profile.step_fn
    monkeypatch.setattr(
        gpu_profile, 'step_fn', lambda model, x, backward, dtype:
        (dtypes.append(dtype), step_fn(model, x, backward, dtype))[1])

    def build(name):
        if name == 'broken':
            raise KeyError(name)
        return _tiny_profile_model()

    monkeypatch.setattr(gpu_profile, 'build', build)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    rows = gpu_profile.model_rows(['broken', 'tiny'])
    assert rows[0] == dict(model='broken', error="KeyError: 'broken'")
    assert [(r['cudnn_benchmark'], r['dtype'])
            for r in rows[1:]] == [(False, 'float16'), (False, 'float32'),
                                   (True, 'float16'), (True, 'float32')]
    assert dtypes == [
        d for d in (torch.float16, torch.float32) for _ in range(2)
    ] * 2
    for row in rows[1:]:
        fwd, both = timed.calls[row['fwd_ms']], timed.calls[row['fwd_bwd_ms']]
        assert not fwd['backward'] and both['backward'], row
        assert fwd['benchmark'] is both['benchmark'] is \
            row['cudnn_benchmark'], row
    assert torch.backends.cudnn.benchmark is False


# float16 convolutions on the CPU: torch 2.1 has neither them nor float16
# autocast there
@NEEDS_CPU_FLOAT16
def test_profile_conv_rows_label_what_was_timed(monkeypatch):
    """gpu_profile's ``convs`` section: each row's figure is a forward and
    backward of its variant: cuDNN as named ('native': off), autotuned only
    for 'cudnn benchmark', F.conv2d with one group a channel on inputs,
    weights and bias that all need their gradient, except for 'slices'
    (depthwise_by_slices); cuDNN back to its defaults afterwards."""
    gpu_profile = _profile_on_cpu(monkeypatch)
    timed = _TimedRecorder(monkeypatch)
    monkeypatch.setattr(gpu_profile, 'timed', timed)
    seen, geometry = [], []

    def conv2d(x, weight, bias, stride, padding, groups):
        seen.append(('conv2d', x.requires_grad, weight.requires_grad,
                     bias.requires_grad, groups == x.shape[1]))
        geometry.append(
            (tuple(x.shape), tuple(weight.shape), stride, padding, x.dtype))
        return F.conv2d(x, weight, bias, stride, padding, groups=groups)

    def by_slices(x, weight, bias, stride, padding):
        seen.append(('slices', x.requires_grad, weight.requires_grad,
                     bias.requires_grad, True))
        geometry.append(
            (tuple(x.shape), tuple(weight.shape), stride, padding, x.dtype))
        return F.conv2d(x, weight, bias, stride, padding, groups=x.shape[1])

    monkeypatch.setattr(gpu_profile, 'F',
                        types.SimpleNamespace(conv2d=conv2d, pad=F.pad))
    monkeypatch.setattr(gpu_profile, 'depthwise_by_slices', by_slices)
    rows = gpu_profile.conv_rows()
    assert len(rows) == len(seen) == 5 * 3 * 4
    expected = {
        'cudnn': (True, False, 'conv2d'),
        'cudnn benchmark': (True, True, 'conv2d'),
        'native': (False, False, 'conv2d'),
        'slices': (True, False, 'slices'),
    }
    for row, (fn, *needs_grad) in zip(rows, seen):
        call = timed.calls[row['fwd_bwd_ms']]
        assert (call['cudnn'], call['benchmark'],
                fn) == expected[row['variant']], row
        assert call['backward'] and all(needs_grad), (row, needs_grad)
    assert torch.backends.cudnn.enabled is True
    assert torch.backends.cudnn.benchmark is False
    # each row's convolution is ResT-Small's at 800x1344, batch 2 (sizes
    # divided by SCALE 16): the spatial reduction's of stages 1 to 3 and
    # the pixel attention's of stages 1 and 2, read from the model
    small = ResT(arch='small')
    modules = {
        'sr stage 1': small.stage1[0].attn.sr,
        'sr stage 2': small.stage2[0].attn.sr,
        'sr stage 3': small.stage3[0].attn.sr,
        'PA stage 1': small.stem.pos.pa_conv,
        'PA stage 2': small.patch_embed_2.pos.pa_conv,
    }
    assert {r['conv'] for r in rows} == set(modules)
    assert [r['dtype'] for r in rows[::4]] == \
        ['float16', 'bfloat16', 'float32'] * 5
    for row, (x, w, stride, padding, dtype) in zip(rows, geometry):
        conv = modules[row['conv']]
        c, stage = conv.in_channels, int(row['conv'][-1])
        assert conv.groups == c and dtype == getattr(torch, row['dtype'])
        assert x == (2, c, 800 // 2**(stage + 1) // 16,
                     1344 // 2**(stage + 1) // 16), row
        assert (w, stride, padding) == ((c, 1) + conv.kernel_size,
                                        conv.stride[0], conv.padding[0]), row


def _one_head_dtypes(monkeypatch, kernels):
    """kernels.emsa_attention wrapped to record, for each one-head call (no
    mixing), the query dtype, or ``'float32 autocast'`` where float32
    queries meet CPU autocast (whose products would be low precision), into
    the returned list."""
    seen, attention = [], kernels.emsa_attention

    def spy(q, k, v, mix=None, *args, **kwargs):
        if mix is None:
            try:
                autocast = torch.is_autocast_enabled('cpu')
            except TypeError:  # torch < 2.4: no device argument
                autocast = torch.is_autocast_cpu_enabled()
            seen.append('float32 autocast'
                        if autocast and q.dtype == torch.float32 else q.dtype)
        return attention(q, k, v, mix, *args, **kwargs)

    monkeypatch.setattr(kernels, 'emsa_attention', spy)
    return seen


@NEEDS_CPU_FLOAT16
def test_profile_variant_rows_undo_what_they_name(monkeypatch):
    """gpu_profile's ``variants`` section: each row is an fp16 training
    step (with backward) with the head mixing and the one-head attention
    its name says (the baddbmm mixing; the one-head attention's queries in
    float32, not float16), and kernels' functions are restored after."""
    from mmrest.backbones import kernels
    gpu_profile = _profile_on_cpu(monkeypatch)
    monkeypatch.setattr(gpu_profile, 'build',
                        lambda name: _tiny_profile_model())
    seen = _one_head_dtypes(monkeypatch, kernels)
    mix_heads, attention = kernels.mix_heads, kernels.emsa_attention
    timed = _TimedRecorder(
        monkeypatch, lambda: dict(
            baddbmm=kernels.mix_heads is kernels.mix_heads_baddbmm,
            seen_from=len(seen)))
    monkeypatch.setattr(gpu_profile, 'timed', timed)
    rows = gpu_profile.variant_rows('tiny')
    assert [r['variant'] for r in rows] == [
        'this version', 'mix heads by baddbmm', 'one head in float32',
        'both (the former code)'
    ]
    ends = [c['seen_from'] for c in timed.calls[1:]] + [len(seen)]
    for i, (row, call, end) in enumerate(zip(rows, timed.calls, ends)):
        assert row['fwd_bwd_fp16_ms'] == i and call['backward'], row
        assert call['baddbmm'] is ('baddbmm' in row['variant']
                                   or 'both' in row['variant']), row
        float32 = 'float32' in row['variant'] or 'both' in row['variant']
        assert set(seen[call['seen_from']:end]) == {
            torch.float32 if float32 else torch.float16
        }, row
    assert kernels.mix_heads is mix_heads
    assert kernels.emsa_attention is attention


@NEEDS_CPU_FLOAT16
def test_profile_eval224_rows_interleave_both_attentions(monkeypatch):
    """gpu_profile's ``eval224`` section: round by round, each model's
    inference (no backward) with the one-head attention in float16, then
    for ResT in float32 (not for the others), images per second from the
    milliseconds of 64 images; kernels' function restored after."""
    from mmrest.backbones import kernels
    gpu_profile = _profile_on_cpu(monkeypatch)
    monkeypatch.setattr(gpu_profile, 'build',
                        lambda name: _tiny_profile_model())
    seen = _one_head_dtypes(monkeypatch, kernels)
    attention = kernels.emsa_attention
    timed = _TimedRecorder(monkeypatch, lambda: dict(seen_from=len(seen)))
    monkeypatch.setattr(gpu_profile, 'timed',
                        lambda fn, **kw: timed(fn, **kw) + 1)
    inputs, step_fn = [], gpu_profile.step_fn
    monkeypatch.setattr(
        gpu_profile, 'step_fn', lambda model, x, backward:
        (inputs.append(tuple(x.shape)), step_fn(model, x, backward))[1])
    rows = gpu_profile.eval224_rows(('rest_a', 'other'), rounds=2)
    # 64 images of 224x224 (divided by SCALE 16), each figure the median
    # of 10 calls after 3 warm-ups
    assert set(inputs) == {(64, 3, 14, 14)}
    assert {(c['repeats'], c['warmup']) for c in timed.calls} == {(10, 3)}
    assert [(r['round'], r['model'], r['variant'])
            for r in rows] == [(r, m, v) for r in range(2)
                               for m, v in (('rest_a', 'this version'),
                                            ('rest_a', 'one head in float32'),
                                            ('other', 'this version'))]
    ends = [c['seen_from'] for c in timed.calls[1:]] + [len(seen)]
    for i, (row, call, end) in enumerate(zip(rows, timed.calls, ends)):
        assert row['img_s'] == round(64 / (i + 1) * 1e3)
        assert not call['backward'], row
        float32 = row['variant'] == 'one head in float32'
        assert set(seen[call['seen_from']:end]) == {
            torch.float32 if float32 else torch.float16
        }, row
    assert kernels.emsa_attention is attention


def test_profile_inputs_and_default_rounds(monkeypatch):
    """gpu_profile's training-step input is issue #22's 2x3x800x1344 (each
    side divided by SCALE); eval224 interleaves three rounds unless told."""
    gpu_profile = _profile_on_cpu(monkeypatch, scale=1)
    assert tuple(gpu_profile.image().shape) == (2, 3, 800, 1344)
    gpu_profile = _profile_on_cpu(monkeypatch, scale=16)
    assert tuple(gpu_profile.image().shape) == (2, 3, 50, 84)
    defaults = inspect.signature(gpu_profile.eval224_rows).parameters
    assert defaults['rounds'].default == 3
    assert inspect.signature(
        gpu_profile.profile_rows).parameters['top'].default == 25


def test_profile_rows_summarise_the_profilers_events(monkeypatch):
    """gpu_profile's ``profile`` rows from the profiler's events (a stand-in
    profiler here): an event's time is its device time, its CPU time where
    it has no device time (the CPU's events); events without time are left
    out; the rows are the ``top`` longest (25 by default) in milliseconds
    to 0.01, then a summary of every event (total, launches, milliseconds
    by category, each to 0.01)."""
    gpu_profile = _profile_on_cpu(monkeypatch)
    monkeypatch.setattr(gpu_profile, 'build',
                        lambda name: _tiny_profile_model())
    monkeypatch.setattr(gpu_profile, 'timed', lambda fn: 7.5)

    def event(key, count, device=None, cpu=0.0):
        e = types.SimpleNamespace(
            key=key, count=count, self_cpu_time_total=cpu)
        if device is not None:
            e.self_device_time_total = device
        return e

    # microseconds: 30 gemm kernels of 1001.234 .. 30001.234 us, one
    # softmax known by its CPU time only, one event without time, one of
    # half a microsecond
    events = [
        event(f'gemm_{i}', 2, device=1000.0 * i + 1.234, cpu=5.0)
        for i in range(1, 31)
    ] + [
        event('softmax_x', 3, cpu=40000.678),
        event('idle', 9, device=0.0),
        event('short', 1, device=0.5)
    ]

    class Profile:

        def __init__(self, activities):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def key_averages(self):
            return events

    monkeypatch.setattr(torch.profiler, 'profile', Profile)
    # bfloat16: the CPU autocast dtype of every supported torch
    *ranked, summary = gpu_profile.profile_rows('tiny', torch.bfloat16)
    assert len(ranked) == 25
    assert [(r['kernel'], r['calls'], r['self_ms'], r['category'])
            for r in ranked[:2]] == [('softmax_x', 3, 40.0, 'softmax'),
                                     ('gemm_30', 2, 30.0, 'gemm')]
    assert [r['self_ms'] for r in ranked[1:]] == [
        round((1000.0 * i + 1.234) / 1e3, 2) for i in range(30, 6, -1)
    ]
    gemm_us = sum(1000.0 * i + 1.234 for i in range(1, 31))
    assert summary == dict(
        model='tiny',
        dtype='bfloat16',
        summary=True,
        wall_ms=7.5,
        kernels_ms=round((gemm_us + 40000.678 + 0.5) / 1e3, 2),
        launches=2 * 30 + 3 + 1,
        by_category=dict(
            gemm=round(gemm_us / 1e3, 2), softmax=40.0, other=0.0))


def test_profile_rows_rank_one_training_step(monkeypatch):
    """gpu_profile's ``profile`` section on the CPU (the profiler's CPU
    events stand for the kernels): the rows rank a training step's
    operators (backward ones among them) by self time, longest first, at
    most ``top`` of them, then one summary row whose totals cover every
    operator, not only the rows shown."""
    gpu_profile = _profile_on_cpu(monkeypatch)
    monkeypatch.setattr(gpu_profile, 'build',
                        lambda name: _tiny_profile_model())
    rows = gpu_profile.profile_rows('tiny', torch.bfloat16, top=6)
    *ranked, summary = rows
    assert len(ranked) == 6 and all('summary' not in r for r in ranked)
    times = [r['self_ms'] for r in ranked]
    assert times == sorted(times, reverse=True) and times[-1] >= 0, times
    # the first is the longest: at least the mean over every operator
    assert times[0] > 0 and times[0] + 0.01 >= \
        summary['kernels_ms'] / summary['launches'], (times, summary)
    assert summary['summary'] is True and summary['dtype'] == 'bfloat16'
    assert summary['kernels_ms'] >= sum(times) - 0.01 * len(times)
    assert summary['launches'] > sum(r['calls'] for r in ranked)
    assert abs(sum(summary['by_category'].values()) -
               summary['kernels_ms']) <= 0.01 * len(summary['by_category'])
    # a training step: the ranked operators' names include backward ones
    # when enough are shown
    names = [
        r['kernel'] for r in gpu_profile.profile_rows(
            'tiny', torch.bfloat16, top=10**6)[:-1]
    ]
    assert any('Backward' in n for n in names), names


# gpu_profile's second triton launch: the default without split queries
UNSPLIT = (None, None, None, 1)


def test_profile_launch_options_by_hand():
    """A launch of TRITON_LAUNCHES as attention_core's options: rows as
    ``block``, warps, stages and splits in ``launch``, each only where
    given; None alone: no options (the default launch)."""
    from mmrest_tools.gpu_profile import TRITON_LAUNCHES, launch_options
    assert TRITON_LAUNCHES[:3] == (None, UNSPLIT, (32, 8, 3))
    assert launch_options(None) == {}
    assert launch_options(UNSPLIT) == dict(launch=dict(splits=1))
    assert launch_options((32, 8, 3)) == dict(
        block=32, launch=dict(num_warps=8, num_stages=3))
    assert launch_options((16, None, 2)) == dict(
        block=16, launch=dict(num_stages=2))
    assert launch_options((64, )) == dict(block=64)


def test_profile_triton_rows_say_why_they_skip(monkeypatch):
    """gpu_profile's ``triton`` section on the CPU: per stage the chunked
    core's row, then one row per launch labelled by it ('default' for the
    core's own choice); a launch that cannot run says why (no triton 3;
    outside Triton's interpreter) and one past the budget says 'budget'."""
    from mmrest.backbones import emsa_triton
    gpu_profile = _profile_on_cpu(monkeypatch, scale=8)
    cases = ((True, True, 'budget'), (True, False,
                                      'the CPU needs TRITON_INTERPRET=1'),
             (False, True, 'needs triton >= 3'))
    for available, interpreted, why in cases:
        monkeypatch.setattr(emsa_triton, 'available', lambda: available)
        monkeypatch.setattr(emsa_triton, 'interpreted', lambda: interpreted)
        budget = 0.0 if why == 'budget' else 1e9
        rows = gpu_profile.triton_rows(budget)
        assert [(r['stage'], r['core'], r.get('launch')) for r in rows] == [
            (f'stage {i}', core, launch)
            for core, launch in (('chunked', None), ('triton', 'default'),
                                 ('triton', UNSPLIT)) for i in (2, 3, 4)
        ], rows
        for r in rows:
            if r['core'] == 'chunked':
                assert r['fwd_ms'] > 0 and r['fwd_bwd_ms'] > 0, r
            else:
                assert r['skipped'] == why and 'fwd_ms' not in r, r


def test_gpu_variants_literal_rows_are_literal():
    """gpu_variants' 'literal' row: the backbone of its step and the one in
    its Mask R-CNN (mmdet's build wrapped) compute literally, the others
    do not; a built module without a backbone passes through."""
    from mmrest.backbones.kernels import is_literal
    from mmrest_tools import gpu_variants
    assert is_literal(gpu_variants._backbone(True))
    assert not is_literal(gpu_variants._backbone(False))
    detector = types.SimpleNamespace(backbone=_tiny_profile_model())
    built = gpu_variants._literal_build(lambda cfg: detector)(dict())
    assert built is detector and is_literal(detector.backbone)
    head = torch.nn.Linear(2, 2)
    assert gpu_variants._literal_build(lambda cfg: head)(dict()) is head


def test_profile_triton_rows_launch_as_labelled(monkeypatch):
    """The triton section's launches: the core gets no options for
    'default' and the launch's given entries otherwise (the second launch
    the default unsplit: ``splits`` 1 alone); the shapes are ResT-Small's
    divided by SCALE squared (at least one row: SCALE 64); each row's
    relative difference from the chunked core and its TFLOP/s from
    core_flop over the times (SCALE 16;
    the core here is the chunked one times 1.01, each call 2 ms)."""
    from mmrest.backbones import emsa_triton, kernels
    calls, shapes = [], []

    def attention_core(q, k, v, mix, bias, **options):
        calls.append((q.shape[1], repr(options)))
        with kernels.use_emsa_core('chunked'):
            return kernels.emsa_attention(q, k, v, mix, bias) * 1.01

    monkeypatch.setattr(emsa_triton, 'attention_core', attention_core)
    monkeypatch.setattr(emsa_triton, 'interpreted', lambda: True)
    gpu_profile = _profile_on_cpu(monkeypatch)
    core_inputs = gpu_profile._core_inputs
    monkeypatch.setattr(
        gpu_profile, '_core_inputs', lambda heads, n, m: (shapes.append(
            (heads, n, m)), core_inputs(heads, n, m))[1])
    monkeypatch.setattr(gpu_profile, 'timed', lambda fn: (fn(), 2.0)[1])
    for scale, available in ((64, False), (16, True)):
        monkeypatch.setattr(gpu_profile, 'SCALE', scale)
        monkeypatch.setattr(emsa_triton, 'available', lambda: available)
        shapes.clear()
        rows = [r for r in gpu_profile.triton_rows() if r['core'] == 'triton']
        if scale == 64:
            assert shapes == [(2, 4, 1), (4, 1, 1), (8, 1, 1)]
            assert not calls
    assert shapes == [(2, 65, 4), (4, 16, 4), (8, 4, 4)]
    assert [(r['stage'], r['launch'])
            for r in rows] == [(f'stage {i}', launch)
                               for launch in ('default', UNSPLIT)
                               for i in (2, 3, 4)]
    assert sorted(set(calls)) == sorted(
        (heads, options) for heads in (2, 4, 8)
        for options in ('{}', repr(dict(launch=dict(splits=1)))))
    for row, (heads, n, m) in zip(rows, shapes * 2):
        assert row['rel_diff_chunked'] == pytest.approx(0.01, rel=0.1), row
        fwd, both = gpu_profile.core_flop(heads, n, m)
        assert (row['fwd_tflops'],
                row['fwd_bwd_tflops']) == (float(f'{fwd / 2e9:.3g}'),
                                           float(f'{both / 2e9:.3g}')), row


def test_profile_triton_budget_leaves_launches_not_stages(monkeypatch):
    """A triton section whose budget runs out after three launches has
    measured the first launch at all three stages (the ones that decide
    the default) and skipped the second everywhere. The clock advances a
    second at each reading; the kernels are the chunked core's here."""
    from mmrest.backbones import emsa_triton, kernels
    gpu_profile = _profile_on_cpu(monkeypatch, scale=8)
    monkeypatch.setattr(emsa_triton, 'available', lambda: True)
    monkeypatch.setattr(emsa_triton, 'interpreted', lambda: True)

    def attention_core(q, k, v, mix, bias, **options):
        with kernels.use_emsa_core('chunked'):
            return kernels.emsa_attention(q, k, v, mix, bias)

    monkeypatch.setattr(emsa_triton, 'attention_core', attention_core)
    clock = iter(range(1000, 2000))  # seconds since the epoch, say
    monkeypatch.setattr(
        gpu_profile, 'time',
        types.SimpleNamespace(
            time=lambda: next(clock), perf_counter=time.perf_counter))
    rows = [r for r in gpu_profile.triton_rows(3.5) if r['core'] == 'triton']
    assert [
        (r['stage'], r['launch'], 'fwd_ms' in r, r.get('skipped'))
        for r in rows
    ] == [(f'stage {i}', 'default', True, None)
          for i in (2, 3, 4)] + [(f'stage {i}', UNSPLIT, False, 'budget')
                                 for i in (2, 3, 4)]


def test_gpu_experiment_command_lines(tmp_path):
    """tools/device/*.py are thin command lines over mmrest_tools: their
    options come from the programs; gpu_profile's CPU smoke run writes
    every row of the convolution timings (5 convolutions, 3 dtypes, 4
    kernels) and of the EMSA cores' (per stage the chunked core and two
    launches of the triton one, in the interpreter; without triton 3 those
    rows say why), the triton core's output as the chunked core's up to
    fp16 products (4 roundings)."""
    for tool, option in (('gpu_profile', '--smoke'), ('gpu_variants',
                                                      '--out')):
        proc = _run_tool([f'tools/device/{tool}.py', '--help'], timeout=300)
        assert option in proc.stdout, proc.stdout
    _run_tool([
        'tools/device/gpu_profile.py', '--smoke', '--sections', 'convs',
        'triton', 'fitted', '--out',
        str(tmp_path)
    ],
              timeout=900)
    result = json.loads((tmp_path / 'profile.json').read_text())
    rows = result['convs']
    assert len(rows) == 5 * 3 * 4
    assert {r['variant']
            for r in rows} == {'cudnn', 'cudnn benchmark', 'native', 'slices'}
    assert {r['dtype'] for r in rows} == {'float16', 'bfloat16', 'float32'}
    rows = result['triton']
    stages = [f'stage {i}' for i in (2, 3, 4)]
    assert [(r['stage'], r['core']) for r in rows] == \
        [(s, 'chunked') for s in stages] + [(s, 'triton') for s in stages] * 2
    for r in rows:
        if r['core'] == 'triton' and not emsa_triton.available():
            assert r['skipped'] == 'needs triton >= 3', r  # torch 2.1
            continue
        assert r['fwd_ms'] > 0 and r['fwd_bwd_ms'] > 0, r
        if r['core'] == 'triton':
            assert r['rel_diff_chunked'] < 4 * 2**-11, r
    # the interpreter refuses no launch: each kernel runs the oversized one
    row, = result['fitted']
    if not emsa_triton.available():
        assert row == dict(skipped='needs triton >= 3')
    else:
        assert row['fitted'] == dict.fromkeys(KERNEL_NAMES, [256, 3])  # JSON
        assert row['warnings'] == [] and row['max_rel_diff'] < 4 * 2**-11


KERNEL_NAMES = ('_forward_kernel', '_grad_queries_kernel',
                '_grad_keys_values_kernel')


def test_profile_fitted_section_steps_down(monkeypatch):
    """gpu_profile's ``fitted`` section, on a stand-in GPU that refuses
    launches above 32 rows (the interpreted kernels raising Triton's
    OutOfResources): each kernel steps down from the oversized 256 rows in
    3 stages to 32 rows in 3 stages, warning once each; the results are the
    default launch's up to fp16 roundings; launch_config and the fitted
    launches are restored after."""
    from mmrest.backbones import emsa_triton
    if not emsa_triton.available():
        pytest.skip('needs triton >= 3')
    gpu_profile = _profile_on_cpu(monkeypatch, scale=8)
    monkeypatch.setattr(emsa_triton, 'interpreted', lambda: True)
    recorders = [
        GridRecorder(monkeypatch, name, refuse=lambda kw: kw['BLOCK_N'] > 32)
        for name in KERNEL_NAMES
    ]
    choice = emsa_triton.launch_config
    monkeypatch.setattr(emsa_triton, '_FITTED', {'kept': 1})
    row, = gpu_profile.fitted_rows()
    assert row['fitted'] == dict.fromkeys(KERNEL_NAMES, (32, 3))
    assert [w.split(' on cpu ran out')[0] for w in row['warnings']] == [
        '_forward_kernel', '_grad_queries_kernel', '_grad_keys_values_kernel'
    ]
    # the interpreter compiles nothing: no spills known, for each launch
    # tried (stage 2's widths; 256 and 128 rows, each in 3 to 1 stages; the
    # smaller ones were tried first by the default launch, the reference)
    assert sorted(row['spilled']) == sorted(
        [name, 128, 64, rows, stages, None] for name in KERNEL_NAMES
        for rows in (256, 128) for stages in (3, 2, 1))
    assert all('with 256 rows in 3 stages; it runs 32 rows in 3 stages' in w
               for w in row['warnings'])
    assert row['max_rel_diff'] < 4 * 2**-11
    assert emsa_triton.launch_config is choice
    # kept: what was there and the default launches' fittings (64 rows
    # to 32); the oversized ones dropped
    fitted = dict(emsa_triton._FITTED)
    assert fitted.pop('kept') == 1
    assert sorted(key[0] for key in fitted) == sorted(KERNEL_NAMES)
    assert all(
        dict(key[3])['BLOCK_N'] == 64 and launch['BLOCK_N'] == 32
        for key, launch in fitted.items())
    # the default launches (64 rows) refused too, then each oversized one
    # and its smaller ones: 256, 128 and 64 rows in 3 stages each
    assert [rows for rows, _ in recorders[0].launches][:4] == [64, 64, 64, 32]


def test_check_backbones_are_the_benchmarks_networks():
    """The GPU check's throughput rows, gpu_profile's and op_census's
    backbones are the CPU benchmark's (one builder); Swin-T as mmdet's Mask
    R-CNN config has it (qkv bias, patch norm, no gradient checkpointing,
    which would slow only it); ResNet-50's BatchNorms frozen in statistics
    but learning, its stem and first stage frozen."""
    from mmrest_tools import benchmark, compared, gpu_profile, op_census
    assert gpu_check.build_backbone is compared.build_backbone
    assert gpu_check.throughput.build_backbone is compared.build_backbone
    assert gpu_profile.build_backbone is compared.build_backbone
    assert benchmark.compared is compared
    assert 'compared import build_backbone' in inspect.getsource(
        op_census.main)
    swin = compared.build_backbone('swin_t')
    blocks = [block for stage in swin.stages for block in stage.blocks]
    assert len(blocks) == 12 and not any(b.with_cp for b in blocks)
    assert all(b.attn.w_msa.qkv.bias is not None for b in blocks)
    assert isinstance(swin.patch_embed.norm, torch.nn.LayerNorm)
    assert type(compared.build_rest('small')).__name__ == 'ResT'
    assert type(compared.build_rest('v2_tiny')).__name__ == 'ResTV2'
    resnet = compared.build_backbone('resnet50')
    resnet.train()  # its BatchNorms stay frozen (mmdet's train() is None)
    # stages 2 to 4 learn, their BatchNorms' affine parameters too
    assert all(p.requires_grad for n, p in resnet.named_parameters()
               if n.startswith(('layer2', 'layer3', 'layer4')))
    assert not any(m.training for m in resnet.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def _kwargs_recorder(got: dict) -> type:
    """A module class to stand in for a backbone class: it records the
    keyword arguments it is built with into ``got``."""

    class Recorder(torch.nn.Module):

        def __init__(self, **kwargs):
            super().__init__()
            got.update(kwargs)

        def init_weights(self):
            pass

    return Recorder


@pytest.mark.parametrize(
    'name, config',
    [(f'rest{v}_{arch}', f'configs/mask_rcnn/mask-rcnn_rest{v}-{arch}_fpn_'
      f'{"3x" if v else "1x"}_coco.py')
     for v, archs in (('', ('lite', 'small', 'base', 'large')),
                      ('v2', ('tiny', 'small', 'base'))) for arch in archs])
def test_compared_rests_have_their_mask_rcnn_configs_settings(
        monkeypatch, name, config):
    """Each compared ResT and ResT v2 (and its literal form) is built with
    every backbone setting of mmrest's Mask R-CNN config of its arch:
    arch, outputs, frozen stages, drop-path rate and, for v1, the returned
    stages' norms fed to the next stage. A recorder stands in for the
    class; the settings are read from the config, the defaults from the
    class's signature."""
    from mmengine.config import Config

    import mmrest
    from mmrest_tools import compared
    backbone = Config.fromfile(osp.join(ROOT, config)).model.backbone
    want = {k: v for k, v in backbone.items() if k not in ('type', 'init_cfg')}
    cls = getattr(mmrest, backbone.type)
    defaults = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
    }
    for built in (name, f'{name}_literal'):
        got = {}

        monkeypatch.setattr(mmrest, backbone.type, _kwargs_recorder(got))
        monkeypatch.setattr('mmrest.backbones.to_literal',
                            lambda model, copy_model: model)
        compared.build_backbone(built)
        assert {k: got.get(k, defaults[k]) for k in want} == want, built


@pytest.mark.parametrize('name, cls, config', [
    ('swin_t', 'SwinTransformer',
     'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'),
    ('resnet50', 'ResNet', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'),
])
def test_check_anchors_have_their_mask_rcnn_configs_settings(
        tmp_path, monkeypatch, name, cls, config):
    """The throughput table's Swin-T and ResNet-50 are built with every
    backbone setting of mmdet's Mask R-CNN config of each (the networks
    ResT is compared with): for Swin-T widths, depths, heads, window, MLP
    ratio, qkv bias, dropout and stochastic depth, patch norm, outputs, no
    checkpointing; for ResNet-50 depth, outputs, frozen stem, BatchNorms
    learning but frozen in statistics, style. A recorder stands in for the
    class; the settings are read from the config."""
    import mmdet.models.backbones as backbones

    from mmrest_tools.compared import build_backbone
    cfg, _ = _quick_check(tmp_path)._load_det_config(config)
    want = {
        k: v
        for k, v in cfg.model.backbone.items()
        if k not in ('type', 'init_cfg', 'convert_weights')
    }
    assert cfg.model.backbone.type == cls
    got = {}
    monkeypatch.setattr(backbones, cls, _kwargs_recorder(got))
    build_backbone(name)
    assert {k: got.get(k) for k in want} == want


@pytest.mark.parametrize('name', gpu_check.settings.THROUGHPUT_MAIN)
def test_quick_compared_backbones_are_narrow_forms_of_theirs(name):
    """The quick mode's backbones (``--quick``, as the CPU run of the check
    builds them): each of its name's class, narrowed (ResT's and ResT v2's
    structure at ``QUICK_REST_ARCH``, Swin-T at ``QUICK_SWIN_ARCH``,
    ResNet-18 for ResNet-50) with the full network's other settings (drop
    path, v1's fed norms, the literal form), in eval mode, four maps at
    strides 4 to 32."""
    from mmdet.models.backbones import ResNet, SwinTransformer

    import mmrest
    from mmrest.backbones.kernels import is_literal
    from mmrest_tools import compared
    model = compared.build_backbone(name, quick=True)
    rest_blocks = [
        m for m in model.modules() if type(m).__name__ in ('Block', 'BlockV2')
    ]
    drop = max((m.drop_prob
                for m in model.modules() if type(m).__name__ == 'DropPath'),
               default=0.)
    arch = compared.QUICK_REST_ARCH
    if name.startswith('rest_'):
        assert type(model) is mmrest.ResT
        assert model.out_norms_feed_next_stage is True
        assert drop == pytest.approx(compared.REST_DROP_PATH['small'])
    elif name.startswith('restv2_'):
        assert type(model) is mmrest.ResTV2
        assert drop == pytest.approx(compared.RESTV2_DROP_PATH['tiny'])
    if name.startswith('rest'):
        assert len(rest_blocks) == sum(arch['depths'])
        widths = arch['embed_dims']
    elif name == 'swin_t':
        assert type(model) is SwinTransformer
        assert [len(stage.blocks) for stage in model.stages] == \
            compared.QUICK_SWIN_ARCH['depths']
        assert drop == pytest.approx(0.2)
        widths = [
            compared.QUICK_SWIN_ARCH['embed_dims'] * 2**i for i in range(4)
        ]
    else:
        assert type(model) is ResNet and model.depth == 18
        widths = [64, 128, 256, 512]
    assert is_literal(model) == name.endswith('_literal')
    assert not model.training
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 64, 96))
    assert [tuple(out.shape[1:]) for out in outs] == [
        (c, 64 // s, 96 // s) for c, s in zip(widths, (4, 8, 16, 32))
    ]


@NEEDS_CPU_FLOAT16
def test_compile_worker_on_the_cpu(capsys, monkeypatch):
    """The compile child's work, run here with dynamo's eager backend at
    small sizes: a first result after inference (in case the training is
    cut short), then the whole row: the compiled model's time, speed-up
    and error against eager, and the multi-scale training's graphs and
    gradient errors. Its own clock readings (first compiled calls) from a
    counter that advances a second a reading."""
    from mmrest_tools.gpu_check import torch_compile
    from mmrest_tools.gpu_check.torch_compile import compile_worker
    readings = iter(range(100, 1000))
    monkeypatch.setattr(
        torch_compile, 'time',
        types.SimpleNamespace(perf_counter=lambda: float(next(readings))))
    compile_worker(
        dict(
            device='cpu',
            shape=[2, 3, 64, 64],
            repeats=1,
            warmup=0,
            train_sizes=[[1, 3, 64, 64], [1, 3, 64, 96]],
            train_repeats=1,
            train_warmup=0,
            backend='eager'))
    results = [
        json.loads(line[len('COMPILE_RESULT '):])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith('COMPILE_RESULT ')
    ]
    assert len(results) == 2 and 'multi_scale_training' not in results[0]
    row = results[1]
    assert 'error' not in row and 'eager_error' not in row, row
    assert row['compiled_ms'] > 0 and row['speedup'] > 0, row
    assert row['img_s'] == pytest.approx(2 * 1e3 / row['compiled_ms'])
    assert row['speedup'] == pytest.approx(row['eager_ms'] /
                                           row['compiled_ms'])
    # the first compiled call's seconds (one reading apart), not a reading
    assert row['compile_s'] == 1.0, row
    # the errors are recorded; how close compiled code comes to float64 is
    # test_compile.py's, against the literal path's own error
    assert math.isfinite(row['err_vs_eager']) and row['err_vs_eager'] >= 0
    training = row['multi_scale_training']
    assert 'error' not in training, training
    assert len(training['grad_err']) == 2
    # the first compiled step of each size, summed: one reading apart each
    assert training['first_pass_s'] == 2.0, training
    # above 0: gradients were compared (float16 both ways, the traced graph
    # the literal computation, eager the fast one)
    assert all(0 < e < math.inf for e in training['grad_err']), training
