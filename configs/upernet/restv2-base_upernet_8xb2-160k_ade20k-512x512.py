# UperNet with ResT v2-Base on ADE20K, 160k iterations, batch 16, crop 512:
# the paper's model (mIoU 49.6 with multi-scale + flip testing, 87.6 M
# parameters; single-scale not published) with the authors' recipe, the
# small config's (AdamW lr 1.5e-4, weight decay 0.05, stage-wise lr decay
# 0.9).
_base_ = './restv2-small_upernet_8xb2-160k_ade20k-512x512.py'

arch = 'base'
# restv2_base_224.pth: README of https://github.com/wofmanaf/ResT
# ("ResTv2-B 224x224").
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
