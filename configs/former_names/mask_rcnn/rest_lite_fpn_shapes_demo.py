# A former config name, kept so that existing commands work: the same
# config as the one below, trained into its work dir (every former name:
# configs/former_names/README.md).
_base_ = '../../demo/mask-rcnn_rest-lite_fpn_2e_shapes.py'
work_dir = './work_dirs/mask-rcnn_rest-lite_fpn_2e_shapes'
