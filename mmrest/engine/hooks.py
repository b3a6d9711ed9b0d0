# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Hooks that let a training run be killed at any moment and resumed."""
import functools
import os.path as osp
import random

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook, Hook

from ..checkpoint.atomic_io import (ATOMIC_BACKEND, atomic_write,
                                    remove_stale_temp_files)


class AtomicCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook`, safe to kill.

    mmengine 0.10.7 writes a checkpoint straight to its final name, then the
    ``last_checkpoint`` pointer that ``resume`` follows, and with
    ``max_keep_ckpts`` deletes the oldest checkpoint *before* writing the new
    one. A kill during that sequence can leave a half-written checkpoint
    under a name ``resume`` picks (when a run overwrites its own checkpoint,
    for instance after resuming from an earlier one), an empty pointer, or a
    pointer to a checkpoint already deleted; with ``save_best`` it deletes
    the previous best checkpoint before writing the new one. This hook
    takes the same arguments and:

    - writes every checkpoint file (interval, ``save_last`` and
      ``save_best``) to a temporary file in the same folder and renames it
      into place once complete;
    - replaces ``last_checkpoint`` the same way, after the checkpoint is in
      place;
    - deletes checkpoints beyond ``max_keep_ckpts`` only after both;
    - with ``save_best``, deletes the previous best checkpoint only once the
      new one is in place (mmengine deletes it first); a kill in between
      leaves both;
    - removes the temporary files of a killed run when training starts.

    At any moment, ``last_checkpoint`` names a complete checkpoint. A remote
    ``out_dir`` (``s3://`` and the like) is written as by CheckpointHook:
    object stores make a put all-or-nothing themselves.

    It also loads the runner's ``resume`` / ``load_from`` checkpoint under
    :func:`mmrest.checkpoint.mmengine_safe_loading`: torch >= 2.6 loads
    with ``weights_only=True`` and refuses mmengine's checkpoints (their
    message hub holds numpy arrays and ``HistoryBuffer`` objects); the hook
    allow-lists those types for that load only. On torch < 2.6, where
    mmengine's ``torch.load`` would unpickle anything, the load goes
    through mmrest's restricted unpickler with the same allow-list (in
    :meth:`before_run`, it wraps this runner's ``load_checkpoint``, which
    ``resume`` calls too). This works for checkpoints saved with or without
    mmrest imported. An http(s) URL is downloaded into torch hub's cache
    first and loaded weights-only as well (mmengine's own http loader uses
    ``weights_only=False``); mmengine's other schemes (``open-mmlab://``,
    ``torchvision://``, ...) are left to mmengine.

    Use it in a config with
    ``default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))``.

    It overrides ``CheckpointHook._save_checkpoint_with_step``, a private
    method of mmengine 0.10.x; building the hook with an mmengine that lacks
    it raises a RuntimeError.
    """

    atomic = False  # set in before_train: out_dir is local

    def __init__(self, *args, **kwargs) -> None:
        if not callable(
                getattr(CheckpointHook, '_save_checkpoint_with_step', None)):
            import mmengine
            raise RuntimeError(
                'AtomicCheckpointHook overrides CheckpointHook.'
                '_save_checkpoint_with_step, which mmengine '
                f'{mmengine.__version__} does not have; it supports '
                'mmengine>=0.10.0,<0.11. Install such an mmengine, or use '
                "type='CheckpointHook' (not safe to kill mid-write).")
        super().__init__(*args, **kwargs)

    def before_run(self, runner) -> None:
        super().before_run(runner)
        load = runner.load_checkpoint
        if getattr(load, '_mmrest_safe_loading', False):
            return

        @functools.wraps(load)
        def load_checkpoint(filename, *args, **kwargs):
            from ..checkpoint import (download_checkpoint, is_http_url,
                                      mmengine_safe_loading)
            if is_http_url(filename):  # mmengine would load it unsafely
                filename = download_checkpoint(filename)
            with mmengine_safe_loading():
                return load(filename, *args, **kwargs)

        load_checkpoint._mmrest_safe_loading = True
        # On this runner only: Runner.load_or_resume runs after before_run
        # and calls it, directly (load_from) or through resume.
        runner.load_checkpoint = load_checkpoint

    def before_train(self, runner) -> None:
        out_dir = self.out_dir if self.out_dir is not None else \
            runner.work_dir
        self.atomic = (
            self.file_client_args is None and type(
                get_file_backend(out_dir, backend_args=self.backend_args))
            is LocalBackend)
        if self.atomic:
            # runner.save_checkpoint builds its backend from these args.
            self.backend_args = {
                **(self.backend_args or {}), 'backend': ATOMIC_BACKEND
            }
        super().before_train(runner)
        if self.atomic and is_main_process():
            for path in remove_stale_temp_files(self.out_dir):
                runner.logger.info(
                    f'Removed {path}, a checkpoint whose writing was '
                    'interrupted.')

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not self.atomic:
            return super()._save_best_checkpoint(runner, metrics)
        # mmengine deletes the previous best checkpoint before it writes the
        # new one: a kill in between would leave none. Its removals are
        # held back until the new best checkpoint is in place.
        held = []
        backend = self.file_backend
        self.file_backend = _DeferredRemoval(backend, held)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        if not is_main_process():
            return
        kept = {
            str(p)
            for p in [getattr(self, 'best_ckpt_path', None)] +
            list((getattr(self, 'best_ckpt_path_dict', None) or {}).values())
            if p
        }
        for method, path in held:
            if str(path) not in kept:  # not the one just written
                getattr(backend, method)(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not self.atomic:
            return super()._save_checkpoint_with_step(runner, step, meta)
        # Same bookkeeping as CheckpointHook (the checkpoint records which
        # ones are kept), but files are deleted only once the new one is in
        # place and pointed to.
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_write(
            osp.join(runner.work_dir, 'last_checkpoint'),
            self.last_ckpt.encode('utf-8'))
        for old_step in outdated:
            path = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed checkpoints
                self.file_backend.rmtree(path)


class _DeferredRemoval:
    """A file backend whose ``remove`` and ``rmtree`` only note the path in
    ``held``; everything else is the wrapped backend's."""

    def __init__(self, backend, held: list):
        self._backend = backend
        self._held = held

    def remove(self, path) -> None:
        self._held.append(('remove', path))

    def rmtree(self, path) -> None:
        self._held.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


class IterSeedHook(Hook):
    """Reseed every training iteration from the run's seed and iteration.

    mmengine's ``resume`` restores the weights, optimizer, schedulers,
    iteration and seed, but not the state of the random number generators.
    This hook seeds torch (CPU and CUDA), numpy and ``random`` in the main
    process before each training iteration from ``(runner.seed,
    runner.iter)``: the random numbers the model draws in iteration ``i``
    (stochastic-depth and dropout masks, proposal sampling) are the same
    whether the run went straight through or was killed and resumed.

    What it does not cover: the data. It runs after the batch of iteration
    ``i`` was fetched, so random augmentation is not reseeded by it. Drawn
    in the main process (``num_workers=0``), the augmentation of a batch
    uses the state left by the previous iteration, which a resumed run does
    not have; drawn in dataloader workers, it follows mmengine's
    ``worker_init_fn`` seeding when the workers start, which a resumed
    by-epoch run with ``persistent_workers`` does not repeat either. The
    sampler's order is seeded by mmengine and does repeat (a by-iteration
    run, as the COCO configs are, replays its data loader up to the
    resumed iteration). So a resumed run gives exactly the uninterrupted
    weights when loading the data draws no random numbers; that case
    (by-iteration training, a shuffling sampler, ``num_workers=0``,
    stochastic depth) is what ``tests/test_resume.py`` checks. With random
    augmentation, a resumed run can see its images augmented differently
    than the uninterrupted run would have.

    Use it in a config with ``custom_hooks = [dict(type='IterSeedHook')]``.
    """

    priority = 'VERY_HIGH'

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        seed = int(
            np.random.SeedSequence([runner.seed % (1 << 32),
                                    runner.iter]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # seeds every CUDA device as well
