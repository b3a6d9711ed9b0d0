# Mask R-CNN with ResT-Base (paper: box AP 41.6, mask AP 38.7).
_base_ = './mask-rcnn_rest-small_fpn_1x_coco.py'
arch = 'base'
pretrained = f'checkpoints/rest_{arch}.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
