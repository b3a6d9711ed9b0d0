# RetinaNet with ResT-Small on COCO 2017, 1x schedule: the paper's model
# (box AP 40.3 reported) with the authors' detectron2 recipe
# (wofmanaf/ResT object_detection/configs/ResTv1/
# retinanet_rest_small_FPN_1x.yaml on ../Base-RetinaNet.yaml, and
# detectron2's config/defaults.py for what they leave unset). mmdet's
# RetinaNet R-50-FPN 1x with the ResT backbone, COCO read and augmented as
# detectron2 does (../_base_/datasets/coco_detection_detectron2.py), the
# ResT schedule (AdamW, ../_base_/schedules/adamw_1x.py) and mmrest's
# runtime hooks (../_base_/det_runtime.py); what differs from mmdet's R-50
# config is set here. Every setting, its source and where mmdet cannot
# follow the authors: docs/detection.md, "The recipe".
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    '../_base_/datasets/coco_detection_detectron2.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/det_runtime.py',
    'mmdet::retinanet/retinanet_tta.py',
]

arch = 'small'
pretrained = f'checkpoints/rest_{arch}.pth'  # the authors' ImageNet weights
model = dict(
    # The input of the published v1 runs (detectron2's defaults, which
    # their v1 yaml files leave as they are): BGR, mean [103.53, 116.28,
    # 123.675], std 1. The ..._rgb-imagenet-norm_... variants correct it.
    data_preprocessor=dict(
        mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False),
    # Stages 2-4 feed the FPN; P6 and P7 are built on the last stage's
    # output, with a ReLU between them (detectron2's LastLevelP6P7); the
    # FPN's convs get detectron2's c2_xavier_fill (Kaiming uniform with a=1
    # on fan-in), not mmdet's Xavier.
    backbone=dict(
        _delete_=True,
        type='ResT',
        arch=arch,
        out_indices=(1, 2, 3),
        # The authors' FREEZE_AT = 2 cannot build as released (see the
        # Mask R-CNN config): nothing frozen.
        frozen_stages=-1,
        # The authors' v1 detection backbone (restv2/rest.py, forward)
        # replaces a returned stage's tokens by their output norm (norm1 ..
        # norm3) before the next stage; their classifier does not. The
        # published detectors were trained so.
        out_norms_feed_next_stage=True,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        in_channels=[128, 256, 512],
        start_level=0,
        add_extra_convs='on_input',
        relu_before_extra_convs=True,
        init_cfg=dict(
            type='Kaiming',
            layer='Conv2d',
            a=1,
            mode='fan_in',
            nonlinearity='leaky_relu',
            distribution='uniform')))
# Base-RetinaNet.yaml enables no gradient clipping (detectron2's default
# CLIP_GRADIENTS.ENABLED False): none, which is what adamw_1x.py leaves.

# detectron2's iteration-based run (the endless sampler is the data set
# base's): a checkpoint every 5,000 iterations (SOLVER.CHECKPOINT_PERIOD),
# logs counted in iterations.
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=5000))
log_processor = dict(by_epoch=False)
