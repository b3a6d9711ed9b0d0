# Mask R-CNN with ResT v2-Tiny, 1x schedule, for less compute: the 3x
# config's model, data and optimiser over the v1 1x schedule (90,000
# iterations, lr / 10 at 60,000 and 80,000). No published number: the
# authors report v2 with 3x only.
_base_ = './mask-rcnn_restv2-tiny_fpn_3x_coco.py'
max_iters = 90000
train_cfg = dict(max_iters=max_iters)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1001),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_iters,
        by_epoch=False,
        milestones=[60000, 80000],
        gamma=0.1),
]
