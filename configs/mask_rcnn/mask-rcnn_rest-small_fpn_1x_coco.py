# Mask R-CNN with ResT-Small on COCO 2017, 1x schedule: the paper's model
# (box AP 39.6, mask AP 37.2 reported) with the authors' detectron2 recipe.
# mmdet's Mask R-CNN R-50-FPN 1x with the ResT backbone, the ResT schedule
# (AdamW, ../_base_/schedules/adamw_1x.py) and mmrest's runtime hooks
# (../_base_/det_runtime.py); the training augmentation is set here.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/det_runtime.py',
]

arch = 'small'
pretrained = f'checkpoints/rest_{arch}.pth'  # the authors' ImageNet weights
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResT',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))

# Multi-scale training: shorter side 640, 672, ..., 800 (longer side at most
# 1333), after a random relative crop of 0.9 x 0.9. As detectron2 does with
# masks on, the boxes of cropped objects are recomputed from their masks.
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
        scales=[(1333, s) for s in range(640, 801, 32)],
        keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
