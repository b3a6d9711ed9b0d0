# COCO 2017 object detection read and augmented as detectron2 does, for the
# ResT RetinaNet configs (the authors' detectron2 recipe: wofmanaf/ResT
# object_detection/configs/Base-RetinaNet.yaml with ResTv1/*.yaml, and
# detectron2's config/defaults.py for what they leave unset). mmdet's COCO
# detection data set with only what detectron2 does differently;
# docs/detection.md, "The recipe", lists every setting.
_base_ = 'mmdet::_base_/datasets/coco_detection.py'

# As detectron2 reads and augments COCO: images decoded and resized with
# PIL; the shorter side drawn from 640, 672, ..., 800 (longer side at most
# 1333); horizontal flip; no crop. The ResT v2 config changes only the
# shorter sides (the RandomChoiceResize step).
train_pipeline = [
    dict(
        type='LoadImageFromFile',
        imdecode_backend='pillow',
        backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomChoiceResize',
        scales=[(1333, s) for s in range(640, 801, 32)],
        keep_ratio=True,
        backend='pillow'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# detectron2's test time: PIL decoding, shorter side 800 (longer side at
# most 1333), resized with PIL (bilinear), as its read_image and
# ResizeShortestEdge do.
test_pipeline = [
    dict(
        type='LoadImageFromFile',
        imdecode_backend='pillow',
        backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True, backend='pillow'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]
# detectron2's training stream: an endless shuffled stream of images (its
# TrainingSampler; mmengine's InfiniteSampler), for the iteration-based
# schedule (../schedules/adamw_1x.py), batches of one aspect-ratio group
# (mmdet's AspectRatioBatchSampler, from mmdet's base); images without
# objects dropped (DATALOADER.FILTER_EMPTY_ANNOTATIONS), no minimum image
# size.
train_dataloader = dict(
    sampler=dict(type='InfiniteSampler'),
    dataset=dict(
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
