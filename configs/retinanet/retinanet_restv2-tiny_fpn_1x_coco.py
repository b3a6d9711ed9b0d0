# RetinaNet with ResT v2-Tiny, 1x schedule, for less compute: the 3x
# config's model, data and optimiser (the authors' v2 RetinaNet yaml, see
# there) over 12 epochs (lr / 10 after epochs 8 and 11). No published
# number: the authors report no v2 RetinaNet result.
_base_ = './retinanet_restv2-tiny_fpn_3x_coco.py'
train_cfg = dict(max_epochs=12)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1001),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
]
