# The ResT-Small RetinaNet config with the input its ImageNet backbone was
# trained on: RGB, mean [123.675, 116.28, 103.53], std [58.395, 57.12,
# 57.375]. The paper's config (retinanet_rest-small_fpn_1x_coco.py) keeps the
# authors' v1 input, detectron2's default BGR / std 1, which is what the
# published numbers and the authors' checkpoints come from (they call it a
# mistake in their v2 RetinaNet yaml; their v2 configs use this one). Not a
# published recipe: the rest of the recipe is the paper config's.
_base_ = './retinanet_rest-small_fpn_1x_coco.py'
model = dict(
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True))
