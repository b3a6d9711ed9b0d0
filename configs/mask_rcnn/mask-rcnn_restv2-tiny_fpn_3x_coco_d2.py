# The authors' detectron2 Mask R-CNN ResT v2-Tiny 3x (box AP 47.6, mask AP
# 43.2 reported), converted with
# tools/model_converters/detectron2_to_mmdet.py, tested as detectron2 tests
# it: the paper config's model with detectron2's test time
# (docs/detectron2_checkpoints.md):
# - the input the v2 detectors were trained on (INPUT.FORMAT "RGB"): RGB,
#   mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375];
# - images decoded and resized with Pillow (bilinear), as detectron2's
#   read_image and ResizeShortestEdge (800, longer side at most 1333) do:
#   the test pipeline of ../_base_/datasets/coco_instance_detectron2.py.
# The weights come from the converted checkpoint: no ImageNet file is read.
_base_ = './mask-rcnn_restv2-tiny_fpn_3x_coco.py'

model = dict(
    backbone=dict(init_cfg=None),
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True))
