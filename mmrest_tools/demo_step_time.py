# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Time one training step (``mode='loss'``, backward, AdamW) of the
detectors of several configs on the same batches of the first config's
training set, the models taking turns so that load changes hit all alike.

    python tools/demo_step_time.py \\
        configs/demo/mask-rcnn_rest-lite_fpn_2e_shapes.py \\
        configs/demo/mask-rcnn_restv2-tiny_fpn_2e_shapes.py --threads 1

Prints the parameters and the median step time of each (the first round,
a warm-up, left out). The data set must exist (``make demo`` makes it).
"""
import argparse
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.runner import Runner


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+')
    parser.add_argument('--rounds', type=int, default=6)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    models, optims, batches = {}, {}, []
    for path in args.configs:
        cfg = Config.fromfile(path)
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        models[path] = model.train()
        optims[path] = torch.optim.AdamW(model.parameters(), lr=2e-4)
        if not batches:
            for batch in Runner.build_dataloader(cfg.train_dataloader):
                batches.append(batch)
                if len(batches) == args.rounds:
                    break
    times = {path: [] for path in models}
    for r in range(args.rounds):
        for path, model in models.items():
            start = time.perf_counter()
            data = model.data_preprocessor(batches[r % len(batches)], True)
            losses = model(**data, mode='loss')
            loss = sum(
                v if torch.is_tensor(v) else sum(v) for k, v in losses.items()
                if 'loss' in k)
            optims[path].zero_grad()
            loss.backward()
            optims[path].step()
            times[path].append(time.perf_counter() - start)
    for path, model in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f'{path}: {params:.2f} M parameters, median step '
              f'{statistics.median(times[path][1:]):.3f} s '
              f'({torch.get_num_threads()} threads)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
