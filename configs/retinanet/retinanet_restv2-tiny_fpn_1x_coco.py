# RetinaNet with ResT v2-Tiny, 1x schedule, for less compute: the 3x
# config's model, data and optimiser (the authors' v2 RetinaNet yaml, see
# there) over the v1 1x schedule (90,000 iterations, lr / 10 at 60,000 and
# 80,000). No published number: the authors report no v2 RetinaNet result.
_base_ = './retinanet_restv2-tiny_fpn_3x_coco.py'
max_iters = 90000
train_cfg = dict(max_iters=max_iters)
param_scheduler = [
    dict(step, end=max_iters, milestones=[60000, 80000])
    if step.type == 'MultiStepLR' else step for step in _base_.param_scheduler
]
