# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Time one training step (``mode='loss'``, backward, AdamW) of the
detectors of several configs on the same batches of the first config's
training set, the models taking turns so that load changes hit all alike.

    python tools/demo_step_time.py \\
        configs/demo/mask-rcnn_rest-lite_fpn_2e_shapes.py \\
        configs/demo/mask-rcnn_restv2-tiny_fpn_2e_shapes.py --threads 1

Prints the parameters and the median step time of each (the first round,
a warm-up, left out). The data set must exist (``make demo`` makes it
under ``data/shapes``; ``--data-root`` names another folder).
"""
import argparse
import statistics
import time
from typing import Dict, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.runner import Runner


def _check_arguments(configs: Sequence[str], rounds: int):
    """Refuse fewer than two rounds and a config named twice (or none)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) \
            or rounds < 2:
        raise ValueError(f'rounds must be an integer of at least 2 (the '
                         f'first is a warm-up), got {rounds!r}')
    if not configs or len(set(configs)) != len(configs):
        raise ValueError(f'name each config once, got {list(configs)}')


def time_training_steps(configs: Sequence[str],
                        rounds: int = 6,
                        data_root: Optional[str] = None) -> Dict[str, dict]:
    """Build each config's detector (seed 0, ``init_weights``) with an
    AdamW optimiser (lr 2e-4) and time ``rounds`` training steps of each,
    the models taking turns on the same batches of the first config's
    training set (cycled when it has fewer than ``rounds``). Each model's
    step ``r`` starts from the random state of seed ``r`` (the samplers of
    proposals and RoIs draw from it), so that models of one architecture
    do the same work.

    Args:
        configs (Sequence[str]): Paths of mmdet detector configs, each
            named once.
        rounds (int): Steps of each model, the first a warm-up; at least 2.
        data_root (str, optional): The shapes set's folder, in place of
            the first config's ``data_root``.

    Returns:
        dict: For each config path, ``params`` (the model's parameters),
        ``times`` (seconds of each step, warm-up first), ``losses`` (the
        summed loss of each step) and ``median_s`` (the median of the timed
        steps, the warm-up left out).
    """
    _check_arguments(configs, rounds)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmrest_tools.demo import set_data_root
    from mmrest_tools.prerun_checks import check_data_paths
    register_all_modules()
    models, optims, batches = {}, {}, []
    for path in configs:
        cfg = Config.fromfile(path)
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        models[path] = model.train()
        optims[path] = torch.optim.AdamW(model.parameters(), lr=2e-4)
        if not batches:
            if data_root is not None:
                set_data_root(cfg, data_root)
            check_data_paths(cfg, ('train', ))
            for batch in Runner.build_dataloader(cfg.train_dataloader):
                batches.append(batch)
                if len(batches) == rounds:
                    break
    results = {
        path:
        dict(
            params=sum(p.numel() for p in model.parameters()),
            times=[],
            losses=[])
        for path, model in models.items()
    }
    for r in range(rounds):
        for path, model in models.items():
            torch.manual_seed(r)
            start = time.perf_counter()
            data = model.data_preprocessor(batches[r % len(batches)], True)
            losses = model(**data, mode='loss')
            loss = sum(
                v if torch.is_tensor(v) else sum(v) for k, v in losses.items()
                if 'loss' in k)
            optims[path].zero_grad()
            loss.backward()
            optims[path].step()
            results[path]['times'].append(time.perf_counter() - start)
            results[path]['losses'].append(loss.item())
    for res in results.values():
        res['median_s'] = statistics.median(res['times'][1:])
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+')
    parser.add_argument(
        '--rounds',
        type=int,
        default=6,
        help='steps of each model, the first a warm-up (at least 2)')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument(
        '--data-root',
        default=None,
        help='the shapes set, if not at the first config\'s data_root')
    args = parser.parse_args(argv)
    try:
        _check_arguments(args.configs, args.rounds)
    except ValueError as err:
        parser.error(str(err))
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f'--threads must be at least 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    results = time_training_steps(args.configs, args.rounds, args.data_root)
    for path, res in results.items():
        print(f'{path}: {res["params"] / 1e6:.2f} M parameters, median step '
              f'{res["median_s"]:.3f} s ({torch.get_num_threads()} threads)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
