"""Training killed with SIGKILL and resumed loses nothing.

Each run is a child process training a tiny ResT classifier with
mmengine's Runner on CPU, one thread, deterministic algorithms: by-iteration
training, a shuffling sampler seeded by the run's seed, stochastic depth on,
AdamW with gradient clipping and two lr schedulers, mmrest's
AtomicCheckpointHook and IterSeedHook. The data set is fixed tensors
without random augmentation, loaded in the main process (``num_workers=0``):
the set-up in which a resumed run repeats the uninterrupted one exactly
(random augmentation is not reseeded; see IterSeedHook's docstring). A child
kills itself with SIGKILL at a chosen moment: after an iteration, or in the
middle of writing a checkpoint or the ``last_checkpoint`` pointer. The
resumed child loads its checkpoint weights-only (AtomicCheckpointHook).
"""
import json
import multiprocessing
import os
import os.path as osp
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrest.checkpoint import (atomic_write, load_checkpoint_file,
                               remove_stale_temp_files)

MAX_ITERS = 12
INTERVAL = 3  # checkpoints after iterations 3, 6, 9 and 12
TINY_ARCH = dict(
    embed_dims=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    num_heads=[1, 2, 4, 8],
    sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[2, 2, 2, 2])
needs_proc = pytest.mark.skipif(
    not osp.isdir('/proc/self/fd'),
    reason='the write-kill simulation finds file names in /proc')


# ---------------------------------------------------------------- the child
def _child(opts: dict) -> None:
    """One training run; ``opts`` as passed by :func:`_run`."""
    import torch.nn as nn
    import torch.nn.functional as F
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    from mmdet.registry import MODELS

    from mmrest import ResT

    torch.set_num_threads(1)

    class TinySet(Dataset):
        """10 fixed random images in 3 classes (independent of the seed)."""

        def __init__(self):
            g = torch.Generator().manual_seed(1234)
            self.x = torch.randn(10, 3, 32, 32, generator=g)
            self.y = torch.randint(0, 3, (10, ), generator=g)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return dict(inputs=self.x[i], labels=self.y[i])

    class TinyNet(BaseModel):

        def __init__(self):
            super().__init__()
            self.backbone = ResT(
                arch=TINY_ARCH, out_indices=(3, ), drop_path_rate=0.3)
            self.head = nn.Linear(64, 3)

        def forward(self, inputs, labels=None, mode='tensor'):
            logits = self.head(self.backbone(inputs)[-1].mean((2, 3)))
            if mode == 'loss':
                return dict(loss=F.cross_entropy(logits, labels))
            return logits

    # Built by the Runner from its config, after it has seeded the run.
    MODELS.register_module(module=TinyNet, force=True)
    armed = {'on': False}

    class KillHook(Hook):
        """SIGKILL after iteration ``kill_after``; or arm the write kill
        during iteration ``kill_write_at``."""
        priority = 'LOWEST'  # after the checkpoint hook

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            armed['on'] = runner.iter + 1 == opts.get('kill_write_at')

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            if runner.iter + 1 == opts.get('kill_after'):
                os.kill(os.getpid(), signal.SIGKILL)

    class RecordStart(Hook):

        def before_train(self, runner):
            with open(osp.join(runner.work_dir, 'start_iter.json'), 'w') as f:
                json.dump(runner.iter, f)

    if opts.get('kill_write'):
        # Die in the middle of writing that file: half of it written, not
        # yet renamed into place.
        real_fsync = os.fsync

        def fsync(fd):
            name = osp.basename(os.readlink(f'/proc/self/fd/{fd}'))
            if armed['on'] and name.startswith('.' + opts['kill_write']) \
                    and name.endswith('.tmp'):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_fsync(fd)

        os.fsync = fsync

    runner = Runner(
        model=dict(type='TinyNet'),
        work_dir=opts['work_dir'],
        train_dataloader=dict(
            dataset=TinySet(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
            batch_size=2,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=MAX_ITERS),
        optim_wrapper=dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            clip_grad=dict(max_norm=1.0)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=4),
            dict(type='MultiStepLR', by_epoch=False, milestones=[8],
                 gamma=0.1)
        ],
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=4),
            checkpoint=dict(
                type='AtomicCheckpointHook',
                interval=INTERVAL,
                by_epoch=False,
                max_keep_ckpts=opts.get('max_keep_ckpts', -1))),
        custom_hooks=[
            dict(type='IterSeedHook'),
            KillHook(),
            RecordStart()
        ],
        randomness=dict(seed=42, deterministic=True),
        resume=opts.get('resume', False),
        default_scope='mmdet')
    runner.train()


def _child_main(opts: dict) -> None:
    log = open(osp.join(opts['work_dir'], 'child.log'), 'a')
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    _child(opts)


@pytest.fixture(scope='module')
def forkserver():
    """Children fork from a server that has imported mmrest and mmengine's
    Runner once: a child starts in a moment, not in the seconds that a
    fresh interpreter spends importing them."""
    ctx = multiprocessing.get_context('forkserver')
    ctx.set_forkserver_preload(['torch', 'mmengine.runner', 'mmrest'])
    return ctx


def _run(ctx, work_dir, **opts) -> int:
    """Run a child; returns its exit code (-SIGKILL when it killed itself).
    """
    opts['work_dir'] = str(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    proc = ctx.Process(target=_child_main, args=(opts, ))
    proc.start()
    proc.join(timeout=300)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return proc.exitcode


def _log(work_dir):
    path = Path(work_dir) / 'child.log'
    return path.read_text()[-3000:] if path.exists() else '(no log)'


def _check_ok(code, work_dir):
    assert code == 0, f'child exited with {code}:\n{_log(work_dir)}'


def _check_killed(code, work_dir):
    assert code == -signal.SIGKILL, (
        f'expected death by SIGKILL, got {code}:\n{_log(work_dir)}')


def _weights(path):
    # mmengine checkpoints (message hub and all), weights-only
    return load_checkpoint_file(path)['state_dict']


def _assert_same_weights(actual, expected):
    assert actual.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not differ, f'weights differ from the uninterrupted run: {differ}'


def _pointer(work_dir):
    return (Path(work_dir) / 'last_checkpoint').read_text().strip()


def _start_iter(work_dir):
    return json.loads((Path(work_dir) / 'start_iter.json').read_text())


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, forkserver):
    """Final weights of a run that went straight through."""
    work_dir = tmp_path_factory.mktemp('straight')
    _check_ok(_run(forkserver, work_dir), work_dir)
    final = _weights(work_dir / f'iter_{MAX_ITERS}.pth')
    first = _weights(work_dir / f'iter_{INTERVAL}.pth')
    assert any(not torch.equal(final[k], first[k]) for k in final), \
        'the reference run did not train'
    return final


# ------------------------------------------------------------------ tests
def test_sigkill_then_resume_gives_the_uninterrupted_weights(
        tmp_path, uninterrupted, forkserver):
    # Killed after iteration 8: the last checkpoint is iteration 6, so the
    # resumed run redoes 7 and 8 (with the same data and random draws).
    _check_killed(_run(forkserver, tmp_path, kill_after=8, max_keep_ckpts=2),
                  tmp_path)
    assert _pointer(tmp_path) == str(tmp_path / 'iter_6.pth')
    assert not (tmp_path / f'iter_{MAX_ITERS}.pth').exists()

    _check_ok(_run(forkserver, tmp_path, resume=True, max_keep_ckpts=2),
              tmp_path)
    assert _start_iter(tmp_path) == 6
    _assert_same_weights(
        _weights(tmp_path / f'iter_{MAX_ITERS}.pth'), uninterrupted)
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == [
        'iter_12.pth', 'iter_9.pth'
    ]


@needs_proc
@pytest.mark.parametrize('victim', ['iter_9.pth', 'last_checkpoint'])
def test_kill_during_checkpoint_write_keeps_the_previous_one(
        tmp_path, uninterrupted, forkserver, victim):
    # max_keep_ckpts=1: mmengine's own hook deletes iter_6.pth before it
    # writes iter_9.pth, and a kill in between leaves nothing to resume.
    _check_killed(
        _run(forkserver, tmp_path, kill_write=victim, kill_write_at=9,
             max_keep_ckpts=1), tmp_path)

    # The kill really hit the write: a half-written temporary file is left.
    partial = list(tmp_path.glob(f'.{victim}.*.tmp'))
    assert len(partial) == 1, list(tmp_path.iterdir())
    # The pointer still names the complete previous checkpoint.
    assert _pointer(tmp_path) == str(tmp_path / 'iter_6.pth')
    ckpt = load_checkpoint_file(_pointer(tmp_path))
    assert ckpt['meta']['iter'] == 6
    if victim == 'iter_9.pth':
        assert not (tmp_path / 'iter_9.pth').exists()
    else:  # iter_9.pth complete, but not yet the one resume takes
        assert _weights(tmp_path / 'iter_9.pth').keys() == ckpt[
            'state_dict'].keys()

    _check_ok(_run(forkserver, tmp_path, resume=True, max_keep_ckpts=1),
              tmp_path)
    assert _start_iter(tmp_path) == 6
    _assert_same_weights(
        _weights(tmp_path / f'iter_{MAX_ITERS}.pth'), uninterrupted)
    assert not list(tmp_path.glob('.*.tmp')), 'stale temporary file left'
    assert _pointer(tmp_path) == str(tmp_path / f'iter_{MAX_ITERS}.pth')


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / 'sub' / 'file.bin'
    atomic_write(path, b'old')
    atomic_write(path, b'new content')
    assert path.read_bytes() == b'new content'
    assert os.listdir(path.parent) == ['file.bin']

    def fail(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', fail)
    with pytest.raises(OSError, match='disk full'):
        atomic_write(path, b'x' * 1000)
    assert path.read_bytes() == b'new content'
    assert os.listdir(path.parent) == ['file.bin']


def test_remove_stale_temp_files_only_removes_dead_writers(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.iter_9.pth.{dead.pid}.tmp'
    live = tmp_path / f'.iter_9.pth.{os.getpid()}.tmp'
    other = tmp_path / 'notes.tmp'
    for p in (stale, live, other):
        p.write_bytes(b'x')
    assert remove_stale_temp_files(str(tmp_path)) == [str(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name])


if __name__ == '__main__':  # one run by hand: python THIS '{"work_dir": ...}'
    _child(json.loads(sys.argv[1]))
