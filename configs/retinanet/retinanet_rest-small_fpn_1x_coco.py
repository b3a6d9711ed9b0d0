# RetinaNet with ResT-Small on COCO 2017, 1x schedule: the paper's model
# (box AP 40.3 reported) with the authors' detectron2 recipe. mmdet's
# RetinaNet R-50-FPN 1x with the ResT backbone, the ResT schedule (AdamW,
# ../_base_/schedules/adamw_1x.py) and mmrest's runtime hooks
# (../_base_/det_runtime.py); the training augmentation is set here.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/det_runtime.py',
    'mmdet::retinanet/retinanet_tta.py',
]

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
