# `make demo`: the 2-epoch demo config trained for 3 epochs, with a fixed
# seed. Two epochs (1000 iterations) put the targets (bbox mAP 0.50, segm
# mAP 0.45) inside the run-to-run spread: 2 of 8 recorded runs missed them.
# The third epoch lifts both by more than 0.1 (the same seeds at 2 and 3
# epochs: docs/demo.md, "Three epochs") and costs 500 iterations, which fit the
# 20-minute budget on 2 cores. Only the schedule and the seed differ.
_base_ = './mask-rcnn_rest-lite_fpn_2e_shapes.py'

# The base's entries computed from its max_epochs, set for 3: the loop, the
# checkpoints and the cosine's length (its warm-up and floor are the base's).
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = _base_.param_scheduler  # noqa: F821 (mmengine's reference)
param_scheduler[1].update(end=max_epochs, T_max=max_epochs)
default_hooks = dict(checkpoint=dict(interval=max_epochs))

# Seeded, as the segmentation demo is: the same machine and thread count
# give the same run (mmdet's default draws a seed each run).
randomness = dict(seed=0)
