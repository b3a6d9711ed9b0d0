# UperNet with ResT-Base (v1) on ADE20K: the ResT-Small config with the
# base backbone. No published number (the ResT paper has no segmentation
# results).
_base_ = './rest-small_upernet_8xb2-160k_ade20k-512x512.py'

arch = 'base'
# rest_base.pth: README of https://github.com/wofmanaf/ResT.
pretrained = f'checkpoints/rest_{arch}.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
