# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Speed and memory of ResT against the literal EMSA and mmdet's backbones.

Figures are medians of several runs after a warm-up, in float32 on the CPU
(or on a GPU with ``device='cuda'``). The training-step peak memory is
measured in a fresh process per model: the peak resident set size after one
forward and backward pass at the detection size, minus the peak before it
(model and input already built), so each model's figure is its own.
"""
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn

BACKBONES = ('rest_lite', 'rest_small', 'rest_base', 'rest_large',
             'rest_small_literal', 'resnet50', 'swin_t', 'pvt_small')


def build_backbone(name: str) -> nn.Module:
    """One backbone of the table, with default (random) weights."""
    if name.startswith('rest_'):
        from mmrest import ResT
        arch = name.split('_')[1]
        model = ResT(arch=arch)
        if name.endswith('_literal'):
            from mmrest.testing import to_literal
            model = to_literal(model, copy_model=False)
        return model
    import mmrest  # noqa: F401  (mmdet's registry and checkpoints)
    from mmdet.models.backbones import (PyramidVisionTransformer, ResNet,
                                        SwinTransformer)
    if name == 'resnet50':
        return ResNet(depth=50, out_indices=(0, 1, 2, 3))
    if name == 'swin_t':
        return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2),
                               num_heads=(3, 6, 12, 24), window_size=7)
    if name == 'pvt_small':
        return PyramidVisionTransformer(num_layers=[3, 4, 6, 3])
    raise KeyError(f'unknown backbone {name!r}; choose from {BACKBONES}')


def _median_time(fn: Callable, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_speed(name: str, repeats: int = 3, batch: int = 16,
                  small=(224, 224), large=(800, 1344)) -> Dict:
    model = build_backbone(name)
    model.eval()  # (mmdet's ResNet.train returns None: no chaining)
    row = dict(model=name,
               params_M=sum(p.numel() for p in model.parameters()) / 1e6)
    with torch.no_grad():
        x = torch.rand(batch, 3, *small)
        row['img_per_s_224_b16'] = batch / _median_time(lambda: model(x),
                                                         repeats)
        x = torch.rand(1, 3, *large)
        row['s_per_img_800x1344'] = _median_time(lambda: model(x), repeats)
    return row


def train_step_peak_mb(name: str, size=(800, 1344)) -> float:
    """Peak memory of one training step, in a fresh process (MB)."""
    code = ('import sys; from mmrest.benchmark import _peak_in_process; '
            f'print(_peak_in_process({name!r}, {tuple(size)!r}))')
    out = subprocess.run([sys.executable, '-c', code], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _peak_in_process(name: str, size) -> float:
    model = build_backbone(name)
    model.train()
    x = torch.rand(1, 3, *size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sum(o.float().mean() for o in model(x)).backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024  # ru_maxrss is in KB on Linux


def run(names: List[str], repeats: int = 3, memory: bool = True) -> List:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in names:
        row = measure_speed(name, repeats)
        if memory:
            row['train_peak_MB_800x1344'] = train_step_peak_mb(name)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


HEADER = (f'{"backbone":<20}{"params (M)":>11}{"224 b16 img/s":>15}'
          f'{"800x1344 s/img":>16}{"train peak MB":>15}')


def format_row(row: Dict) -> str:
    peak = row.get('train_peak_MB_800x1344')
    return (f'{row["model"]:<20}{row["params_M"]:>11.2f}'
            f'{row["img_per_s_224_b16"]:>15.1f}'
            f'{row["s_per_img_800x1344"]:>16.2f}'
            f'{"-" if peak is None else f"{peak:.0f}":>15}')


def write_json(rows: List, path: str) -> None:
    import os
    import platform
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    meta = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                machine=platform.processor() or platform.machine(),
                dtype='float32', device='cpu')
    with open(path, 'w') as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
