# The authors' detectron2 Mask R-CNN ResT v2-Small 3x (box AP 48.1, mask AP
# 43.3 reported), converted; detectron2's test time (see the Tiny one).
_base_ = './mask-rcnn_restv2-tiny_fpn_3x_coco_d2.py'
model = dict(backbone=dict(arch='small', drop_path_rate=0.2))
