# The authors' detectron2 Mask R-CNN ResT-Base 1x (box AP 41.6, mask AP 38.7
# reported), converted; detectron2's test time (see the ResT-Small one).
_base_ = './mask-rcnn_rest-small_fpn_1x_coco_d2.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))
