# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""A GPU experiment beside the GPU check (:mod:`mmrest_tools.gpu_check`):
what the attention's chunk size costs in training on the GPU, against the
literal computation.

    python3 tools/device/gpu_variants.py --out DIR

Rows: one AMP training iteration of Mask R-CNN ResT-Small (1333x800, batch
2, as gpu_check's maskrcnn section) and one backbone training step (fp16
autocast, forward and backward, 800x1344 batch 2, as gpu_check's
throughput section), for several values of
``_GPU_CHUNK_ELEMENTS`` and for the literal backbone. Writes variants.json.
"""
import argparse
import json
import os.path as osp

import torch

#: (name, kernels.GPU_CHUNK_ELEMENTS, literal backbone) of each row
VARIANTS = [('chunks 32M (default)', 1 << 25, False),
            ('chunks 256M', 1 << 28, False), ('one chunk', 1 << 40, False),
            ('chunks 8M', 1 << 23, False), ('literal', 1 << 25, True)]
MASKRCNN_CONFIG = 'configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py'


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='What the attention\'s chunk size costs in training on '
        'the GPU; variants.json in --out.')
    parser.add_argument('--out', default='work_dirs/gpu_variants')
    args = parser.parse_args(argv)
    from mmrest_tools import ops_shim
    ops_shim.install(device='cuda')
    ops_shim.patch_package_lookup()
    from mmdet.registry import MODELS

    from mmrest.backbones import kernels
    from mmrest_tools.gpu_check import GpuCheck, Settings
    check = GpuCheck('cuda', args.out, Settings(False), deadline_s=1e9)
    rows = []
    orig_build = MODELS.build
    for name, chunk, literal in VARIANTS:
        kernels.GPU_CHUNK_ELEMENTS = chunk
        MODELS.build = _literal_build(orig_build) if literal else orig_build
        row = dict(variant=name, chunk_elements=chunk)
        try:
            row.update(_variant_row(check, literal))
        except Exception as e:  # noqa: BLE001
            row['error'] = f'{type(e).__name__}: {e}'[:300]
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
        with open(osp.join(args.out, 'variants.json'), 'w') as f:
            json.dump(rows, f, indent=1)
    MODELS.build = orig_build
    print_table(rows)


def _literal_build(orig_build):
    """mmdet's ``MODELS.build``, the built detector's backbone turned into
    its literal computation."""
    from mmrest.backbones import to_literal

    def build(cfg_, *a, **k):
        m = orig_build(cfg_, *a, **k)
        if hasattr(m, 'backbone'):
            to_literal(m.backbone, copy_model=False)
        return m

    return build


def _backbone(literal: bool) -> torch.nn.Module:
    """ResT-Small of the rows (seed 0) as the throughput section builds it
    (:func:`~mmrest_tools.compared.build_backbone`: its Mask R-CNN
    config's settings, initialised), its literal computation if
    ``literal``."""
    from mmrest_tools.compared import build_backbone
    torch.manual_seed(0)
    return build_backbone('rest_small_literal' if literal else 'rest_small')


def _variant_row(check, literal: bool) -> dict:
    """The backbone training step, then the Mask R-CNN AMP iteration."""
    row = {}
    bb = _backbone(literal).cuda()
    x = torch.randn(2, 3, 800, 1344, device='cuda')
    # the throughput section's fp16 step: its median after warm-ups, peak
    step = check._train_step_memory(bb, x, torch.float16)
    row['backbone_step_ms'] = step['step_ms']
    row['backbone_peak_MiB'] = step['peak_MiB']
    del bb, x
    torch.cuda.empty_cache()
    r = check._maskrcnn_one(MASKRCNN_CONFIG)
    row.update(
        maskrcnn_iter_ms=r['iter_ms'],
        maskrcnn_peak_MiB=r['peak_MiB'],
        skipped=r['skipped_steps'])
    return row


def print_table(rows):
    """The rows as a Markdown table."""
    print('| variant | backbone fp16 train step ms (2x800x1344) | peak MiB |'
          ' Mask R-CNN AMP iteration ms | peak MiB |')
    print('|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['variant']} | "
              f"{r.get('backbone_step_ms', float('nan')):.0f}"
              f" | {r.get('backbone_peak_MiB', float('nan')):.0f} | "
              f"{r.get('maskrcnn_iter_ms', float('nan')):.0f} | "
              f"{r.get('maskrcnn_peak_MiB', float('nan')):.0f} |" +
              (f" {r['error']}" if 'error' in r else ''))
