# UperNet with ResT-Lite trained from scratch on the embedded shapes set,
# as semantic segmentation (mmrest.synthetic.generate_shapes_coco with
# semantic_labels=True): `make demo-seg`. The model and recipe are the
# ADE20K configs' (the shared base through the ResT v1 config: UPerHead +
# FCN auxiliary head on ResT, AdamW, a linear warm-up then a poly decay,
# mmseg's IoUMetric); what differs, and why, is said at each change: the
# data and its 5 classes, the 96 x 96 input, ResT-Lite from scratch, the
# heads' widths, BN for SyncBN, the learning rate and the schedule, all
# sized for training on 2 CPU cores (how they were chosen: docs/demo.md).
_base_ = [
    '../upernet/rest-small_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/datasets/shapes_demo.py'
]

data_root = 'data/shapes_seg/'
# 0 is the background; 1..4 are mmrest.synthetic.SHAPES_CLASSES.
classes = ('background', 'circle', 'square', 'triangle', 'star')
# The background black, the shapes in the colours of matplotlib's tab10.
palette = [[0, 0, 0], [255, 127, 14], [44, 160, 44], [214, 39, 40],
           [148, 103, 189]]
metainfo = dict(classes=classes, palette=palette)
class_weight = [0.25, 1.0, 1.0, 1.0, 1.0]  # the loss's, see the heads
# The generated images are 128 x 128; the model sees them resized to
# 96 x 96 (no crop): measured on the same schedule, mIoU 0.45 against 0.30
# after 850 iterations, 0.68 after 1700, at 0.56 of the cost of an
# iteration (64 x 64: 0.40 after 1275 iterations against 0.63 at 96). The
# predictions are resized back and evaluated on the 128 x 128 label maps.
crop_size = (96, 96)
# The detection demo's set (the shared base: 1000 train and 100 val images
# of 128 x 128, every shape of a class in the same pose) with its label
# maps, in its own folder, so that the two demos do not remake each
# other's sets.
shapes_data = dict(semantic_labels=True)

# CPU training: plain BatchNorm in the heads (SyncBN needs a GPU process
# group; mmengine's Runner would revert it on its own, this says so).
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    # ResT-Lite (the smallest ResT; its stages are as wide as ResT-Small's,
    # so the heads' in_channels stay), from scratch (no ImageNet weights)
    # and for a short schedule: no stochastic depth.
    backbone=dict(arch='lite', drop_path_rate=0.0, init_cfg=None),
    # The heads' widths: UPerHead's 512 channels cost about 10 GMACs an
    # image at 128 x 128 (its 3 x 3 fusion conv of 4 x 512 -> 512 channels
    # on the 32 x 32 level alone), 20 times ResT-Lite's; 64 channels cost
    # less than the backbone, and 5 classes need no more.
    # The background is 84 % of the pixels (the shapes 3 to 6 % each):
    # weighted 0.25, it no longer drowns the loss of telling the shapes
    # apart (measured: mIoU 0.26 -> 0.35 after 500 iterations; docs/demo.md,
    # "Semantic segmentation").
    decode_head=dict(
        channels=64,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        loss_decode=dict(class_weight=class_weight)),
    auxiliary_head=dict(
        channels=64,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        loss_decode=dict(class_weight=class_weight)))

# The images are all 128 x 128: the resize and flips are the only
# augmentation. In test the label maps are loaded after the resize, at
# their own size.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
shapes_dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=False)  # 0 is a class here (the background)
# Loading a 128 px PNG is cheap next to a training step: on 2 cores a
# worker process would only compete with the model for the CPU.
in_process = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(
    batch_size=8,
    **in_process,
    dataset=dict(
        **shapes_dataset,
        data_prefix=dict(img_path='train/', seg_map_path='train_labels/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    **in_process,
    dataset=dict(
        **shapes_dataset,
        data_prefix=dict(img_path='val/', seg_map_path='val_labels/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# mmseg's IoUMetric (mIoU) from the base.

# Schedule: the base's warm-up then poly decay, shortened; evaluated once at
# the end. 1900 iterations of 8 images (15.2 epochs): about 0.38 s each
# with two threads on an idle 2-core machine, so `make demo-seg` ends with
# minutes to spare within its 15 (2200 iterations took 14 min 26 s, mIoU
# 0.86; docs/demo.md has the runs). Seeded; runs still differ with the
# number of threads (the order of floating-point sums).
max_iters = 1900
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
# lr for batch 8 from scratch (the base's 6e-5 is for ImageNet weights and
# 160k iterations), ten times that for the two heads (mmseg's SegFormer
# recipe, `custom_keys` matching decode_head.* and auxiliary_head.*; no
# backbone parameter is named *head*): the same seed reached mIoU 0.72
# against 0.32 after 1100 iterations (docs/demo.md, third round). fused=True:
# torch's one-pass AdamW, the same update.
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, fused=True),
    paramwise_cfg=dict(custom_keys=dict(head=dict(lr_mult=10.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=50,
        end=max_iters,
        by_epoch=False),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)

default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=25)
randomness = dict(seed=0)
