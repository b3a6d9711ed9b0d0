# The authors' detectron2 RetinaNet ResT-Base 1x (box AP 42.0 reported),
# converted; detectron2's test time (see the ResT-Small one).
_base_ = './retinanet_rest-small_fpn_1x_coco_d2.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.2),
    neck=dict(in_channels=[192, 384, 768]))
