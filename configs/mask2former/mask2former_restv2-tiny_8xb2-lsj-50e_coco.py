# Mask2Former (instance segmentation) with ResT v2-Tiny on COCO 2017, large
# scale jitter at 1024 x 1024, 368,750 iterations at batch 16 (about 50
# epochs). NOT in the ResT v2 paper: no result published, none reproduced
# here (README.md beside this file). Recipe: mmdet's Swin-T Mask2Former
# (mask2former/mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco.py on
# mask2former_r50_8xb2-lsj-50e_coco.py: AdamW lr 1e-4, weight decay 0.05,
# backbone lr x 0.1, no weight decay on norms and query / level
# embeddings, gradient norm clipped at 0.01, lr / 10 at 327,778 and
# 355,092 iterations) with ResT v2-T in place of Swin-T (the same widths:
# 96, 192, 384, 768 at strides 4-32).
_base_ = 'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py'

# mmrest's backbones and runtime safeguards (as ../_base_/det_runtime.py:
# atomic weights-only checkpoints, per-iteration reseeding, a stop on NaN
# losses). The checkpoint hook keeps the base's interval and iterations.
custom_imports = dict(imports=['mmrest'], allow_failed_imports=False)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [
    dict(type='CheckInvalidLossHook', interval=1),
    dict(type='IterSeedHook'),
]

arch = 'tiny'
depths = [1, 2, 6, 2]  # ResT v2-T's blocks per stage
# The authors' ImageNet-1K weights, restv2_tiny_224.pth (README of
# https://github.com/wofmanaf/ResT, "ResTv2-T 224x224"), loaded as it is.
pretrained = f'checkpoints/restv2_{arch}_224.pth'
model = dict(
    # mmdet's Mask2Former input: RGB with the ImageNet mean / std (the
    # ResT v2 ImageNet statistics).
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        # The authors' rate for ResT v2-T (Swin-T's config has 0.3, its own
        # ImageNet rate): tiny 0.1, small 0.2, base 0.3.
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(in_channels=[96, 192, 384, 768]))

# mmdet's Swin rule: the backbone at lr x 0.1 with weight decay (the base's
# custom key 'backbone'), its norms at lr x 0.1 without. A custom key
# overrides norm_decay_mult, so, as
# mmdet's Swin config lists Swin's norms, every ResT v2 norm is listed:
# the stem's two BatchNorms and token LayerNorm, each patch embedding's
# LayerNorm, each block's two LayerNorms and its attention's (sr_norm, for
# stages with a spatial reduction, and up_norm), and the output norms.
backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
custom_keys = {
    'backbone.stem.proj.1': backbone_norm_multi,
    'backbone.stem.proj.4': backbone_norm_multi,
    'backbone.stem.norm': backbone_norm_multi,
    'backbone.norm_': backbone_norm_multi,
}
custom_keys.update({
    f'backbone.patch_{stage + 1}.norm': backbone_norm_multi
    for stage in range(1, len(depths))
})
custom_keys.update({
    f'backbone.stage{stage + 1}.{block}.{norm}':
    backbone_norm_multi
    for stage, num_blocks in enumerate(depths)
    for block in range(num_blocks)
    for norm in ('norm', 'attn.sr_norm', 'attn.up_norm')
})
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys=custom_keys, norm_decay_mult=0.0))
