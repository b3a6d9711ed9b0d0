"""Distributed training: tools/dist_train.sh starts 2 CPU processes with
torchrun (gloo backend, PyTorch DDP through mmengine) that train a few
iterations on a tiny COCO-format set and evaluate it together."""
import re
import shutil
import socket
import sys

import torch
from _helpers import run_program

CONFIG = 'configs/mask_rcnn/mask-rcnn_rest-lite_fpn_1x_coco.py'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_training(tmp_path):
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
    shutil.rmtree(work)
