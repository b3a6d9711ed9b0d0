# Mask R-CNN with ResT v2-Tiny on COCO 2017, 3x schedule: the paper's model
# (box AP 47.6, mask AP 43.2, 49.9 M parameters reported) with the authors'
# detectron2 recipe (wofmanaf/ResT object_detection/configs/ResTv2/
# mask_rcnn_restv2_tiny_FPN_3x.yaml on ../Base-RCNN-FPN.yaml): the ResT
# Mask R-CNN config (its heads, clipping at 0.01, optimiser, augmentation)
# with what the v2 yaml files change: the backbone, RGB input with
# ImageNet statistics, shorter sides from 480 to 800, 270,000 iterations
# with mixed precision. docs/detection.md, "The recipe", lists every setting.
_base_ = './mask-rcnn_rest-small_fpn_1x_coco.py'

arch = 'tiny'
# The authors' ImageNet-1K weights, restv2_tiny_224.pth: download link
# (Baidu, access code "rest") in the README of
# https://github.com/wofmanaf/ResT ("ResTv2-T 224x224"). Loaded as it is.
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    # PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT of the v2 yaml files.
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,  # the authors' v2 backbone: nothing frozen
        drop_path_rate=0.1,  # the authors': tiny 0.1, small 0.2, base 0.3
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# The authors' v2 output norms (norm_1..norm_4) are their own LayerNorm
# class, which detectron2's optimizer does not take for a norm: they got the
# weight decay of 0.05, every other norm none. Mixed precision (AMP.ENABLED,
# dynamic loss scaling); the gradient is unscaled before it is clipped. The
# AMP wrapper needs a GPU: on a CPU, pass
# --cfg-options optim_wrapper.type=OptimWrapper.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    paramwise_cfg=dict(custom_keys={'backbone.norm_': dict(decay_mult=1.0)}))
# 3x: 270,000 iterations, lr / 10 at 210,000 and 250,000 (SOLVER.MAX_ITER,
# STEPS), the 1x warm-up; evaluated every 20,000 iterations
# (TEST.EVAL_PERIOD). The base's schedulers with their end and steps moved.
max_iters = 270000
train_cfg = dict(max_iters=max_iters, val_interval=20000)
param_scheduler = [
    dict(step, end=max_iters, milestones=[210000, 250000])
    if step.type == 'MultiStepLR' else step for step in _base_.param_scheduler
]

# The v2 yaml's shorter sides (their list as it is, 534 included; longer
# side at most 1333); every other step is the data set base's
# (../_base_/datasets/coco_instance_detectron2.py). mmengine replaces a list
# whole when configs merge, so the pipeline is the base's with its
# RandomChoiceResize step rebuilt.
train_pipeline = [
    dict(
        step,
        scales=[(1333, s)
                for s in (480, 512, 534, 576, 640, 672, 704, 736, 768,
                          800)]) if step.type == 'RandomChoiceResize' else step
    for step in _base_.train_pipeline
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
