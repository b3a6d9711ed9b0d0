# UperNet with ResT-Small (v1) on ADE20K, 160k iterations, batch 16, crop
# 512. No published number: the ResT paper has no segmentation results.
# The recipe is the shared base's Swin-T one (mmseg's
# swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py:
# AdamW lr 6e-5, weight decay 0.01, none on the parameters named *norm*,
# 1500-iteration warm-up, poly); the drop-path rate is the authors'
# ImageNet / detection one (small 0.1, base 0.2).
_base_ = './_base_/rest_upernet_8xb2-160k_ade20k-512x512.py'

arch = 'small'
# The authors' ImageNet-1K weights, rest_small.pth: README of
# https://github.com/wofmanaf/ResT. Loaded as it is.
pretrained = f'checkpoints/rest_{arch}.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResT',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
