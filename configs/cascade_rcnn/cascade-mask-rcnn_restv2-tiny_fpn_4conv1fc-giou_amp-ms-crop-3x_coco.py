# Cascade Mask R-CNN with ResT v2-Tiny on COCO 2017, 3x schedule with
# multi-scale training and random crops, mixed precision. NOT in the ResT v2
# paper: no result published, none reproduced here (README.md beside this
# file). The ResT-Small config of this folder (mmdet's Swin / ConvNeXt
# Cascade Mask R-CNN 3x recipe with the authors' Mask R-CNN optimisation)
# with what the authors' v2 Mask R-CNN changes: the backbone, mixed
# precision, weight decay on the backbone's output norms.
_base_ = './cascade-mask-rcnn_rest-small_fpn_4conv1fc-giou_ms-crop-3x_coco.py'

arch = 'tiny'
# The authors' ImageNet-1K weights, restv2_tiny_224.pth (README of
# https://github.com/wofmanaf/ResT, "ResTv2-T 224x224"), loaded as it is.
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        drop_path_rate=0.1,  # the authors': tiny 0.1, small 0.2, base 0.3
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# The authors' v2 Mask R-CNN: mixed precision with a dynamic loss scale (the
# gradient is unscaled before it is clipped), and weight decay on the
# output norms norm_1..norm_4 (their own LayerNorm class, which
# detectron2's optimizer did not take for a norm). The AMP wrapper needs a
# GPU: on a CPU, pass --cfg-options optim_wrapper.type=OptimWrapper.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    paramwise_cfg=dict(custom_keys={'backbone.norm_': dict(decay_mult=1.0)}))
