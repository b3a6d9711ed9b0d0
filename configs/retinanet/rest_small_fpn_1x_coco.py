# RetinaNet with ResT-Small on COCO 2017, 1x schedule: the paper's model
# (box AP 40.3 reported) with the authors' detectron2 recipe. Everything not
# set here is mmdet's RetinaNet R-50-FPN 1x.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmrest'], allow_failed_imports=False)

arch = 'small'
pretrained = f'checkpoints/rest_{arch}.pth'  # the authors' ImageNet weights
# Stages 2-4 feed the FPN; P6 and P7 are built on the last stage's output.
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResT',
        arch=arch,
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        in_channels=[128, 256, 512], start_level=0,
        add_extra_convs='on_input'))

# Multi-scale training: shorter side 640, 672, ..., 800, longer at most 1333.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomChoiceResize',
        scales=[(1333, s) for s in range(640, 801, 32)],
        keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

# AdamW, lr 1e-4, weight decay 0.05, gradient-norm clipping over the whole
# model (detectron2's full_model clipping, max norm 1.0).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05),
    clip_grad=dict(max_norm=1.0, norm_type=2))
# 12 epochs, lr / 10 after epochs 8 and 11; linear warm-up over 1000 iters.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
]
# Checkpoints are written whole or not at all, and resume / load_from read
# them weights-only (AtomicCheckpointHook). Each iteration reseeds the main
# process from (seed, iteration), so after a resume the model's own random
# draws (stochastic depth, proposal sampling) repeat; the augmentation in
# the persistent dataloader workers is not reseeded: a resumed run sees the
# same images in the same order, cropped / scaled / flipped differently
# (see IterSeedHook). Training stops with a message when the loss becomes
# NaN or infinite.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [
    dict(type='CheckInvalidLossHook', interval=1),
    dict(type='IterSeedHook'),
]
# 8 GPUs x 2 images; --auto-scale-lr rescales the lr for other batch sizes.
auto_scale_lr = dict(base_batch_size=16)
