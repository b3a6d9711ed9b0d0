# RetinaNet with ResT-Lite: not in the paper, same recipe as ResT-Small.
_base_ = './retinanet_rest-small_fpn_1x_coco.py'
arch = 'lite'
pretrained = f'checkpoints/rest_{arch}.pth'
model = dict(backbone=dict(arch=arch, init_cfg=dict(checkpoint=pretrained)))
