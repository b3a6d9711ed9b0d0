# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Speed and memory of ResT backbones against the literal EMSA and mmdet's.

What is measured, for each backbone (float32, CPU, a fixed number of
intra-op threads):

* ``params``: number of parameters;
* ``ips_224``: images per second at 224 x 224, batch 16, eval mode, no
  autograd;
* ``spi_800``: seconds per image at 800 x 1344, batch 1, eval mode, no
  autograd;
* ``train_peak_800``: peak memory of one training step (train mode,
  forward and backward of the sum of the mean of every output, no
  optimizer) at 800 x 1344, batch 1.

Speeds are medians over ``repeats`` rounds (``repeats_224`` at 224 x 224,
where a round is short and more rounds steady the median) after one
warm-up call per model; the models take turns within each round
(interleaved), so a change in the machine's load hits all of them alike
and ratios stay fair.

Peak memory is measured in a fresh Python process per backbone: it builds
the model, runs one small training step (64 x 64) so that libraries and
their caches are initialised, creates the input, reads its resident set
size (RSS, ``/proc/self/statm``), resets the kernel's high-water mark of
the RSS to it (``/proc/self/clear_refs``), runs the training step and reads
the high-water mark (``VmHWM`` in ``/proc/self/status``).
The figure is the high-water mark minus that baseline: all the memory the
step itself needed (activations saved for backward, gradients,
temporaries, allocator overhead), whatever allocates it. The process runs
with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (``MMAP_THRESHOLD``), so that
memory freed during the step leaves the RSS and the figure does not depend
on how the allocator happened to reuse it.

Backbones (``BACKBONES``): ``rest_{lite,small,base,large}`` (ResT as
shipped), ``rest_{arch}_literal`` (the same model computed literally,
:func:`mmrest.backbones.to_literal`: N x M attention maps, 1x1 conv over
heads, InstanceNorm, BatchNorms as separate ops, NCHW maps between stages,
the MLP on all tokens at once), ``rest_small_compiled`` (ResT-Small through
``torch.compile``, Inductor, one graph per input size, compiled in the
warm-up; no memory figure), ``restv2_tiny`` and ``restv2_tiny_literal``
(ResT v2-T and :func:`mmrest.backbones.to_literal`),
``resnet50``, ``swin_t`` and ``pvt_small``
from mmdet, each configured as in mmdet's detection configs (Mask R-CNN
R-50, Mask R-CNN Swin-T, RetinaNet PVT-S), without pretrained weights; the
ResTs with the settings of mmrest's Mask R-CNN configs
(:mod:`mmrest_tools.compared`, the GPU check's builder too).
"""
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmrest_tools import compared

ARCHS = ('lite', 'small', 'base', 'large')
BACKBONES = tuple([f'rest_{a}'
                   for a in ARCHS] + [f'rest_{a}_literal' for a in ARCHS] + [
                       'rest_small_compiled', 'restv2_tiny',
                       'restv2_tiny_literal', 'resnet50', 'swin_t', 'pvt_small'
                   ])
# compiled on their first call at each size (the warm-up): their training
# memory would count the compiler's, so the memory column leaves them out
COMPILED = ('rest_small_compiled', )
# the quick table: ResT-S, its literal form and the goal's reference
QUICK = ('rest_small', 'rest_small_literal', 'resnet50')
SIZE_224 = (224, 224)
BATCH_224 = 16
SIZE_800 = (800, 1344)


def build_backbone(name: str) -> nn.Module:
    """A backbone of the table by name (``BACKBONES``), in eval mode, with
    its default (random) initialisation: the compared networks of
    :func:`mmrest_tools.compared.build_backbone`, and ResT-Small through
    ``torch.compile`` (``rest_small_compiled``).

    Raises:
        KeyError: For an unknown name.
    """
    if name not in BACKBONES:
        raise KeyError(f'unknown backbone {name!r}; choose from '
                       f'{list(BACKBONES)}')
    if name.endswith('_compiled'):  # Inductor, one graph per size
        model = compared.build_backbone(name[:-len('_compiled')])
        return torch.compile(model, dynamic=False)
    return compared.build_backbone(name)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _seconds(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(
        models: Dict[str, nn.Module],
        shape: Sequence[int],
        repeats: int = 3,
        warmup: int = 1,
        log: Optional[Callable[[str],
                               None]] = print) -> Dict[str, List[float]]:
    """Seconds per forward pass of each model on one ``shape`` batch.

    Eval mode, no autograd. Every model runs ``warmup`` times, then the
    models take turns for ``repeats`` rounds, so that a change in the
    machine's load during the run hits all of them alike.

    Returns:
        dict: name -> the ``repeats`` timings in seconds.
    """
    torch.manual_seed(0)
    x = torch.rand(*shape)
    times = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for r in range(repeats):
            for name, model in models.items():
                times[name].append(_seconds(lambda: model(x)))
            if log:
                log(f'  round {r + 1}/{repeats}: ' +
                    ', '.join(f'{n} {t[-1]:.3f} s' for n, t in times.items()))
    return times


def measure_speeds(models: Dict[str, nn.Module],
                   repeats: int = 3,
                   batch: int = BATCH_224,
                   small: Sequence[int] = SIZE_224,
                   large: Sequence[int] = SIZE_800,
                   log: Optional[Callable[[str], None]] = print,
                   repeats_small: Optional[int] = None) -> Dict[str, Dict]:
    """Parameters and the two speeds of each model, timed interleaved:
    ``repeats_small`` rounds (default ``repeats``) at the ``small`` size and
    ``repeats`` at the ``large`` one.

    Returns:
        dict: name -> a table row: ``model``, ``params_M``,
        ``img_per_s_224_b16`` (``batch`` images of ``small`` size) and
        ``s_per_img_800x1344`` (one image of ``large`` size), medians of
        ``repeats`` timings after one warm-up, with the raw timings
        (``seconds_224_b16``, ``seconds_800x1344``).
    """
    rows = {
        name: dict(model=name, params_M=count_params(model) / 1e6)
        for name, model in models.items()
    }
    repeats_small = repeats if repeats_small is None else repeats_small
    if log:
        log(f'{small[0]}x{small[1]}, batch {batch}, '
            f'{torch.get_num_threads()} threads, {repeats_small} rounds')
    times = time_interleaved(
        models, (batch, 3, *small), repeats_small, log=log)
    for name, ts in times.items():
        rows[name].update(
            img_per_s_224_b16=batch / statistics.median(ts),
            seconds_224_b16=ts)
    if log:
        log(f'{large[0]}x{large[1]}, batch 1, '
            f'{torch.get_num_threads()} threads, {repeats} rounds')
    times = time_interleaved(models, (1, 3, *large), repeats, log=log)
    for name, ts in times.items():
        rows[name].update(
            s_per_img_800x1344=statistics.median(ts), seconds_800x1344=ts)
    return rows


def measure_speed(name: str,
                  repeats: int = 3,
                  batch: int = BATCH_224,
                  small: Sequence[int] = SIZE_224,
                  large: Sequence[int] = SIZE_800) -> Dict:
    """:func:`measure_speeds` of one backbone, by name, silently."""
    return measure_speeds({name: build_backbone(name)},
                          repeats,
                          batch,
                          small,
                          large,
                          log=None)[name]


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _reset_peak_rss() -> bool:
    """Set the kernel's RSS high-water mark of this process to its current
    RSS (``/proc/self/clear_refs``, Linux >= 4.0); False where refused."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """The RSS high-water mark of this process's memory (``VmHWM``).

    Not ``getrusage``'s ``ru_maxrss``: that survives ``execve``, so a child
    started by a large parent reports at least the parent's size.
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _training_step(model: nn.Module, x: torch.Tensor):
    sum(out.mean() for out in model(x)).backward()


def train_step_peak_memory_here(name: str,
                                size: Sequence[int] = SIZE_800,
                                threads: int = 2) -> Dict:
    """Peak memory of one training step, measured in this process.

    Meant for a fresh process (:func:`train_step_peak_memory` starts one):
    the kernel's RSS high-water mark is reset before the step where Linux
    allows it (``peak_reset``), and otherwise holds all the process did.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_backbone(name)
    model.train()
    _training_step(model, torch.rand(1, 3, 64, 64))  # initialise libraries
    model.zero_grad(set_to_none=True)
    x = torch.rand(1, 3, *size)
    baseline = _rss_bytes()
    reset = _reset_peak_rss()
    seconds = _seconds(lambda: _training_step(model, x))
    peak = _peak_rss_bytes()
    return dict(
        model=name,
        size=list(size),
        baseline_rss=baseline,
        peak_rss=peak,
        peak_increase=peak - baseline,
        peak_reset=reset,
        malloc_mmap_threshold=os.environ.get('MALLOC_MMAP_THRESHOLD_'),
        step_seconds=seconds)


# glibc's malloc keeps freed blocks for reuse and raises its mmap threshold
# as it goes, so the same step's peak RSS varied by 30% from run to run
# (rest_small: 1.9 to 2.6 GB). Blocks of 64 KiB or more mapped on their own
# and unmapped when freed make the peak RSS follow the live tensors: the
# same figure, to the MB, run after run.
MMAP_THRESHOLD = 64 * 1024


def train_step_peak_memory(name: str,
                           size: Sequence[int] = SIZE_800,
                           threads: int = 2,
                           timeout: Optional[float] = None) -> Dict:
    """:func:`train_step_peak_memory_here` in a fresh Python process,
    with ``MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD`` unless the environment
    sets it.

    Returns:
        dict: its result, or ``dict(error=...)`` when the process failed
        (for example killed for lack of memory).
    """
    cmd = [
        sys.executable, '-m', 'mmrest_tools.benchmark', 'train-memory', name,
        f'{size[0]}x{size[1]}',
        str(threads)
    ]
    env = dict(os.environ)
    env.setdefault('MALLOC_MMAP_THRESHOLD_', str(MMAP_THRESHOLD))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (root, env.get('PYTHONPATH')) if p)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f'timed out after {timeout} s')
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
        return dict(error=f'exit status {proc.returncode}: ' +
                    ' | '.join(tail))
    return json.loads(lines[-1])


def machine_info(threads: int) -> Dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(
        cpu=cpu,
        logical_cpus=os.cpu_count(),
        threads=threads,
        torch=torch.__version__,
        python=platform.python_version(),
        dtype='float32',
        device='cpu')


def _load_average() -> List[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


METHOD = dict(
    speed='wall-clock time of model(x) in eval mode under torch.no_grad; '
    'one warm-up call per model, then the models take turns for R rounds '
    '(interleaved) and the median of each model\'s R timings is reported',
    memory='one training step (train mode, forward, backward of the sum of '
    'the outputs\' means, no optimizer) in a fresh Python process per '
    'backbone, after a 64x64 warm-up step: the kernel\'s peak resident set '
    'size (VmHWM, reset just before the step) minus the resident set size '
    'just before '
    'the step, with glibc mapping every block of 64 KiB or more on its own '
    '(MALLOC_MMAP_THRESHOLD_=65536) so that freed memory leaves the RSS; '
    'MB = 2^20 bytes')


def run(names: Sequence[str] = BACKBONES,
        repeats: int = 3,
        memory: bool = True,
        threads: int = 2,
        memory_names: Optional[Sequence[str]] = None,
        log: Callable[[str], None] = print,
        repeats_224: Optional[int] = None) -> Dict:
    """Measure the backbones ``names``; see the module docstring.

    Args:
        names: Backbone names (``BACKBONES``).
        repeats: Timed rounds at 800 x 1344 (the median is reported).
        memory: Measure the training-step peak memory.
        threads: ``torch.set_num_threads`` (here and in the memory
            processes).
        memory_names: The backbones whose memory is measured (default:
            all of ``names`` but the compiled ones).
        repeats_224: Timed rounds at 224 x 224 (default ``repeats``).

    Returns:
        dict: ``machine``, ``settings``, ``method``, ``load_average_start``
        and ``_end`` (1, 5 and 15 minutes), ``rows`` (one dict per
        backbone, see :func:`measure_speeds`, with ``train_peak_MB_800x1344``
        and the raw timings) and ``comparisons``.
    """
    for name in list(names) + list(memory_names or []):
        if name not in BACKBONES:  # fail before an hour of measuring
            raise KeyError(f'unknown backbone {name!r}; choose from '
                           f'{list(BACKBONES)}')
    repeats_224 = repeats if repeats_224 is None else repeats_224
    torch.set_num_threads(threads)
    started = time.time()
    report = dict(
        machine=machine_info(threads),
        settings=dict(
            repeats=repeats,
            repeats_224=repeats_224,
            warmup=1,
            size_224=list(SIZE_224),
            batch_224=BATCH_224,
            size_800=list(SIZE_800),
            batch_800=1),
        method=METHOD,
        load_average_start=_load_average())
    models = {name: build_backbone(name) for name in names}
    rows = measure_speeds(
        models,
        repeats,
        BATCH_224,
        SIZE_224,
        SIZE_800,
        log,
        repeats_small=repeats_224)
    del models
    if memory:
        if memory_names is None:
            memory_names = [n for n in names if n not in COMPILED]
        for name in memory_names:
            log(f'training-step peak memory of {name} at 800x1344')
            result = train_step_peak_memory(name, SIZE_800, threads)
            if 'error' in result:
                log(f'  failed: {result["error"]}')
                rows[name]['train_peak_error'] = result['error']
            else:
                mb = result['peak_increase'] / 2**20
                log(f'  {mb:.0f} MB')
                rows[name]['train_peak_MB_800x1344'] = mb
    report['load_average_end'] = _load_average()
    report['seconds'] = round(time.time() - started, 1)
    report['rows'] = list(rows.values())
    report['comparisons'] = compare(report['rows'])
    return report


def compare(rows: Sequence[Dict]) -> Dict:
    """Each ResT against its literal form and against ResNet-50."""
    by_name = {row['model']: row for row in rows}
    r50 = by_name.get('resnet50', {})
    out = {}
    for arch in ARCHS:
        fast = by_name.get(f'rest_{arch}')
        lit = by_name.get(f'rest_{arch}_literal', {})
        if not fast:
            continue
        item = {}

        def ratio(key, a, b, num, den):
            if num in a and den in b:
                item[key] = a[num] / b[den]

        ratio('speedup_800x1344_vs_literal', lit, fast, 's_per_img_800x1344',
              's_per_img_800x1344')
        ratio('speedup_224_b16_vs_literal', fast, lit, 'img_per_s_224_b16',
              'img_per_s_224_b16')
        ratio('train_memory_vs_literal', fast, lit, 'train_peak_MB_800x1344',
              'train_peak_MB_800x1344')
        ratio('time_800x1344_vs_resnet50', fast, r50, 's_per_img_800x1344',
              's_per_img_800x1344')
        if item:
            out[f'rest_{arch}'] = item
    return out


HEADER = ('| backbone | params (M) | 224x224 b16 (img/s) | '
          '800x1344 b1 (s/img) | train step peak @800x1344 (MB) |\n'
          '|---|---:|---:|---:|---:|')


def format_row(row: Dict) -> str:
    """One backbone as a row of the Markdown table (``HEADER``)."""

    def fmt(key, spec):
        return format(row[key], spec) if key in row else '-'

    peak = 'failed' if 'train_peak_error' in row else \
        fmt('train_peak_MB_800x1344', '.0f')
    return (f'| {row["model"]} | {row["params_M"]:.2f} | '
            f'{fmt("img_per_s_224_b16", ".1f")} | '
            f'{fmt("s_per_img_800x1344", ".2f")} | {peak} |')


def format_table(report: Dict) -> str:
    """The report as Markdown: the table, the ratios and how they were
    measured."""
    lines = [HEADER] + [format_row(row) for row in report['rows']] + ['']
    texts = dict(
        speedup_800x1344_vs_literal='{:.2f}x as fast as its literal form '
        'at 800x1344',
        speedup_224_b16_vs_literal='{:.2f}x at 224x224 b16',
        train_memory_vs_literal='training-step peak {:.2f} of the '
        'literal form\'s',
        time_800x1344_vs_resnet50='{:.2f}x the time of ResNet-50 at '
        '800x1344')
    for name, item in report['comparisons'].items():
        lines.append(f'- {name}: ' + '; '.join(texts[key].format(value)
                                               for key, value in item.items()))
    m = report['machine']
    lines += [
        '', f'{m["cpu"]}, {m["logical_cpus"]} logical CPUs, '
        f'torch.set_num_threads({m["threads"]}), torch {m["torch"]}, '
        f'float32. Load average (1, 5, 15 min): '
        f'{report["load_average_start"]} at the start, '
        f'{report["load_average_end"]} at the end. '
        f'{_rounds(report["settings"])}. Speed: '
        f'{report["method"]["speed"]}. Memory: {report["method"]["memory"]}.'
    ]
    return '\n'.join(lines)


def _rounds(settings: Dict) -> str:
    return (f'{settings["repeats_224"]} rounds at 224x224, '
            f'{settings["repeats"]} at 800x1344')


def write_json(report: Dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=1)


def _main(argv: Sequence[str]):
    # the child process of train_step_peak_memory
    if len(argv) != 4 or argv[0] != 'train-memory':
        raise SystemExit('usage: python -m mmrest_tools.benchmark '
                         'train-memory NAME HxW THREADS')
    size = [int(s) for s in argv[2].split('x')]
    print(json.dumps(train_step_peak_memory_here(argv[1], size, int(argv[3]))))


if __name__ == '__main__':
    _main(sys.argv[1:])
