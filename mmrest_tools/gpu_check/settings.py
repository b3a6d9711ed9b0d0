# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""What a run measures, and at which sizes: the sections, the
models, the criteria and :class:`Settings`."""
import os.path as osp
from typing import Optional

import torch

from ..compared import QUICK_REST_ARCH

SECTIONS = ('equality', 'syncbn', 'throughput', 'maskrcnn', 'variants',
            'compile')
# the repository: mmrest_tools/gpu_check/settings.py, three levels up
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
REST_MASKRCNN_CONFIG = osp.join(REPO_ROOT, 'configs', 'mask_rcnn',
                                'mask-rcnn_rest-small_fpn_1x_coco.py')
SWIN_MASKRCNN_CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
RESTV2_MASKRCNN_CONFIG = osp.join(REPO_ROOT, 'configs', 'mask_rcnn',
                                  'mask-rcnn_restv2-tiny_fpn_1x_coco.py')
MASKRCNN_MODELS = (('mask_rcnn_rest_small', REST_MASKRCNN_CONFIG),
                   ('mask_rcnn_restv2_tiny', RESTV2_MASKRCNN_CONFIG),
                   ('mask_rcnn_swin_t', SWIN_MASKRCNN_CONFIG))
# backbones of the throughput table, the main comparison first
THROUGHPUT_MAIN = ('rest_small', 'rest_small_literal', 'restv2_tiny', 'swin_t',
                   'resnet50')
THROUGHPUT_MORE = ('rest_lite', 'rest_lite_literal', 'rest_base',
                   'rest_base_literal', 'rest_large', 'rest_large_literal')
# cuDNN autotuning of each section (torch.backends.cudnn.benchmark, set
# explicitly and recorded): on for the backbone timings (fixed input sizes);
# off for Mask R-CNN, mmdet's default (env_cfg) for its varying sizes.
CUDNN_BENCHMARK = dict(throughput=True, variants=True, maskrcnn=False)
FP32_FLOOR = 100 * torch.finfo(torch.float32).eps  # the fp32 criterion's floor
AMP_FACTOR, AMP_FLOOR = 1.5, 1e-3  # the autocast criterion


class Settings:
    """Sizes and counts of one run (full, or ``quick`` for a CPU smoke test).

    Args:
        quick (bool): The smoke test's small sizes and counts, and float32
            where the full run uses float16.
        repeats (int, optional): Timed calls per figure of the throughput,
            variants and compile sections. Defaults to 1 (quick) or 10.
        warmup (int, optional): Untimed calls before them. Defaults to 0
            (quick) or 3.
        mr_iters (int, optional): Timed Mask R-CNN iterations. Defaults to
            1 (quick) or 5.
    """

    def __init__(self,
                 quick: bool,
                 repeats: Optional[int] = None,
                 warmup: Optional[int] = None,
                 mr_iters: Optional[int] = None):
        self.quick = quick
        if quick:
            self.eq_arch = QUICK_REST_ARCH
            self.eq_shapes = [(1, 3, 33, 47)]
            self.eq_modes = ('eval_nograd', 'train_grad_cp')
            self.eq_amp = (torch.float16, )
            self.amp_steps_shape = (1, 3, 33, 47)
            self.amp_steps = 1
            self.small = (1, 3, 64, 64)  # stands for 224x224 batch 64
            self.large = (1, 3, 64, 96)  # stands for 800x1344 batch 1
            self.train = (2, 3, 64, 96)  # stands for 800x1344 batch 2
            # the compile section's multi-scale training steps
            self.train_sizes = [(1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 80, 80)]
            self.mr_image = (96, 128)  # H, W; stands for 800 x 1333
            self.mr_batch = 1
            self.mr_warmup = 0
            self.throughput_models = THROUGHPUT_MAIN
            self.more_models = ()
            # CPUs without fp16 arithmetic emulate it (minutes): the speed,
            # memory and Mask R-CNN code runs in float32 in quick mode
            self.amp = None
        else:
            self.eq_arch = 'small'
            self.eq_shapes = [(2, 3, 224, 288), (1, 3, 97, 131)]
            self.eq_modes = ('eval_nograd', 'eval_grad', 'train_grad',
                             'train_grad_cp')
            self.eq_amp = (torch.float16, torch.bfloat16)
            self.amp_steps_shape = (2, 3, 224, 288)
            self.amp_steps = 3
            self.amp = torch.float16
            self.small = (64, 3, 224, 224)
            self.large = (1, 3, 800, 1344)
            self.train = (2, 3, 800, 1344)
            # batches of Mask R-CNN's 1x pipeline (shorter side 800, longer
            # at most 1333, padded to multiples of 32): the size changes
            # with the images' aspect ratios
            self.train_sizes = [(2, 3, 800, 1344), (2, 3, 800, 1216),
                                (2, 3, 736, 1344), (2, 3, 800, 1088)]
            self.mr_image = (800, 1333)
            self.mr_batch = 2
            self.mr_warmup = 2
            self.throughput_models = THROUGHPUT_MAIN
            self.more_models = THROUGHPUT_MORE
        self.repeats = repeats if repeats is not None else (1 if quick else 10)
        self.warmup = warmup if warmup is not None else (0 if quick else 3)
        self.mr_iters = mr_iters if mr_iters is not None else (
            1 if quick else 5)
        # training steps (backbones): untimed warm-ups, then the median of
        # the timed steps, each between two synchronisations
        self.train_warmup = 1 if quick else 2
        self.train_repeats = 2 if quick else 5
        # EMSA cores of the variants section (kernels.EMSA_CORES; the
        # compiled one is skipped with --compile-backend off)
        from mmrest.backbones import kernels
        self.variant_cores = tuple(kernels.EMSA_CORES)
        self.amp_name = str(self.amp).replace('torch.', '') if self.amp \
            else 'float32 (quick mode)'
