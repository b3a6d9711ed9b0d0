# Former name of the config below, kept so that existing commands work:
# the same config and the default work dir of the new name (the RetinaNet
# and Mask R-CNN configs had equal former names, hence one work dir).
_base_ = './retinanet_restv2-tiny_fpn_1x_coco.py'
work_dir = './work_dirs/retinanet_restv2-tiny_fpn_1x_coco'
