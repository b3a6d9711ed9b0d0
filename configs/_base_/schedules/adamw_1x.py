# The ResT detection schedule (the authors' detectron2 recipe, SPEC.md):
# mmdet's 1x schedule (12 epochs, lr / 10 after epochs 8 and 11) with AdamW,
# lr 1e-4, weight decay 0.05, gradient-norm clipping over the whole model
# (detectron2's full_model clipping, max norm 1.0) and a linear warm-up over
# 1000 iterations. Batch 16 (8 GPUs x 2 images, mmdet's base_batch_size):
# --auto-scale-lr rescales the lr for other batch sizes.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05),
    clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
]
