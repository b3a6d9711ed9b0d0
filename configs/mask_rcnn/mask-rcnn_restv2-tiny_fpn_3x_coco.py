# Mask R-CNN with ResT v2-Tiny on COCO 2017, 3x schedule: the paper's model
# (box AP 47.6, mask AP 43.2, 49.9 M parameters reported) with the authors'
# detectron2 recipe (wofmanaf/ResT, object_detection/configs/ResTv2/
# mask_rcnn_restv2_tiny_FPN_3x.yaml on ../Base-RCNN-FPN.yaml): mmdet's
# Mask R-CNN R-50-FPN with the ResT v2 backbone, the ResT v2 schedule
# (AdamW with AMP, ../_base_/schedules/adamw-amp_3x.py) and mmrest's runtime
# hooks (../_base_/det_runtime.py); the training augmentation is set here.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw-amp_3x.py',
    '../_base_/det_runtime.py',
]

arch = 'tiny'
# The authors' ImageNet-1K weights, restv2_tiny_224.pth: download link
# (Baidu, access code "rest") in the README of
# https://github.com/wofmanaf/ResT ("ResTv2-T 224x224"). Loaded as it is.
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,  # the authors': tiny 0.1, small 0.2, base 0.3
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# Multi-scale training: the authors' shorter sides from 480 to 800 (their
# list as it is, 534 included), longer side at most 1333, after a random
# relative crop of 0.9 x 0.9 (boxes of cropped objects recomputed from their
# masks, as detectron2 does with masks on).
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='RandomCrop',
        crop_type='relative',
        crop_size=(0.9, 0.9),
        recompute_bbox=True),
    dict(
        type='RandomChoiceResize',
        scales=[(1333, s) for s in (480, 512, 534, 576, 640, 672, 704, 736,
                                    768, 800)],
        keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
