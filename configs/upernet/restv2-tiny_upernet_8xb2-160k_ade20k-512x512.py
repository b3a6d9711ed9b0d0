# UperNet with ResT v2-Tiny on ADE20K, 160k iterations, batch 16, crop 512:
# the paper's model (mIoU 47.3 with multi-scale + flip testing, 62.1 M
# parameters; single-scale not published) with the authors' recipe (the
# shared base: AdamW lr 6e-5, weight decay 0.01, none on norms).
_base_ = './_base_/rest_upernet_8xb2-160k_ade20k-512x512.py'

arch = 'tiny'
# The authors' ImageNet-1K weights, restv2_tiny_224.pth: download link
# (Baidu, access code "rest") in the README of
# https://github.com/wofmanaf/ResT ("ResTv2-T 224x224"). Loaded as it is.
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        arch=arch,
        drop_path_rate=0.1,  # the authors': tiny 0.1, small 0.2, base 0.3
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
