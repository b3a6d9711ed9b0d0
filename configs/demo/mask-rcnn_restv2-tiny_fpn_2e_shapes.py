# The 2-epoch demo config with ResT v2-Tiny instead of ResT-Lite: only the
# backbone (from scratch) and the neck's input widths changed, to compare
# the two families on the same data, schedule and budget
# (docs/demo.md, "ResT v2 in the demo"): `.venv/bin/python
# tools/run_demo.py --config
# configs/demo/mask-rcnn_restv2-tiny_fpn_2e_shapes.py --work-dir
# work_dirs/demo_v2`.
_base_ = './mask-rcnn_rest-lite_fpn_2e_shapes.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResTV2',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=None),
    neck=dict(in_channels=[96, 192, 384, 768]))
