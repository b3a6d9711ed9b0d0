# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""RetinaNet's head with detectron2's post-processing at test time."""
from typing import Optional

from mmdet.models.dense_heads import RetinaHead
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData


class Detectron2RetinaHead(RetinaHead):
    """``RetinaHead`` whose test-time boxes are post-processed as
    detectron2's ``RetinaNet`` does it.

    detectron2 (``DenseDetector`` / ``RetinaNet.inference_single_image``
    and ``detector_postprocess``) runs the per-class NMS on boxes that are
    not clipped to the image, keeps the best ``max_per_img``, then scales
    them to the original image, clips them to it and drops the empty ones.
    mmdet's ``RetinaHead`` clips while decoding (before NMS, which then
    compares clipped boxes) and never drops a box after NMS. Use this head
    with ``bbox_coder=dict(clip_border=False)`` and
    ``test_cfg=dict(min_bbox_size=-1)`` (detectron2 filters no box before
    NMS) to get detectron2's detections from the authors' converted
    checkpoints; training is ``RetinaHead``'s, unchanged.
    """

    def _bbox_post_process(self,
                           results: InstanceData,
                           cfg: ConfigDict,
                           rescale: bool = False,
                           with_nms: bool = True,
                           img_meta: Optional[dict] = None) -> InstanceData:
        results = super()._bbox_post_process(results, cfg, rescale, with_nms,
                                             img_meta)
        if not with_nms or img_meta is None:
            return results  # test-time augmentation merges boxes first
        shape = img_meta['ori_shape'] if rescale else img_meta['img_shape']
        height, width = shape[:2]
        boxes = results.bboxes
        boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        results.bboxes = boxes
        return results[keep]
