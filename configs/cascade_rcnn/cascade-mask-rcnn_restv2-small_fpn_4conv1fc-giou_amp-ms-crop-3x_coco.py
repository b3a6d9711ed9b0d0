# Cascade Mask R-CNN with ResT v2-Small, 3x multi-scale + crop, mixed
# precision. Not in the paper, no result reproduced (README.md). Weights:
# restv2_small_224.pth, README of https://github.com/wofmanaf/ResT
# ("ResTv2-S 224x224").
_base_ = './cascade-mask-rcnn_restv2-tiny_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'  # noqa
arch = 'small'
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
