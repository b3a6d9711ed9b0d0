# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Hooks that let a training run be killed at any moment and resumed."""
import os.path as osp
import random

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook, Hook

from .checkpoint_io import (ATOMIC_BACKEND, atomic_write,
                            remove_stale_temp_files)


class AtomicCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook`, safe to kill.

    mmengine 0.10.7 writes a checkpoint straight to its final name, then the
    ``last_checkpoint`` pointer that ``resume`` follows, and with
    ``max_keep_ckpts`` deletes the oldest checkpoint *before* writing the new
    one. A kill during that sequence can leave a half-written checkpoint
    under a name ``resume`` picks (when a run overwrites its own checkpoint,
    for instance after resuming from an earlier one), an empty pointer, or a
    pointer to a checkpoint already deleted. This hook takes the same
    arguments and:

    - writes every checkpoint file (interval, last and best) to a temporary
      file in the same folder and renames it into place once complete;
    - replaces ``last_checkpoint`` the same way, after the checkpoint is in
      place;
    - deletes checkpoints beyond ``max_keep_ckpts`` only after both;
    - removes the temporary files of a killed run when training starts.

    At any moment, ``last_checkpoint`` names a complete checkpoint. A remote
    ``out_dir`` (``s3://`` and the like) is written as by CheckpointHook:
    object stores make a put all-or-nothing themselves.

    Use it in a config with
    ``default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))``.
    """

    atomic = False  # set in before_train: out_dir is local

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


class IterSeedHook(Hook):
    """Reseed every training iteration from the run's seed and iteration.

    mmengine's ``resume`` restores the weights, optimizer, schedulers,
    iteration and seed, but not the state of the random number generators:
    a resumed run draws different stochastic-depth masks, dropout masks and
    proposal samples than the uninterrupted run would have. This hook seeds
    torch (CPU and CUDA), numpy and ``random`` before each training
    iteration from ``(runner.seed, runner.iter)``, so iteration ``i`` draws
    the same numbers however the run got there: straight through or
    killed and resumed.

    Augmentations drawn in dataloader workers are seeded by mmengine's
    ``worker_init_fn`` when the workers start, not here: they repeat after a
    resume in by-iteration training (the dataloader replays the skipped
    batches), not in by-epoch training with ``persistent_workers``, whose
    workers carry their generator state from epoch to epoch.

    Use it in a config with ``custom_hooks = [dict(type='IterSeedHook')]``.
    """

    priority = 'VERY_HIGH'

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        seed = int(np.random.SeedSequence(
            [runner.seed % (1 << 32), runner.iter]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # seeds every CUDA device as well
