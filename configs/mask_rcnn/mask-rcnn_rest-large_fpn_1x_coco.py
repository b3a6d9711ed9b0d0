# Mask R-CNN with ResT-Large: not in the paper, same recipe as ResT-Base.
_base_ = './mask-rcnn_rest-base_fpn_1x_coco.py'
arch = 'large'
pretrained = f'checkpoints/rest_{arch}.pth'
model = dict(backbone=dict(arch=arch, init_cfg=dict(checkpoint=pretrained)))
