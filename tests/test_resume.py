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

The same runs by epoch (EpochBasedTrainLoop), and with a validation after
every epoch whose best checkpoint AtomicCheckpointHook keeps
(``save_best``), are tested at the end of the file.
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
from _helpers import TINY_V1

from mmrest.checkpoint import (atomic_write, load_checkpoint_file,
                               remove_stale_temp_files)

MAX_ITERS = 12
INTERVAL = 3  # checkpoints after iterations 3, 6, 9 and 12
MAX_EPOCHS = 5  # by epoch: 5 iterations per epoch (10 images, batches of 2)
TINY_ARCH = dict(TINY_V1, depths=[1, 1, 1, 1])  # one block a stage
needs_proc = pytest.mark.skipif(
    not osp.isdir('/proc/self/fd'),
    reason='the write-kill simulation finds file names in /proc')


# ---------------------------------------------------------------- the child
def _child(opts: dict) -> None:
    """One training run; ``opts`` as passed by :func:`_run`."""
    import torch.nn as nn
    import torch.nn.functional as F
    from mmdet.registry import METRICS, MODELS
    from mmengine.evaluator import BaseMetric
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

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

    class CrossEntropy(BaseMetric):
        """The mean cross-entropy on the set, as a score that save_best
        keeps the greatest of: it grows over the first epochs of these runs
        (eval-mode BatchNorm statistics still near their start), so a best
        checkpoint is replaced; which epochs improve is read off the
        uninterrupted run's records."""

        def process(self, data_batch, data_samples):
            logits = torch.stack(list(data_samples))
            self.results.append(
                F.cross_entropy(logits, data_batch['labels'],
                                reduction='sum').item())

        def compute_metrics(self, results):
            return dict(ce=sum(results) / 10)

    # Built by the Runner from its config, after it has seeded the run.
    MODELS.register_module(module=TinyNet, force=True)
    METRICS.register_module(module=CrossEntropy, force=True)
    armed = {'on': False}

    class KillHook(Hook):
        """SIGKILL after iteration ``kill_after``; or arm the write kill
        during iteration ``kill_write_at``."""
        priority = 'LOWEST'  # after the checkpoint hook

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            armed['on'] = runner.iter + 1 == opts.get('kill_write_at')

        def after_train_iter(self,
                             runner,
                             batch_idx,
                             data_batch=None,
                             outputs=None):
            if runner.iter + 1 == opts.get('kill_after'):
                os.kill(os.getpid(), signal.SIGKILL)

    class RecordStart(Hook):

        def before_train(self, runner):
            with open(osp.join(runner.work_dir, 'start_iter.json'), 'w') as f:
                json.dump(runner.iter, f)
            with open(osp.join(runner.work_dir, 'start_epoch.json'), 'w') as f:
                json.dump(runner.epoch, f)

        def after_val_epoch(self, runner, metrics=None):
            # before the checkpoint hook (VERY_LOW) writes the best one
            with open(osp.join(runner.work_dir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps(dict(epoch=runner.epoch, **metrics)) + '\n')

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

    def loader(batch_size: int, shuffle: bool) -> dict:
        return dict(
            dataset=TinySet(),
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
            collate_fn=dict(type='default_collate'),
            batch_size=batch_size,
            num_workers=0)

    by_epoch = opts.get('by_epoch', False)
    validation = {}
    if opts.get('save_best'):  # validate on the training set, every epoch
        validation = dict(
            val_dataloader=loader(5, shuffle=False),
            val_cfg=dict(),
            val_evaluator=dict(type='CrossEntropy'))
    runner = Runner(
        model=dict(type='TinyNet'),
        work_dir=opts['work_dir'],
        train_dataloader=loader(2, shuffle=True),
        train_cfg=dict(by_epoch=True, max_epochs=MAX_EPOCHS, val_interval=1)
        if by_epoch else dict(by_epoch=False, max_iters=MAX_ITERS),
        **validation,
        optim_wrapper=dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            clip_grad=dict(max_norm=1.0)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=4),
            dict(
                type='MultiStepLR', by_epoch=False, milestones=[8], gamma=0.1)
        ],
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=4),
            checkpoint=dict(
                type='AtomicCheckpointHook',
                interval=opts.get('interval', INTERVAL),
                by_epoch=by_epoch,
                max_keep_ckpts=opts.get('max_keep_ckpts', -1),
                save_best=opts.get('save_best'),
                rule='greater' if opts.get('save_best') else None)),
        custom_hooks=[dict(type='IterSeedHook'),
                      KillHook(),
                      RecordStart()],
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
    # max_keep_ckpts=-1 (mmengine's default) keeps every checkpoint
    assert sorted(p.name for p in work_dir.glob('*.pth')) == sorted(
        f'iter_{i}.pth' for i in range(INTERVAL, MAX_ITERS + 1, INTERVAL))
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
    _check_killed(
        _run(forkserver, tmp_path, kill_after=8, max_keep_ckpts=2), tmp_path)
    assert _pointer(tmp_path) == str(tmp_path / 'iter_6.pth')
    assert not (tmp_path / f'iter_{MAX_ITERS}.pth').exists()

    _check_ok(
        _run(forkserver, tmp_path, resume=True, max_keep_ckpts=2), tmp_path)
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
        _run(
            forkserver,
            tmp_path,
            kill_write=victim,
            kill_write_at=9,
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
        assert _weights(tmp_path /
                        'iter_9.pth').keys() == ckpt['state_dict'].keys()

    _check_ok(
        _run(forkserver, tmp_path, resume=True, max_keep_ckpts=1), tmp_path)
    assert _start_iter(tmp_path) == 6
    _assert_same_weights(
        _weights(tmp_path / f'iter_{MAX_ITERS}.pth'), uninterrupted)
    assert not list(tmp_path.glob('.*.tmp')), 'stale temporary file left'
    assert _pointer(tmp_path) == str(tmp_path / f'iter_{MAX_ITERS}.pth')
    # max_keep_ckpts=1: the older checkpoints were removed once the newer
    # one was in place
    assert [p.name
            for p in tmp_path.glob('*.pth')] == [f'iter_{MAX_ITERS}.pth']


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


@pytest.mark.skipif(os.name != 'posix', reason='folders are fsynced on POSIX')
def test_atomic_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    """The data reach the disk before the rename, the rename before the
    function returns: fsync of the temporary file, then of the folder."""
    import stat
    synced = []
    real_fsync = os.fsync

    synced_folder = []

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        synced.append('folder' if stat.S_ISDIR(mode) else 'file')
        if stat.S_ISDIR(mode):
            synced_folder.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)
    atomic_write(tmp_path / 'a.bin', b'data')
    assert synced == ['file', 'folder']
    # the folder synced is the file's, not the working directory; a bare
    # file name's folder is the working directory
    sub = tmp_path / 'sub'
    monkeypatch.chdir(tmp_path)
    for path, folder in ((sub / 'b.bin', sub), ('c.bin', tmp_path)):
        synced.clear()
        atomic_write(path, b'data')
        assert synced == ['file', 'folder']
        assert synced_folder[-1] == os.stat(folder).st_ino


def test_remove_stale_temp_files_only_removes_dead_writers(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.iter_9.pth.{dead.pid}.tmp'
    live = tmp_path / f'.iter_9.pth.{os.getpid()}.tmp'
    other = tmp_path / 'notes.tmp'
    for p in (stale, live, other):
        p.write_bytes(b'x')
    # another process that is alive: asked with signal 0, which leaves it
    # running
    writer = subprocess.Popen(
        [sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        running = tmp_path / f'.iter_9.pth.{writer.pid}.tmp'
        running.write_bytes(b'x')
        assert remove_stale_temp_files(str(tmp_path)) == [str(stale)]
        with pytest.raises(subprocess.TimeoutExpired):  # still running
            writer.wait(timeout=1)
    finally:
        writer.kill()
        writer.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, running.name])


def test_remove_stale_temp_files_keeps_what_it_cannot_ask_about(
        tmp_path, monkeypatch):
    """A writer that cannot be signalled (another user's process: EPERM) or
    asked at all is taken as alive: its file is kept."""
    kept = tmp_path / '.iter_9.pth.4242.tmp'
    kept.write_bytes(b'x')
    for error in (PermissionError, OSError):

        def kill(pid, sig, error=error):
            assert (pid, sig) == (4242, 0)
            raise error('not allowed')

        monkeypatch.setattr(os, 'kill', kill)
        assert remove_stale_temp_files(str(tmp_path)) == []
        assert kept.exists()


def test_atomic_backend_registration_replaces_a_stale_class():
    """``register_atomic_backend`` installs mmrest's class under its name
    also when another class holds that name (e.g. a reloaded module's)."""
    from mmengine.fileio import register_backend
    from mmengine.fileio.backends import backends as registered_backends

    from mmrest.checkpoint.atomic_io import (ATOMIC_BACKEND,
                                             AtomicLocalBackend,
                                             register_atomic_backend)

    class Stale(AtomicLocalBackend):
        pass

    register_backend(ATOMIC_BACKEND, Stale, force=True)
    try:
        register_atomic_backend()
    finally:
        stale = registered_backends[ATOMIC_BACKEND] is Stale
        register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
    assert not stale
    register_atomic_backend()  # already registered: nothing changes
    assert registered_backends[ATOMIC_BACKEND] is AtomicLocalBackend


# ------------------------------------------------ by epoch, best and last
# 5 epochs of 5 iterations; checkpoints after every epoch (interval 1), or
# after epochs 2 and 4 and, by save_last, 5 (interval 2).
EPOCH_ITERS = 5


def _start_epoch(work_dir):
    return json.loads((Path(work_dir) / 'start_epoch.json').read_text())


def _metrics(work_dir):
    """{epoch: ce} of the validations run (the last record of an
    epoch validated twice)."""
    lines = (Path(work_dir) / 'metrics.jsonl').read_text().splitlines()
    return {r['epoch']: r['ce'] for r in map(json.loads, lines)}


def _best_files(work_dir):
    return sorted(p.name for p in Path(work_dir).glob('best_*.pth'))


@pytest.fixture(scope='module')
def uninterrupted_by_epoch(tmp_path_factory, forkserver):
    """A by-epoch run that went straight through, validated after every
    epoch with save_best: its work dir."""
    work_dir = tmp_path_factory.mktemp('straight_epochs')
    _check_ok(
        _run(forkserver, work_dir, by_epoch=True, interval=1, save_best='ce'),
        work_dir)
    return work_dir


@pytest.mark.parametrize('kill_after,saved_epoch', [(13, 2), (10, 1)])
def test_epoch_training_killed_and_resumed(tmp_path, forkserver,
                                           uninterrupted_by_epoch, kill_after,
                                           saved_epoch):
    """EpochBasedTrainLoop: SIGKILL in the middle of epoch 3 (iteration 13,
    after epoch_2.pth), or after the last iteration of epoch 2 but before
    its checkpoint; --resume continues from the last complete epoch and
    ends with the uninterrupted run's weights (the criterion of the
    by-iteration test: the same data order, per-epoch sampler seeds and
    per-iteration random draws, so equal bit for bit)."""
    straight = uninterrupted_by_epoch
    _check_killed(
        _run(
            forkserver,
            tmp_path,
            by_epoch=True,
            interval=1,
            kill_after=kill_after), tmp_path)
    assert _pointer(tmp_path) == str(tmp_path / f'epoch_{saved_epoch}.pth')
    assert not (tmp_path / f'epoch_{saved_epoch + 1}.pth').exists()
    # the checkpoint the kill left equals the straight run's of that epoch
    _assert_same_weights(
        _weights(_pointer(tmp_path)),
        _weights(straight / f'epoch_{saved_epoch}.pth'))

    _check_ok(
        _run(forkserver, tmp_path, by_epoch=True, interval=1, resume=True),
        tmp_path)
    assert _start_epoch(tmp_path) == saved_epoch
    assert _start_iter(tmp_path) == saved_epoch * EPOCH_ITERS
    for epoch in range(saved_epoch + 1, MAX_EPOCHS + 1):
        _assert_same_weights(
            _weights(tmp_path / f'epoch_{epoch}.pth'),
            _weights(straight / f'epoch_{epoch}.pth'))
    assert _pointer(tmp_path) == str(tmp_path / f'epoch_{MAX_EPOCHS}.pth')


def test_save_best_keeps_the_best_epoch(uninterrupted_by_epoch):
    """save_best='ce' (greater is better): one best checkpoint, of
    the first epoch with the highest validation score, holding that
    epoch's weights; no temporary file left."""
    work = uninterrupted_by_epoch
    scores = _metrics(work)
    assert sorted(scores) == list(range(1, MAX_EPOCHS + 1))
    best = max(scores, key=lambda e: (scores[e], -e))
    assert _best_files(work) == [f'best_ce_epoch_{best}.pth']
    _assert_same_weights(
        _weights(work / _best_files(work)[0]),
        _weights(work / f'epoch_{best}.pth'))
    assert not list(work.glob('.*.tmp'))


@needs_proc
def test_kill_while_writing_a_new_best_keeps_the_previous_one(
        tmp_path, forkserver, uninterrupted_by_epoch):
    """SIGKILL halfway through writing a new best checkpoint: the previous
    best is still there, complete (mmengine's hook deletes it before it
    writes the new one); the new one exists only as a temporary file. The
    resumed run ends with the uninterrupted weights, one best checkpoint
    and no temporary file."""
    scores = _metrics(uninterrupted_by_epoch)
    improved, best = [], float('-inf')
    for epoch in sorted(scores):
        if scores[epoch] > best:
            improved.append(epoch)
            best = scores[epoch]
    assert len(improved) >= 2, scores  # a previous best to keep
    first, second = improved[:2]
    _check_killed(
        _run(
            forkserver,
            tmp_path,
            by_epoch=True,
            interval=1,
            save_best='ce',
            kill_write='best_ce',
            kill_write_at=second * EPOCH_ITERS), tmp_path)
    assert _best_files(tmp_path) == [f'best_ce_epoch_{first}.pth']
    _assert_same_weights(
        _weights(tmp_path / _best_files(tmp_path)[0]),
        _weights(tmp_path / f'epoch_{first}.pth'))
    partial = list(tmp_path.glob(f'.best_ce_epoch_{second}.pth.*.tmp'))
    assert len(partial) == 1, list(tmp_path.iterdir())

    _check_ok(
        _run(
            forkserver,
            tmp_path,
            by_epoch=True,
            interval=1,
            save_best='ce',
            resume=True), tmp_path)
    assert _start_epoch(tmp_path) == second  # epoch_<second>.pth was written
    _assert_same_weights(
        _weights(tmp_path / f'epoch_{MAX_EPOCHS}.pth'),
        _weights(uninterrupted_by_epoch / f'epoch_{MAX_EPOCHS}.pth'))
    assert not list(tmp_path.glob('.*.tmp')), 'stale temporary file left'
    (name, ) = _best_files(tmp_path)
    epoch = int(name[len('best_ce_epoch_'):-len('.pth')])
    _assert_same_weights(
        _weights(tmp_path / name), _weights(tmp_path / f'epoch_{epoch}.pth'))


@needs_proc
@pytest.mark.parametrize('victim',
                         [f'epoch_{MAX_EPOCHS}.pth', 'last_checkpoint'])
def test_save_last_by_epoch_is_atomic(tmp_path, forkserver,
                                      uninterrupted_by_epoch, victim):
    """interval=2 over 5 epochs: epochs 2 and 4 by the interval, 5 by
    save_last. A kill halfway through writing the last checkpoint or its
    pointer leaves the pointer on epoch_4.pth; resumed, the run writes
    epoch_5.pth with the uninterrupted weights."""
    last = f'epoch_{MAX_EPOCHS}.pth'
    _check_killed(
        _run(
            forkserver,
            tmp_path,
            by_epoch=True,
            interval=2,
            kill_write=victim,
            kill_write_at=MAX_EPOCHS * EPOCH_ITERS), tmp_path)
    assert len(list(tmp_path.glob(f'.{victim}.*.tmp'))) == 1
    assert _pointer(tmp_path) == str(tmp_path / 'epoch_4.pth')
    assert (tmp_path / last).exists() == (victim == 'last_checkpoint')

    _check_ok(
        _run(forkserver, tmp_path, by_epoch=True, interval=2, resume=True),
        tmp_path)
    assert _start_epoch(tmp_path) == 4
    assert sorted(p.name for p in tmp_path.glob('epoch_*.pth')) == [
        'epoch_2.pth', 'epoch_4.pth', last
    ]
    assert _pointer(tmp_path) == str(tmp_path / last)
    _assert_same_weights(
        _weights(tmp_path / last), _weights(uninterrupted_by_epoch / last))
    assert not list(tmp_path.glob('.*.tmp'))


if __name__ == '__main__':  # one run by hand: python THIS '{"work_dir": ...}'
    _child(json.loads(sys.argv[1]))
