# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Small helpers of every section: timing, error measures, device and
version records."""
import contextlib
import math
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .settings import CUDNN_BENCHMARK


def _short_error(e: BaseException, limit: int = 300) -> str:
    text = f'{type(e).__name__}: {e}'.strip().replace('\n', ' ')
    return text if len(text) <= limit else text[:limit] + '...'


def _mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else n / 2**20


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    """'float16', 'bfloat16'; None (no autocast) is 'float32'."""
    return 'float32' if dtype is None else str(dtype).replace('torch.', '')


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def backbone_step(model: nn.Module,
                  x: torch.Tensor,
                  amp: Optional[torch.dtype] = None,
                  backward: bool = True) -> Sequence[torch.Tensor]:
    """One step of a backbone as the checks time, profile and count it:
    the forward on ``x`` under ``amp`` autocast on ``x``'s device (None:
    float32), then the backward of the loss of every output (the sum of
    their means in float32). With ``backward=False`` the forward alone,
    without autograd. Gradients accumulate: zeroing them is the caller's.
    Returns the outputs."""
    with _autocast(x.device, amp), torch.set_grad_enabled(backward):
        outs = model(x)
    if backward:
        sum(o.float().mean() for o in outs).backward()
    return outs


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int,
               warmup: int) -> List[float]:
    """Milliseconds per call of ``fn``: CUDA events on the GPU (one
    synchronisation at the end), wall clock elsewhere, after ``warmup``
    untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == 'cuda':
        events = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in events]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def time_steps(
        step: Callable[[], object],
        device: torch.device,
        repeats: int,
        warmup: int,
        clock: Callable[[], float] = time.perf_counter,
        sync: Optional[Callable[[torch.device], None]] = None) -> List[float]:
    """Milliseconds of each of ``repeats`` calls of ``step`` (a training
    step: forward, backward, maybe an optimizer step) after ``warmup``
    untimed ones (cuDNN autotuning, the caching allocator's first
    allocations, lazy initialisations).

    Each timed call lies between two synchronisations of the device (the
    kernels queued before it are done when the clock starts, its own when
    it stops), so a step's figure is its whole time whatever it
    synchronises inside. Report the median of the list.

    Args:
        step (callable): One step.
        device (torch.device): Where it runs.
        repeats (int): Timed calls (at least 1).
        warmup (int): Untimed calls before them.
        clock (callable): Seconds (tests pass a fake clock).
        sync (callable, optional): Waits for ``device``; defaults to
            ``torch.cuda.synchronize`` on CUDA, nothing elsewhere.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f'time_steps needs repeats >= 1 and warmup >= 0, '
                         f'got {repeats} and {warmup}')
    sync = sync or _sync
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t = clock()
        step()
        sync(device)
        times.append((clock() - t) * 1e3)
    return times


def set_cudnn_benchmark(section: str) -> bool:
    """Sets ``torch.backends.cudnn.benchmark`` as ``CUDNN_BENCHMARK`` says
    for ``section`` and returns it (each section records it)."""
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK[section]
    return torch.backends.cudnn.benchmark


def recording_backend(name: str):
    """The dynamo backend ``name`` and a list that gets, for each graph
    dynamo hands it, whether the graph has symbolic sizes (an integer
    input, or a tensor input with a symbolic size)."""
    # torch._dynamo.lookup_backend from torch 2.2; the registry has it in
    # every supported torch
    from torch._dynamo.backends.registry import lookup_backend
    inner = lookup_backend(name)
    symbolic = []

    def backend(gm, example_inputs):
        symbolic.append(
            any(
                isinstance(v, torch.SymInt) or (
                    isinstance(v, torch.Tensor) and any(
                        isinstance(d, torch.SymInt) for d in v.shape))
                for v in example_inputs))
        return inner(gm, example_inputs)

    return backend, symbolic


def output_error(outs: Sequence[torch.Tensor],
                 refs: Sequence[torch.Tensor]) -> float:
    """The worst, over the outputs, of max |out - ref| / max |ref|.

    NaN where there is nothing to compare (no references): a check that
    compared nothing must not pass as an error of 0; inf where the outputs
    are not as many as the references.
    """
    if not refs:
        return float('nan')
    if len(outs) != len(refs):
        return float('inf')
    worst = 0.0
    for o, r in zip(outs, refs):
        o, r = o.double(), r.double()
        scale = float(r.abs().max())
        diff = float((o - r).abs().max())
        if not math.isfinite(diff):
            return float('inf')
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def grad_error(grads: Dict[str, torch.Tensor],
               refs: Dict[str, torch.Tensor]) -> float:
    """||g - g_ref|| / ||g_ref|| over all parameters' gradients at once.

    NaN where the reference has no gradients (nothing compared fails every
    bound instead of passing as 0); inf where a reference's gradient is
    missing.
    """
    if not refs:
        return float('nan')
    num = den = 0.0
    for name, r in refs.items():
        g = grads.get(name)
        if g is None:
            return float('inf')
        num += float(((g.double() - r.double())**2).sum())
        den += float((r.double()**2).sum())
    if not math.isfinite(num):
        return float('inf')
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def randomize_norms(model: nn.Module, seed: int = 0):
    """Random affine parameters and running statistics of every BatchNorm,
    and random affine parameters of every LayerNorm / GroupNorm, so that the
    folded and the separate normalisations are really compared."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
                     nn.GroupNorm)
            if isinstance(m, norms):
                if getattr(m, 'weight', None) is not None:
                    m.weight.copy_(1 + 0.2 *
                                   torch.randn(m.weight.shape, generator=gen))
                if getattr(m, 'bias', None) is not None:
                    m.bias.copy_(0.1 *
                                 torch.randn(m.bias.shape, generator=gen))


def versions() -> Dict[str, Optional[str]]:
    found = {}
    # triton: the 'triton' core's launches depend on its release
    for name in ('numpy', 'triton', 'torchvision', 'mmengine', 'mmcv',
                 'mmdet'):
        try:
            mod = __import__(name)
            found[name] = getattr(mod, '__version__', '?')
        except Exception as e:  # noqa: BLE001
            found[name] = f'not importable ({_short_error(e, 80)})'
    return found


def device_info(device: torch.device) -> Dict:
    info = dict(
        type=device.type,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_threads=torch.get_num_threads())
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        info.update(
            name=p.name,
            capability=f'{p.major}.{p.minor}',
            total_memory_MiB=p.total_memory / 2**20,
            multiprocessors=p.multi_processor_count,
            cudnn=torch.backends.cudnn.version())
    else:
        info['name'] = platform.processor() or 'cpu'
    return info
