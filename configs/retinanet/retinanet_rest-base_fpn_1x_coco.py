# RetinaNet with ResT-Base (paper: box AP 42.0).
_base_ = './retinanet_rest-small_fpn_1x_coco.py'
arch = 'base'
pretrained = f'checkpoints/rest_{arch}.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
