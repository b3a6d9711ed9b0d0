# The ResT detection schedule (the authors' detectron2 recipe,
# wofmanaf/ResT object_detection/configs/Base-RCNN-FPN.yaml and
# Base-RetinaNet.yaml with their ResTv1/*.yaml, detectron2's
# config/defaults.py for what they leave unset; docs/detection.md, "The
# recipe", item by item): AdamW, lr 1e-4, weight decay 0.05 on weights and
# biases and none on the parameters of any normalisation layer (detectron2's
# WEIGHT_DECAY_NORM 0.0); detectron2's 1x schedule counted as detectron2
# counts it, in iterations: 90,000 iterations (about 12 COCO epochs at batch
# 16), lr / 10 at iterations 60,000 and 80,000 (SOLVER.MAX_ITER, STEPS),
# after a linear warm-up from 0.001 x lr over 1000 iterations. Evaluated
# once, at the end (TEST.EVAL_PERIOD 0). Batch 16 (8 GPUs x 2 images,
# mmdet's base_batch_size): --auto-scale-lr rescales the lr for other batch
# sizes (not the number of iterations). No gradient clipping here: the
# detector configs set their own (Mask R-CNN clips the total gradient norm
# at 0.01, RetinaNet does not clip). An iteration-based run also needs an
# endless sampler and checkpoints / logs by iteration, which the detector
# configs set beside their data loaders.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

max_iters = 90000
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0))
# The warm-up is detectron2's WarmupMultiStepLR one (WARMUP_FACTOR 1/1000,
# WARMUP_ITERS 1000, linear): factor 0.001 + 0.999 * i / 1000 at iteration
# i, 1 from iteration 1000. mmengine's LinearLR reaches its end factor at
# iteration end - 1, hence end=1001. The steps: iteration 60,000 (counted
# from 0) is the first at lr / 10, as in detectron2.
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
