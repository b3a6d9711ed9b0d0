"""Distributed training and testing: tools/dist_train.sh starts 2 CPU
processes with torchrun (gloo backend, PyTorch DDP through mmengine) that
train a few iterations on a tiny COCO-format set and evaluate it together;
tools/dist_test.sh evaluates the checkpoint on 2 processes likewise. The
Slurm scripts' command lines, through a stand-in srun."""
import os
import pickle
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from _helpers import ROOT, run_program

CONFIG = 'configs/mask_rcnn/mask-rcnn_rest-lite_fpn_1x_coco.py'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_training_and_testing(tmp_path):
    from _tiny_coco import tiny_coco_overrides, write_tiny_coco
    root = tmp_path / 'coco'
    # 4 training images, 1 a batch: 2 iterations on each of the 2 ranks
    # (each rank's endless sampler draws from its own half);
    # 2 validation images, 1 on each rank, evaluated together on rank 0.
    write_tiny_coco(str(root), num_train=4, num_val=2, image_size=(64, 64))
    options = {
        **tiny_coco_overrides(str(root)),
        'model.backbone.init_cfg': None,
        'model.test_cfg.rcnn.score_thr': 0.0,
        'train_dataloader.batch_size': 1,
        'train_cfg.max_iters': 2,
        'default_hooks.logger.interval': 1,  # by iteration: log each one
    }
    for loader in ('train_dataloader', 'val_dataloader'):
        options[f'{loader}.num_workers'] = 0
        options[f'{loader}.persistent_workers'] = False
    work = tmp_path / 'work'
    env = {
        'PYTHON': sys.executable,
        'PORT': str(free_port()),
        'OMP_NUM_THREADS': '1',
    }
    run_program([
        'bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', work,
        '--cfg-options', *[f'{k}={v}' for k, v in options.items()]
    ],
                env=env)
    (log, ) = work.glob('*/*.log')  # rank 0 writes the log
    log = log.read_text()
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    if not torch.cuda.is_available():
        assert "backend='gloo'" in log or 'backend: gloo' in log or \
            "'backend': 'gloo'" in log
    assert re.search(r'Iter\(train\) \[\s*2/2\]', log), log[-3000:]
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    assert (work / 'iter_2.pth').is_file()

    # the checkpoint on the 2 validation images again, one on each rank,
    # through tools/dist_test.sh: rank 0 gathers and dumps both images'
    # detections, the same as one process gives (tools/test.py)
    test_options = [
        f'{k}={v}' for k, v in options.items() if not k.startswith('train')
    ] + [
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False'
    ]
    env['PORT'] = str(free_port())
    run_program([
        'bash', 'tools/dist_test.sh', CONFIG, work / 'iter_2.pth', '2',
        '--work-dir', tmp_path / 'tested', '--out', tmp_path / 'two.pkl',
        '--cfg-options', *test_options
    ],
                env=env)
    (log, ) = (tmp_path / 'tested').glob('*/*.log')
    log = log.read_text()
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    run_program([
        sys.executable, 'tools/test.py', CONFIG, work / 'iter_2.pth',
        '--work-dir', tmp_path / 'one', '--out', tmp_path / 'one.pkl',
        '--cfg-options', *test_options
    ],
                env={'OMP_NUM_THREADS': '1'})
    two, one = (detections(tmp_path / f'{n}.pkl') for n in ('two', 'one'))
    assert sorted(two) == sorted(one) == [1, 2]
    for img_id, (boxes, scores, labels) in one.items():
        assert len(scores) > 0  # score_thr 0: the untrained model's too
        torch.testing.assert_close(two[img_id][0], boxes)
        torch.testing.assert_close(two[img_id][1], scores)
        assert torch.equal(two[img_id][2], labels)
    shutil.rmtree(work)


def detections(path) -> dict:
    """``{image id: (boxes, scores, labels)}`` from a ``--out`` dump."""
    with open(path, 'rb') as f:
        results = pickle.load(f)
    assert len({r['img_id'] for r in results}) == len(results)
    return {
        r['img_id']:
        tuple(r['pred_instances'][k] for k in ('bboxes', 'scores', 'labels'))
        for r in results
    }


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_slurm_scripts_pass_their_arguments(tool, tmp_path, monkeypatch):
    """tools/slurm_{train,test}.sh, through a stand-in ``srun`` on PATH
    that records what it is given (no Slurm here, and mmengine's slurm
    launcher needs CUDA): srun gets the partition, the job name, the
    GPUs, tasks and CPUs from the environment and SRUN_ARGS; it starts this
    clone's tools/<tool>.py with the config, the work dir or checkpoint,
    ``--launcher=slurm`` and the options after them, which the tool's
    parser reads as such."""
    from mmrest_tools.launch import parse_args, test_parser, train_parser
    record = tmp_path / 'srun.args'
    fake = tmp_path / 'bin' / 'srun'
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\n'
                    f'printf "%s\\0" "$PYTHONPATH" "$@" > {record}\n')
    fake.chmod(0o755)
    fourth = 'work_dirs/w' if tool == 'train' else 'ckpt/iter_9.pth'
    run_program(
        [
            'bash', f'tools/slurm_{tool}.sh', 'gpu-part', 'my job', CONFIG,
            fourth, '--cfg-options', 'train_cfg.max_iters=3',
            'optim_wrapper.type=AmpOptimWrapper'
        ],
        env={
            'PATH': f'{fake.parent}:{os.environ["PATH"]}',
            'GPUS': '16',
            'GPUS_PER_NODE': '4',
            'CPUS_PER_TASK': '3',
            'SRUN_ARGS': '--quotatype=auto --nodes=4',
            'PYTHON': 'python3.x'
        })
    pythonpath, *argv = record.read_text().split('\0')[:-1]
    assert Path(pythonpath.split(':')[0]).resolve() == ROOT
    split = argv.index('python3.x')
    assert argv[:split] == [
        '-p', 'gpu-part', '--job-name=my job', '--gres=gpu:4', '--ntasks=16',
        '--ntasks-per-node=4', '--cpus-per-task=3', '--kill-on-bad-exit=1',
        '--quotatype=auto', '--nodes=4'
    ]
    assert argv[split + 1] == '-u'
    assert Path(argv[split + 2]).resolve() == ROOT / 'tools' / f'{tool}.py'
    parser = train_parser() if tool == 'train' else test_parser()
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args' default for it
    args = parse_args(parser, argv[split + 3:])
    assert (args.config, args.launcher) == (CONFIG, 'slurm')
    assert (args.work_dir if tool == 'train' else args.checkpoint) == fourth
    assert args.cfg_options == {
        'train_cfg.max_iters': 3,
        'optim_wrapper.type': 'AmpOptimWrapper'
    }
