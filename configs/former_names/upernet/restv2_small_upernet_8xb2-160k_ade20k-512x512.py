# A former config name, kept so that existing commands work: the same
# config as the one below, trained into its work dir (every former name:
# configs/former_names/README.md).
_base_ = '../../upernet/restv2-small_upernet_8xb2-160k_ade20k-512x512.py'
work_dir = './work_dirs/restv2-small_upernet_8xb2-160k_ade20k-512x512'
