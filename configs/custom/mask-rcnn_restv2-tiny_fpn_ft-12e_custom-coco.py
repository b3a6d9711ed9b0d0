# Fine-tuning Mask R-CNN with ResT v2-Tiny on your own COCO-format data set
# (docs/custom_dataset.md): the COCO 3x config's model, optimiser and
# augmentation (../mask_rcnn/mask-rcnn_restv2-tiny_fpn_3x_coco.py) with
# your classes, your files and a 12-epoch schedule, starting from the
# authors' COCO detector (load_from) or, with load_from=None, from the
# ImageNet backbone (the base's init_cfg). Only what differs is written;
# copy this file and change data_root, classes and load_from.
_base_ = '../mask_rcnn/mask-rcnn_restv2-tiny_fpn_3x_coco.py'

# An instances file per split in COCO's format (images, annotations with
# boxes and polygon or RLE masks, categories) and a folder of images each:
#   data/custom/annotations/instances_{train,val}.json
#   data/custom/{train,val}/<file_name of each image>
data_root = 'data/custom/'
# Your classes, named as the annotation files' categories name them and
# listed in the files' order (mmdet numbers the classes in that order;
# tools/train.py stops with an error otherwise, see the page).
classes = ('bolt', 'nut', 'washer')
metainfo = dict(classes=classes)

# Every head that predicts classes, resized to yours: the box head (one
# score per class plus the background, a box per class) and the mask head
# (a mask per class). The RPN is class-agnostic.
model = dict(
    roi_head=dict(
        bbox_head=dict(num_classes=len(classes)),
        mask_head=dict(num_classes=len(classes))))

# The authors' detectron2 Mask R-CNN ResTv2-T 3x (COCO box AP 47.6, mask AP
# 43.2), converted with tools/model_converters/detectron2_to_mmdet.py
# (docs/detectron2_checkpoints.md). Every weight loads except the heads'
# 80-class layers (fc_cls, fc_reg, conv_logits: other shapes), which start
# from their initialisation; mmengine lists them in a warning. The
# backbone's ImageNet file is then not needed. load_from=None trains from
# the ImageNet backbone instead (checkpoints/restv2_tiny_224.pth).
load_from = 'checkpoints/mask-rcnn_restv2-tiny_d2.pth'

train_dataloader = dict(
    # Epochs over the data whatever the base's loop (a plain sampler, not
    # an infinite one).
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/')))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
# COCO box and mask AP, and each class's AP (classwise: a table in the log
# and coco/<class>_precision in the metrics).
val_evaluator = dict(
    ann_file=data_root + 'annotations/instances_val.json', classwise=True)
test_evaluator = val_evaluator

# The schedule, set in full here (not inherited): 12 epochs, validated after
# each, lr / 10 after epochs 8 and 11, and a linear warm-up over the first
# epoch (the base's 1000 iterations would be many epochs of a small set).
# The base's optimiser: AdamW, lr 1e-4 for 16 images a batch (8 GPUs x 2),
# mixed precision (on a CPU: --no-amp); on fewer GPUs add --auto-scale-lr.
max_epochs = 12
train_cfg = dict(
    _delete_=True,
    type='EpochBasedTrainLoop',
    max_epochs=max_epochs,
    val_interval=1)
val_cfg = dict(_delete_=True, type='ValLoop')
test_cfg = dict(_delete_=True, type='TestLoop')
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.001,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True),
    dict(
        type='MultiStepLR',
        by_epoch=True,
        begin=0,
        end=max_epochs,
        milestones=[8, 11],
        gamma=0.1),
]
# A checkpoint after each epoch, the last two kept and the best by mask AP.
default_hooks = dict(
    checkpoint=dict(
        by_epoch=True,
        interval=1,
        max_keep_ckpts=2,
        save_best='coco/segm_mAP',
        rule='greater'),
    logger=dict(interval=50))
log_processor = dict(by_epoch=True)
