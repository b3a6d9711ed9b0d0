# The authors' detectron2 Mask R-CNN ResT v2-Base 3x (box AP 48.7, mask AP
# 43.9 reported), converted; detectron2's test time (see the Tiny one).
_base_ = './mask-rcnn_restv2-tiny_fpn_3x_coco_d2.py'
model = dict(backbone=dict(arch='base', drop_path_rate=0.3))
