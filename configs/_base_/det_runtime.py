# mmdet's runtime with mmrest: the ResT backbones and mmrest's hooks
# registered (custom_imports), and three safeguards for long runs.
# Checkpoints are written whole or not at all, and resume / load_from read
# them weights-only (AtomicCheckpointHook). Each iteration reseeds the main
# process from (seed, iteration), so after a resume the model's own random
# draws (stochastic depth, proposal sampling) repeat; the augmentation
# drawn in the dataloader workers is not reseeded by it (see IterSeedHook).
# Training stops with a message when the loss becomes
# NaN or infinite.
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['mmrest'], allow_failed_imports=False)

default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [
    dict(type='CheckInvalidLossHook', interval=1),
    dict(type='IterSeedHook'),
]
