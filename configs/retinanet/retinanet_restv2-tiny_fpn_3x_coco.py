# RetinaNet with ResT v2-Tiny, 3x schedule: the authors' released config
# (wofmanaf/ResT object_detection/configs/ResTv2/
# retinanet_restv2_tiny_FPN_3x.yaml on ../Base-RetinaNet.yaml), for which
# they published no result. That yaml names a backbone builder
# (build_retinanet_swint_fpn_backbone, with SWINT settings) that exists
# nowhere in their release; the builder their release does have for it,
# build_retinanet_restv2_fpn_backbone, is used here: ResT v2 stages 2-4 into
# the FPN, P6 and P7 on the last stage's output. Everything else is the
# yaml's: RGB input with ImageNet statistics, shorter sides 384 to 1024 in
# steps of 128 (longer side at most 1333), AMP, 270,000 iterations with lr /
# 10 at 210,000 and 250,000, and, as for every RetinaNet of theirs, no
# gradient clipping. docs/detection.md, "The recipe", lists every setting.
_base_ = './retinanet_rest-small_fpn_1x_coco.py'

arch = 'tiny'
# The authors' ImageNet-1K weights, restv2_tiny_224.pth: download link
# (Baidu, access code "rest") in the README of
# https://github.com/wofmanaf/ResT ("ResTv2-T 224x224").
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch=arch,
        out_indices=(1, 2, 3),
        frozen_stages=-1,  # the authors' v2 backbone: nothing frozen
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))

# As in the Mask R-CNN v2 configs: the authors' output norms (their own
# LayerNorm class) got the weight decay, no other norm did; mixed
# precision (needs a GPU: on a CPU, pass
# --cfg-options optim_wrapper.type=OptimWrapper).
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    paramwise_cfg=dict(custom_keys={'backbone.norm_': dict(decay_mult=1.0)}))
# 3x: 270,000 iterations, lr / 10 at 210,000 and 250,000, the 1x warm-up;
# evaluated every 30,000 iterations (the yaml's TEST.EVAL_PERIOD). The
# base's schedulers with their end and steps moved.
max_iters = 270000
train_cfg = dict(max_iters=max_iters, val_interval=30000)
param_scheduler = [
    dict(step, end=max_iters, milestones=[210000, 250000])
    if step.type == 'MultiStepLR' else step for step in _base_.param_scheduler
]

# The v2 yaml's shorter sides (longer side at most 1333); every other step
# is the data set base's (../_base_/datasets/coco_detection_detectron2.py).
# mmengine replaces a list whole when configs merge, so the pipeline is the
# base's with its RandomChoiceResize step rebuilt.
train_pipeline = [
    dict(step, scales=[(1333, s) for s in (384, 512, 640, 768, 896, 1024)])
    if step.type == 'RandomChoiceResize' else step
    for step in _base_.train_pipeline
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
