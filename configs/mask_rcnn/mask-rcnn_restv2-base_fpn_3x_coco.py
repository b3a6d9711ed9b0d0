# Mask R-CNN with ResT v2-Base, 3x (paper: box AP 48.7, mask AP 43.9,
# 75.5 M parameters). Weights: restv2_base_224.pth, README of
# https://github.com/wofmanaf/ResT ("ResTv2-B 224x224").
_base_ = './mask-rcnn_restv2-tiny_fpn_3x_coco.py'
arch = 'base'
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
