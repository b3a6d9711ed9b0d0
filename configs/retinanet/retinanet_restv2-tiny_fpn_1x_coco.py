# RetinaNet with ResT v2-Tiny, 1x schedule. No published number: the
# authors released a RetinaNet v2-Tiny config (3x) but no result for it.
# The ResT-Small RetinaNet recipe (AdamW, lr 1e-4, wd 0.05, multi-scale
# 640-800, 12 epochs) with the v2 backbone; stages 2-4 feed the FPN, P6 and
# P7 are built on the last stage's output.
_base_ = './retinanet_rest-small_fpn_1x_coco.py'

arch = 'tiny'
# The authors' ImageNet-1K weights, restv2_tiny_224.pth: download link
# (Baidu, access code "rest") in the README of
# https://github.com/wofmanaf/ResT ("ResTv2-T 224x224").
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch=arch,
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
