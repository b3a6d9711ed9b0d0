# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Where a ResT training step spends its GPU time (beside the GPU check,
:mod:`mmrest_tools.gpu_check`).

    python3 tools/device/gpu_profile.py --out DIR

gpu_check's throughput table has ResT-Small's forward at 800x1344 as fast as
Swin-T's (10.6 against 10.3 ms), yet its Mask R-CNN AMP iteration takes 497
against 106 ms, and the literal backbone is as slow: the backward pass, in
operators both computations share. This script times forward and
forward + backward of the backbones (fp16 autocast, 2x3x800x1344, with and
without ``cudnn.benchmark``, section ``models``), lists the profiler's top
CUDA kernels of one training step of ResT-Small, Swin-T (fp16 and bf16) and
ResT v2-T, with each step's wall time beside its kernels' total and the
kernels' time by category (``profile``), times ResT's depthwise
convolutions alone (cuDNN, cuDNN autotuned, PyTorch's native kernel), in
float32, float16 and bfloat16 (``convs``), the multi-head EMSA cores alone
at ResT-Small's shapes, the 'triton' core with several launches
(``triton``), and the training step with each GPU change of kernels.py
undone (``variants``). Writes profile.json (one list of rows per
section).

Found with it: the gradient of EMSA's head mixing (a long reduction into an
h x h result) ran as cuBLAS batched matrix-vector kernels, 72% of the step;
see kernels.MixHeads.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import time

import torch
import torch.nn.functional as F

from mmrest_tools.compared import build_backbone
from mmrest_tools.gpu_check.measure import (_sync, backbone_step, time_steps,
                                            versions)

DEVICE = 'cuda'
SCALE = 1  # sizes divided by this (a CPU smoke test: --smoke)
REPEATS = (5, 2)  # timed calls and warm-ups (one and none in --smoke)


def sync():
    _sync(torch.device(DEVICE))


def timed(fn, repeats=None, warmup=None):
    """The median milliseconds of ``fn`` (:func:`time_steps`: the device
    synchronised either side of each timed call) over ``repeats`` calls
    after ``warmup`` untimed ones (REPEATS by default)."""
    repeats = REPEATS[0] if repeats is None else repeats
    warmup = REPEATS[1] if warmup is None else warmup
    return round(
        statistics.median(
            time_steps(fn, torch.device(DEVICE), repeats, warmup)), 2)


def step_fn(model, x, backward, dtype=torch.float16):
    """A call of :func:`backbone_step` (forward under ``dtype`` autocast,
    float32 without; with ``backward``, the backward of the outputs'
    means)."""
    amp = None if dtype == torch.float32 else dtype
    return lambda: backbone_step(model, x, amp, backward)


def build(name):
    """The compared backbone ``name`` (:func:`build_backbone`) on DEVICE,
    in train mode."""
    model = build_backbone(name)
    model.to(DEVICE).train()  # (mmdet's Swin.train returns None)
    return model


def image():
    return torch.randn(2, 3, 800 // SCALE, 1344 // SCALE, device=DEVICE)


def model_rows(names):
    rows = []
    x = image()
    for name in names:
        try:
            model = build(name)
        except Exception as e:  # noqa: BLE001
            rows.append(dict(model=name, error=f'{type(e).__name__}: {e}'))
            print(json.dumps(rows[-1]), flush=True)
            continue
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for dtype in (torch.float16, torch.float32):
                row = dict(
                    model=name,
                    cudnn_benchmark=bench,
                    dtype=str(dtype).split('.')[-1])
                row['fwd_ms'] = timed(step_fn(model, x, False, dtype))
                row['fwd_bwd_ms'] = timed(step_fn(model, x, True, dtype))
                print(json.dumps(row), flush=True)
                rows.append(row)
        torch.backends.cudnn.benchmark = False
        del model
        if DEVICE == 'cuda':
            torch.cuda.empty_cache()
    return rows


# Kernel categories of the profile's summary: the first whose pattern
# (lower case) a kernel's name contains
CATEGORIES = (
    ('emsa triton', ('_forward_kernel', '_grad_queries_kernel',
                     '_grad_keys_values_kernel')),
    ('attention', ('flash', 'fmha', 'sdpa', 'attention')),
    ('convolution', ('conv', 'dgrad', 'wgrad', 'fprop', 'im2col', 'col2im')),
    ('gemm', ('gemm', 'gemv', 'xmma', 'cublas', 'cutlass', 'matmul')),
    ('norm', ('layer_norm', 'layernorm', 'gammabeta', 'batch_norm',
              'batchnorm', 'welford', 'instance_norm')),
    ('softmax', ('softmax', )),
    ('copy / cast', ('copy', 'transform', 'cat_', 'catarray', 'pad')),
    ('reduce', ('reduce', )),
    ('elementwise', ('elementwise', )),
)


def kernel_category(name: str) -> str:
    """The summary's category of a CUDA kernel by its name (CATEGORIES),
    ``other`` if none."""
    low = name.lower()
    for category, patterns in CATEGORIES:
        if any(p in low for p in patterns):
            return category
    return 'other'


def profile_rows(name, dtype=torch.float16, top=25):
    """The profiler's kernels of one training step of ``name`` under
    ``dtype`` autocast: the ``top`` kernels by self device time, then one
    summary row (the step's wall time, median of 5, beside the kernels'
    total: a wall time far above it is time the GPU waited for the
    launches; kernel launches; milliseconds by kernel_category)."""
    from torch.profiler import ProfilerActivity, profile
    model = build(name)
    run = step_fn(model, image(), True, dtype)
    wall_ms = timed(run)
    with profile(activities=[
            ProfilerActivity.CUDA if DEVICE == 'cuda' else ProfilerActivity.CPU
    ]) as prof:
        run()
        sync()
    events = [(e, getattr(e, 'self_device_time_total', 0)
               or getattr(e, 'self_cpu_time_total', 0), kernel_category(e.key))
              for e in prof.key_averages()]
    events = [event for event in events if event[1] > 0]
    events.sort(key=lambda event: event[1], reverse=True)
    tag = dict(model=name, dtype=str(dtype).split('.')[-1])
    rows = [
        dict(
            tag,
            kernel=e.key[:110],
            category=cat,
            calls=e.count,
            self_ms=round(t / 1e3, 2)) for e, t, cat in events[:top]
    ]
    by_category = {}
    for _, t, cat in events:
        by_category[cat] = by_category.get(cat, 0) + t / 1e3
    rows.append(
        dict(
            tag,
            summary=True,
            wall_ms=wall_ms,
            kernels_ms=round(sum(t for _, t, _ in events) / 1e3, 2),
            launches=sum(e.count for e, _, _ in events),
            by_category={
                k: round(v, 2)
                for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])
            }))
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


# (model, autocast dtype) of the profile section
PROFILED = (('rest_small', torch.float16), ('rest_small', torch.bfloat16),
            ('swin_t', torch.float16), ('swin_t', torch.bfloat16),
            ('restv2_tiny', torch.float16))


def depthwise_by_slices(x, weight, bias, stride, padding):
    """A depthwise convolution as a sum of k*k strided slices (a candidate
    replacement whose backward is elementwise)."""
    k = weight.shape[-1]
    xp = F.pad(x, (padding, ) * 4)
    ho = (x.shape[2] + 2 * padding - k) // stride + 1
    wo = (x.shape[3] + 2 * padding - k) // stride + 1
    out = None
    for i in range(k):
        for j in range(k):
            part = xp[:, :, i:i + stride * (ho - 1) + 1:stride,
                      j:j + stride * (wo - 1) + 1:stride]
            term = part * weight[:, 0, i, j].view(1, -1, 1, 1)
            out = term if out is None else out + term
    return out + bias.view(1, -1, 1, 1)


def conv_rows():
    # (what, channels, H, W, kernel, stride, padding): ResT-Small at
    # 800x1344, batch 2
    cases = [('sr stage 1', 64, 200, 336, 9, 8, 4),
             ('sr stage 2', 128, 100, 168, 5, 4, 2),
             ('sr stage 3', 256, 50, 84, 3, 2, 1),
             ('PA stage 1', 64, 200, 336, 3, 1, 1),
             ('PA stage 2', 128, 100, 168, 3, 1, 1)]
    rows = []
    for what, c, h, w, k, s, p in cases:
        h, w = h // SCALE, w // SCALE
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            x = torch.randn(
                2, c, h, w, device=DEVICE, dtype=dtype, requires_grad=True)
            wt = torch.randn(
                c, 1, k, k, device=DEVICE, dtype=dtype, requires_grad=True)
            b = torch.randn(c, device=DEVICE, dtype=dtype, requires_grad=True)
            variants = {
                'cudnn': (True, False, None),
                'cudnn benchmark': (True, True, None),
                'native': (False, False, None),
                'slices': (True, False, depthwise_by_slices),
            }
            for name, (cudnn, bench, fn) in variants.items():
                torch.backends.cudnn.enabled = cudnn
                torch.backends.cudnn.benchmark = bench

                def run(fn=fn):
                    if fn is None:
                        y = F.conv2d(x, wt, b, s, p, groups=c)
                    else:
                        y = fn(x, wt, b, s, p)
                    y.float().sum().backward()

                try:
                    ms = timed(run)
                except Exception as e:  # noqa: BLE001
                    ms = f'{type(e).__name__}: {e}'[:120]
                row = dict(
                    conv=what,
                    dtype=str(dtype).split('.')[-1],
                    variant=name,
                    fwd_bwd_ms=ms)
                print(json.dumps(row), flush=True)
                rows.append(row)
            torch.backends.cudnn.enabled = True
            torch.backends.cudnn.benchmark = False
    return rows


def variant_rows(name='rest_small'):
    """fp16 training step of ``name`` with this version's two GPU changes
    undone one at a time (the attributions of the speed-up)."""
    from mmrest.backbones import kernels
    mix_heads, emsa_attention = kernels.mix_heads, kernels.emsa_attention

    def one_head_float32(q, k, v, mix=None, *args, **kwargs):
        if mix is None:
            with torch.autocast(q.device.type, enabled=False):
                return emsa_attention(q.float(), k.float(), v.float(), mix,
                                      *args, **kwargs).to(q.dtype)
        return emsa_attention(q, k, v, mix, *args, **kwargs)

    variants = [
        ('this version', mix_heads, emsa_attention),
        ('mix heads by baddbmm', kernels.mix_heads_baddbmm, emsa_attention),
        ('one head in float32', mix_heads, one_head_float32),
        ('both (the former code)', kernels.mix_heads_baddbmm, one_head_float32)
    ]
    model, x = build(name), image()
    rows = []
    try:
        for what, mix_fn, attn_fn in variants:
            kernels.mix_heads, kernels.emsa_attention = mix_fn, attn_fn
            row = dict(
                model=name,
                variant=what,
                fwd_bwd_fp16_ms=timed(step_fn(model, x, True)))
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        kernels.mix_heads, kernels.emsa_attention = mix_heads, emsa_attention
    return rows


def eval224_rows(names=('rest_base', 'rest_lite', 'swin_t'), rounds=3):
    """Inference throughput at 64x3x224x224 under fp16 autocast, with the
    one-head attention in float16 (this version) and in float32 (the
    former code), interleaved round by round."""
    from mmrest.backbones import kernels
    emsa_attention = kernels.emsa_attention

    def one_head_float32(q, k, v, mix=None, *args, **kwargs):
        if mix is None:
            with torch.autocast(q.device.type, enabled=False):
                return emsa_attention(q.float(), k.float(), v.float(), mix,
                                      *args, **kwargs).to(q.dtype)
        return emsa_attention(q, k, v, mix, *args, **kwargs)

    x = torch.randn(64, 3, 224 // SCALE, 224 // SCALE, device=DEVICE)
    rows = []
    models = {name: build(name) for name in names}
    for model in models.values():
        model.eval()
    try:
        for r in range(rounds):
            for name, model in models.items():
                for what, fn in (('this version', emsa_attention),
                                 ('one head in float32', one_head_float32)):
                    if what != 'this version' and not name.startswith('rest'):
                        continue
                    kernels.emsa_attention = fn
                    ms = timed(step_fn(model, x, False), repeats=10, warmup=3)
                    rows.append(
                        dict(
                            round=r,
                            model=name,
                            variant=what,
                            img_s=round(64 / ms * 1e3)))
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        kernels.emsa_attention = emsa_attention
    return rows


# ResT-Small's multi-head EMSA cores at 800x1344, batch 2: (stage, heads,
# queries N, keys M); 64 channels a head
TRITON_SHAPES = (('stage 2', 2, 100 * 168, 25 * 42),
                 ('stage 3', 4, 50 * 84, 25 * 42), ('stage 4', 8, 25 * 42,
                                                    25 * 42))
# The 'triton' core's launches tried at each shape: (rows per tile, warps,
# pipeline stages[, splits]), None for launch_config's own choice; None
# alone is the default launch (8 warps: 64 rows at stage 2; at stages 3
# and 4 on an H100 / H200 64 rows in the forward kernel, whose products
# then compile to wgmma, and 32 in the backward ones; the keys / values
# kernel's query rows split by query_splits: 7 ways at stage 2 on an
# H200, unsplit at 3 and 4). (None, None, None, 1) is the default without
# the split (the launch before it), to measure what splitting gives.
# (32, 8, 3) is the choice before the forward's 64 rows at stages 3 and 4
# (mma.sync); (64, 8, 3) gives the backward kernels wgmma too, and spills
# 216 to 1544 bytes a thread there. With 4 warps, ptxas (sm_90, fp16,
# tests/_triton_aot.py) reports no spills at 32 rows up to C = 256; at
# C = 512 a few hundred bytes (stage 4); at 64 rows from C = 128 on.
TRITON_LAUNCHES = (None, (None, None, None, 1), (32, 8, 3), (64, 8, 3),
                   (32, 4, 3), (16, 4, 3), (64, 4, 3), (16, 2, 3), (32, 4, 2))


def launch_options(launch) -> dict:
    """``attention_core``'s options for a launch of ``TRITON_LAUNCHES``:
    ``block`` and ``launch=dict(num_warps, num_stages, splits)``, each
    only where given."""
    if launch is None:
        return {}
    block, *rest = launch
    options = {} if block is None else dict(block=block)
    given = {
        key: value
        for key, value in zip(('num_warps', 'num_stages', 'splits'), rest)
        if value is not None
    }
    if given:
        options['launch'] = given
    return options


def _core_inputs(heads, n, m, dtype=torch.float16, seed=0):
    """Queries (B, h, N, 64), keys and values (B, h, M, 64) in ``dtype``,
    the mixing weight and bias in float32 (autocast's), all requiring
    grad, and an upstream gradient of the output. Normal draws: the
    queries with the attention's scale folded in (spread 64 ** -0.5),
    keys, values and the gradient standard, the mixing weight of spread
    0.5; a zero bias."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    d, b = 64, 2
    q, k, v = (torch.randn(b, heads, rows, d, generator=gen, device=DEVICE) *
               scale for rows, scale in ((n, d**-0.5), (m, 1.0), (m, 1.0)))
    mix = torch.randn(heads, heads, generator=gen, device=DEVICE) * 0.5
    bias = torch.zeros(heads, device=DEVICE)
    grad = torch.randn(b, heads, n, d, generator=gen, device=DEVICE)
    tensors = [t.to(dtype) for t in (q, k, v)] + [mix, bias]
    return [t.requires_grad_() for t in tensors], grad.to(dtype)


def core_flop(heads: int,
              n: int,
              m: int,
              d: int = 64,
              batch: int = 2) -> tuple:
    """The 'triton' core's kernels' FLOPs at a shape (batch, ``heads``
    heads of ``d`` channels, ``n`` queries, ``m`` keys): the forward
    kernel's, and the forward's plus both backward kernels'
    (:func:`mmrest_tools.op_census.kernel_flop`)."""
    from mmrest_tools.op_census import KERNELS, kernel_flop
    shapes = ((batch, heads, n, heads * d), (batch, m, heads * d),
              (batch, heads, m, d))
    flop = [kernel_flop(name, *shapes) for name in KERNELS]
    return flop[0], sum(flop)


def _time_core(fn, inputs, grad):
    """Milliseconds of ``fn(*inputs)`` alone and with its backward; the
    output (float32) for comparisons."""

    def forward():
        with torch.no_grad():
            fn(*inputs)

    def both():
        fn(*inputs).backward(grad)

    with torch.no_grad():
        out = fn(*inputs).float()
    return timed(forward), timed(both), out


def _triton_unable():
    """Why the 'triton' core cannot run here (triton < 3; the CPU outside
    Triton's interpreter), or None."""
    from mmrest.backbones import emsa_triton
    if not emsa_triton.available():
        return 'needs triton >= 3'
    if DEVICE == 'cpu' and not emsa_triton.interpreted():
        return 'the CPU needs TRITON_INTERPRET=1'
    return None


def triton_rows(budget_s=240.0):
    """The 'triton' core of EMSA alone at ResT-Small's shapes (fp16 inputs,
    as under autocast), forward and forward + backward, with each launch of
    TRITON_LAUNCHES, beside the 'chunked' core; per triton row the output's
    relative difference from the chunked core's (the same formula, the
    products rounded to fp16) and the kernels' products per second
    (:func:`core_flop` over the times, TFLOP/s). The chunked rows come
    first, then each launch at the three stages in turn; launches stop
    when ``budget_s`` has passed (each new launch compiles three kernels),
    so the first launches of TRITON_LAUNCHES are the ones measured. Where
    the core cannot run (triton < 3; the CPU outside Triton's interpreter)
    its rows say so."""
    from mmrest.backbones import emsa_triton, kernels
    unable = _triton_unable()
    launches = TRITON_LAUNCHES if DEVICE == 'cuda' else TRITON_LAUNCHES[:2]

    def chunked(q, k, v, mix, bias):
        with kernels.use_emsa_core('chunked'):
            return kernels.emsa_attention(q, k, v, mix, bias)

    t0, rows, cases = time.time(), [], []
    for stage, heads, n, m in TRITON_SHAPES:
        n, m = max(1, n // SCALE**2), max(1, m // SCALE**2)
        inputs, grad = _core_inputs(heads, n, m)
        fwd, both, ref = _time_core(chunked, inputs, grad)
        rows.append(
            dict(stage=stage, core='chunked', fwd_ms=fwd, fwd_bwd_ms=both))
        print(json.dumps(rows[-1]), flush=True)
        cases.append((stage, inputs, grad, core_flop(heads, n, m), ref))
    # each launch at every stage before the next launch: a budget that runs
    # out leaves the last launches untried, not the last stages
    for launch in launches:
        for stage, inputs, grad, flops, ref in cases:
            row = dict(stage=stage, core='triton', launch=launch or 'default')
            if unable or time.time() - t0 > budget_s:
                rows.append(dict(row, skipped=unable or 'budget'))
                continue
            options = launch_options(launch)

            def core(q, k, v, mix, bias, options=options):
                return emsa_triton.attention_core(q, k, v, mix, bias,
                                                  **options)

            try:
                fwd, both, out = _time_core(core, inputs, grad)
                row.update(
                    fwd_ms=fwd,
                    fwd_bwd_ms=both,
                    rel_diff_chunked=float((out - ref).norm() / ref.norm()))
                # the kernels' products per second (the operators around
                # them in the times too): against the GPU's peak
                row.update(
                    (f'{key}_tflops', float(f'{flop / (ms * 1e9):.3g}'))
                    for key, flop, ms in zip(('fwd',
                                              'fwd_bwd'), flops, (fwd, both)))
            except Exception as e:  # noqa: BLE001
                row['error'] = f'{type(e).__name__}: {e}'[:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# The fitted section's stand-in choice of rows. At C = 128 in fp16, for
# sm_90 (ptxas here, tests/_triton_aot.py 90:fp16:128:64:256), the keys /
# values kernel then needs 332800 bytes of shared memory, more than any
# GPU's 227 KiB (the forward 163840, the queries' kernel 196608: those fit
# an H100 / H200 and run as they are); at 128 rows it needs 165888.
OVERSIZED_ROWS = 256


def fitted_rows():
    """The 'triton' core with launch_config's choice stood in by
    ``OVERSIZED_ROWS`` rows (stage 2's heads and channels, a few hundred
    queries and keys), as on a GPU with less shared memory than the tiles
    were chosen for: on a GPU Triton refuses the launches that need more
    than it has (``OutOfResources``; on an H100 / H200 the keys / values
    kernel's), the others spill registers, and ``emsa_triton.fitted_launch``
    steps each down, warning once. The row gives the launch each kernel
    took (rows, stages), the warnings, the bytes a thread each launch
    compiled spilled (``emsa_triton.SPILLED``: kernel, BLOCK_C, BLOCK_D,
    rows, stages, bytes; None where ``spilled_bytes`` learnt nothing, which
    on a GPU would leave the spill check inert), the seconds (each refused
    launch is compiled first), and the output's and gradients' largest
    relative difference from the default launch's. On the CPU's
    interpreter nothing is refused and nothing spills."""
    import warnings

    from mmrest.backbones import emsa_triton
    unable = _triton_unable()
    if unable:
        return [dict(skipped=unable)]
    inputs, grad = _core_inputs(2, 512 // SCALE, 128 // SCALE)

    def run():
        out = emsa_triton.attention_core(*inputs)
        grads = torch.autograd.grad(out, inputs[:4], grad)
        return [out.detach()] + list(grads)

    ref = run()
    choice, saved = emsa_triton.launch_config, dict(emsa_triton._FITTED)

    def oversized(*args, **kwargs):
        return dict(
            choice(*args, **kwargs),
            BLOCK_N=OVERSIZED_ROWS,
            BLOCK_M=OVERSIZED_ROWS)

    emsa_triton._FITTED.clear()
    emsa_triton.launch_config = oversized
    probed = set(emsa_triton.SPILLED)
    t0 = time.time()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            got = run()
        fitted = {
            key[0]: (config['BLOCK_N'], config['num_stages'])
            for key, config in emsa_triton._FITTED.items()
        }
        spilled = [[
            key[0], *key[3:], found
        ] for key, found in sorted(emsa_triton.SPILLED.items(), key=str)
                   if key not in probed]
    finally:
        emsa_triton.launch_config = choice
        emsa_triton._FITTED.clear()
        emsa_triton._FITTED.update(saved)
    return [
        dict(
            fitted=fitted,
            warnings=[
                str(w.message) for w in caught if 'it runs' in str(w.message)
            ],
            spilled=spilled,
            seconds=round(time.time() - t0, 1),
            max_rel_diff=max(
                float((g.float() - r.float()).norm() / r.float().norm())
                for g, r in zip(got, ref)))
    ]


SECTIONS = ('variants', 'profile', 'models', 'convs', 'eval224', 'triton',
            'fitted')


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Where a ResT training step spends its GPU time; '
        'profile.json in --out.')
    parser.add_argument('--out', default='work_dirs/gpu_profile')
    parser.add_argument(
        '--smoke',
        action='store_true',
        help='CPU, sizes / 8: checks that the script runs')
    parser.add_argument(
        '--sections', nargs='+', default=SECTIONS, choices=SECTIONS)
    parser.add_argument(
        '--models', nargs='+', default=['rest_small', 'restv2_tiny', 'swin_t'])
    parser.add_argument(
        '--triton-budget-s',
        type=float,
        default=240.0,
        help='the triton section tries no new launch after this long')
    args = parser.parse_args(argv)
    global DEVICE, SCALE, REPEATS
    if args.smoke:
        DEVICE, SCALE, REPEATS = 'cpu', 8, (1, 0)
    else:
        from mmrest_tools import ops_shim
        ops_shim.install(device='cuda')
        ops_shim.patch_package_lookup()
        print(
            torch.__version__,
            torch.version.cuda,
            torch.backends.cudnn.version(),
            torch.cuda.get_device_name(0),
            versions(),
            flush=True)
    import mmrest  # noqa: F401
    os.makedirs(args.out, exist_ok=True)
    result = {}
    t0 = time.time()
    sections = dict(
        variants=variant_rows,
        convs=conv_rows,
        eval224=eval224_rows,
        profile=lambda:
        [row for name, dtype in PROFILED for row in profile_rows(name, dtype)],
        triton=lambda: triton_rows(args.triton_budget_s),
        fitted=fitted_rows,
        models=lambda: model_rows(args.models))
    for key in args.sections:
        fn = sections[key]
        try:
            result[key] = fn()
        except Exception as e:  # noqa: BLE001
            result[key] = f'{type(e).__name__}: {e}'[:500]
            print(key, result[key], flush=True)
        print(f'== {key} done at {time.time() - t0:.0f} s', flush=True)
        with open(osp.join(args.out, 'profile.json'), 'w') as f:
            json.dump(result, f, indent=1)
