# UperNet with ResT v2-Small on ADE20K, 160k iterations, batch 16, crop 512:
# the paper's model (mIoU 49.2 with multi-scale + flip testing, 72.9 M
# parameters; single-scale not published) with the authors' recipe: AdamW
# lr 1.5e-4, weight decay 0.05, stage-wise lr decay 0.9 (their config,
# wofmanaf/ResT semantic_segmentation/configs/ResTv2/
# upernet_restv2_small_512_160k_ade20k.py, names a constructor their release
# lacks; mmrest's ResTLayerDecayOptimizerConstructor implements the rule,
# see mmrest/engine/layer_decay.py: stem x0.9^5, stage s x0.9^(5-s), heads
# and output norms x1; no weight decay on norms and biases).
_base_ = './restv2-tiny_upernet_8xb2-160k_ade20k-512x512.py'

arch = 'small'
# restv2_small_224.pth: README of https://github.com/wofmanaf/ResT
# ("ResTv2-S 224x224").
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    backbone=dict(
        arch=arch, drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1.5e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ResTLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'))
