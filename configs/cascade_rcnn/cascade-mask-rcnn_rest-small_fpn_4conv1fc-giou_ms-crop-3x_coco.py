# Cascade Mask R-CNN with ResT-Small on COCO 2017, 3x schedule with
# multi-scale training and random crops. NOT in the ResT paper: no result
# published, none reproduced here (README.md beside this file).
# Recipe: mmdet's Swin / ConvNeXt Cascade Mask R-CNN 3x (mmdet's
# convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-
# 3x_coco.py: the R-50 Cascade Mask R-CNN with three 4conv1fc box heads
# (SyncBN, GIoU loss), DETR-style multi-scale + crop augmentation, 36
# epochs, lr / 10 after epochs 27 and 33), with the optimisation of the
# authors' Mask R-CNN (AdamW lr 1e-4, weight decay 0.05 and none on norms,
# total gradient norm clipped at 0.01) in place of ConvNeXt's layer-wise
# decay, and the ResT backbone as the authors' detectors use it.
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'  # noqa

# mmrest instead of mmcls (the ConvNeXt backbone's package), and mmrest's
# runtime safeguards (../_base_/det_runtime.py has them too, but a second
# base may not repeat the keys of mmdet's default runtime): atomic
# weights-only checkpoints, per-iteration reseeding, a stop on NaN losses.
custom_imports = dict(imports=['mmrest'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [
    dict(type='CheckInvalidLossHook', interval=1),
    dict(type='IterSeedHook'),
]

arch = 'small'
pretrained = f'checkpoints/rest_{arch}.pth'  # the authors' ImageNet weights
model = dict(
    # The input is mmdet's base one, RGB with the ImageNet mean / std, the
    # statistics the ImageNet backbone was trained with (not the BGR /
    # std-1 input of the authors' v1 detectors: README.md).
    backbone=dict(
        _delete_=True,
        type='ResT',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        # As the authors' v1 detection backbone: a returned stage's normed
        # tokens go on to the next stage.
        out_norms_feed_next_stage=True,
        drop_path_rate=0.1,  # the authors': lite / small 0.1, base 0.2
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

# The authors' Mask R-CNN optimisation (v1 without mixed precision, as
# their v1 runs): AdamW, lr 1e-4 at batch 16, weight decay 0.05 on weights
# and biases, none on any normalisation layer, the total gradient 2-norm
# clipped at 0.01.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0),
    clip_grad=dict(max_norm=0.01, norm_type=2))
