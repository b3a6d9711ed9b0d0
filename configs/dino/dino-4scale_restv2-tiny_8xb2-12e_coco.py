# DINO (4 scales) with ResT v2-Tiny on COCO 2017, 12 epochs, batch 16. NOT
# in the ResT v2 paper: no result published, none reproduced here
# (README.md beside this file). Recipe: mmdet's DINO
# (dino/dino-4scale_r50_8xb2-12e_coco.py: AdamW lr 1e-4, weight decay 1e-4,
# backbone lr x 0.1, gradient norm clipped at 0.1, lr / 10 after epoch 11)
# with a transformer backbone plugged in as mmdet's Swin DINO does it: the
# backbone's stages 2-4 (strides 8, 16, 32) through the ChannelMapper, which
# adds the fourth level (stride 64) with a stride-2 conv on the last one.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'

# mmrest's backbones and runtime safeguards (as ../_base_/det_runtime.py:
# atomic weights-only checkpoints, per-iteration reseeding, a stop on NaN
# losses).
custom_imports = dict(imports=['mmrest'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [
    dict(type='CheckInvalidLossHook', interval=1),
    dict(type='IterSeedHook'),
]

arch = 'tiny'
# The authors' ImageNet-1K weights, restv2_tiny_224.pth (README of
# https://github.com/wofmanaf/ResT, "ResTv2-T 224x224"), loaded as it is.
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    # mmdet's DINO input: RGB with the ImageNet mean / std (the ResT v2
    # ImageNet statistics), no padding to a multiple (ResT v2 takes any
    # size).
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch=arch,
        out_indices=(1, 2, 3),  # only the stages the neck uses
        frozen_stages=-1,
        drop_path_rate=0.1,  # the authors': tiny 0.1, small 0.2, base 0.3
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
