# The ResT ADE20K recipe shared by configs/upernet: mmseg's UperNet (the
# heads of its Swin config: UPerHead with 512 channels and an FCN auxiliary
# head on stage 3, SyncBN in both), ADE20K with 512 x 512 crops, 160k
# iterations at 2 images on each of 8 GPUs (batch 16), AdamW with a poly
# (power 1) decay to 0 over the 160k iterations, multiplied by a linear
# warm-up over the first 1500 (docs/segmentation.md, "The recipe").
#
# The optimiser is the authors' ResT v2-Tiny one (wofmanaf/ResT,
# semantic_segmentation/configs/ResTv2/upernet_restv2_tiny_512_160k_ade20k.py),
# which is mmseg's Swin-T recipe: lr 6e-5, weight decay 0.01 except for
# the parameters whose name contains 'norm' (mmengine's custom_keys match
# substrings: the LayerNorms and the BatchNorms named *norm*; ResT v2's stem
# BatchNorms stem.proj.1 / stem.proj.4 and the heads' `bn` do not match and
# are decayed, as in the authors' run). The small and base v2 configs
# replace it by the layer-decay optimiser.
#
# The backbone here is ResT v2-Tiny from scratch; the model configs name
# the variant and its ImageNet checkpoint.
#
# SyncBN: tools/train.py (mmengine's Runner) turns it into BatchNorm on its
# own when the run is not distributed (one GPU, the CPU); a distributed run
# without CUDA (tools/dist_train.sh on CPUs) gets BatchNorm with a warning
# from mmrest_tools.launch. Everything not set here is mmseg's.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmrest'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.))))
# The authors' mmseg 0.x lr_config (policy 'poly', power 1, min_lr 0,
# linear warm-up over 1500 iterations from 1e-6): the poly decay runs over
# all 160k iterations from iteration 0 and the warm-up factor
# (1e-6 + (1 - 1e-6) * i / 1500 at iteration i) multiplies it during the
# first 1500; mmengine's two schedulers compose the same way when both
# start at 0. mmengine's LinearLR and PolyLR run their course over
# end - begin - 1 iterations, hence end=1501 (full lr from iteration 1500)
# and end=160001 (lr x (1 - i / 160000) at iteration i).
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=0,
        end=160001,
        by_epoch=False),
]
# 8 GPUs x 2 images; --auto-scale-lr scales the lr to another batch.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Multi-scale + flip testing (tools/test.py --tta): mmseg's SegTTAModel and
# the ADE20K tta_pipeline (scales 0.5-1.75 of 2048 x 512, each flipped and
# not), both inherited from mmseg's bases.

# Checkpoints are written whole or not at all, and resume / load_from read
# them weights-only (AtomicCheckpointHook). Each iteration reseeds the main
# process from (seed, iteration), so after a resume the model's own random
# draws (stochastic depth) repeat; the augmentation in the dataloader
# workers is not reseeded by it (see IterSeedHook).
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='IterSeedHook')]
