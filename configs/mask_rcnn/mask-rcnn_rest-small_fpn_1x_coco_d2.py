# The authors' detectron2 Mask R-CNN ResT-Small 1x (box AP 39.6, mask AP
# 37.2 reported), converted with tools/model_converters/detectron2_to_mmdet.py,
# tested as detectron2 tests it: the paper config's model with detectron2's
# test time (docs/detectron2_checkpoints.md):
# - the backbone of the authors' detectron2 code, in which a returned
#   stage's output norm (norm1..norm3) also feeds the next stage
#   (out_norms_feed_next_stage): the weights were trained so;
# - the input the v1 detectors were trained on: detectron2's defaults, BGR,
#   mean [103.53, 116.28, 123.675], std 1;
# - images decoded and resized with Pillow (bilinear), as detectron2's
#   read_image and ResizeShortestEdge (800, longer side at most 1333) do:
#   the test pipeline of ../_base_/datasets/coco_instance_detectron2.py.
# The weights come from the converted checkpoint: no ImageNet file is read.
_base_ = './mask-rcnn_rest-small_fpn_1x_coco.py'

model = dict(
    backbone=dict(init_cfg=None, out_norms_feed_next_stage=True),
    data_preprocessor=dict(
        mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False))
