# Mask R-CNN with ResT v2-Small, 3x (paper: box AP 48.1, mask AP 43.3,
# 60.7 M parameters). Weights: restv2_small_224.pth, README of
# https://github.com/wofmanaf/ResT ("ResTv2-S 224x224").
_base_ = './mask-rcnn_restv2-tiny_fpn_3x_coco.py'
arch = 'small'
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
