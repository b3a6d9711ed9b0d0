# UperNet with ResT-Small on ADE20K (mmseg's UperNet schedule). Everything
# not set here is mmseg's UperNet R-50 512x512 160k ADE20K (its SGD
# schedule too: the paper gives no segmentation recipe).
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmrest'], allow_failed_imports=False)

arch = 'small'
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ResT',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained',
                      checkpoint=f'checkpoints/rest_{arch}.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
# Checkpoints are written whole or not at all, and resume / load_from read
# them weights-only (AtomicCheckpointHook). Each iteration reseeds the main
# process from (seed, iteration), so after a resume the model's own random
# draws (stochastic depth) repeat. The augmentation in the dataloader
# workers is not reseeded by it: mmengine replays the skipped batches from
# freshly seeded workers, and whether that repeats the uninterrupted run's
# crops and flips exactly is not tested (see IterSeedHook).
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='IterSeedHook')]
