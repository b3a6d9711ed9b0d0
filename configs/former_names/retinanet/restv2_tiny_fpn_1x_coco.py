# A former config name, kept so that existing commands work: the same
# config as the one below, trained into its work dir (every former name:
# configs/former_names/README.md).
_base_ = '../../retinanet/retinanet_restv2-tiny_fpn_1x_coco.py'
work_dir = './work_dirs/retinanet_restv2-tiny_fpn_1x_coco'
