# The ResT v2 detection schedule (the authors' detectron2 recipe,
# wofmanaf/ResT object_detection/configs/ResTv2/*_3x.yaml on
# ../Base-RCNN-FPN.yaml): 36 epochs, lr / 10 after epochs 27 and 33; AdamW,
# lr 1e-4, weight decay 0.05, linear warm-up over 1000 iterations as in the
# 1x schedule; full-model gradient-norm clipping with the authors' max norm
# 0.01 (CLIP_TYPE full_model, CLIP_VALUE 0.01, NORM_TYPE 2); mixed precision
# (their AMP.ENABLED). The AMP wrapper needs a GPU: on a CPU, pass
# --cfg-options optim_wrapper.type=OptimWrapper.
_base_ = './adamw_1x.py'

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    clip_grad=dict(max_norm=0.01))
train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True,
         milestones=[27, 33], gamma=0.1),
]
