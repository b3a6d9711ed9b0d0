# A former config name, kept so that existing commands work: the same
# config as the one below, trained into its work dir (every former name:
# configs/former_names/README.md).
_base_ = '../../demo/rest-lite_upernet_1xb8-1900it_shapes-96x96.py'
work_dir = './work_dirs/rest-lite_upernet_1xb8-1900it_shapes-96x96'
