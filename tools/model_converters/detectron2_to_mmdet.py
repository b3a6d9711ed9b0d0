# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Convert the authors' detectron2 ResT / ResT v2 detectors for mmdet.

    python tools/model_converters/detectron2_to_mmdet.py SRC.pth DST.pth \
        [--config CONFIG]

SRC is a detectron2 checkpoint of RetinaNet or Mask R-CNN with a ResT or
ResT v2 backbone (wofmanaf/ResT, object_detection/). DST is an mmdet
checkpoint (``state_dict`` and ``meta``) for the matching config, e.g.
configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco_d2.py; test it with
``python tools/test.py CONFIG DST``. With ``--config`` the converted
weights are checked against that config's model (same keys and shapes;
the ReLU before P7 and the input normalisation the authors used) before
anything is written. The file is loaded weights-only, a file of another
kind is refused with a message that names what it is, and DST is written
atomically (never half-written, never written when anything fails).
See docs/detectron2_checkpoints.md and :mod:`mmrest.checkpoint.detectron2`.
"""
import argparse
import os.path as osp
import sys

# Run from a clone, the clone's mmrest is used.
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmrest.checkpoint import CheckpointError  # noqa: E402
from mmrest.checkpoint.detectron2 import \
    convert_detectron2_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a detectron2 ResT detector checkpoint for mmdet')
    parser.add_argument('src', help='detectron2 checkpoint (.pth)')
    parser.add_argument('dst', help='mmdet checkpoint to write')
    parser.add_argument(
        '--config', help='mmdet config whose model must load the result')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        meta = convert_detectron2_checkpoint(args.src, args.dst, args.config)
    except (CheckpointError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    variant = meta['variant'] or 'non-standard widths/depths'
    print(f'{args.src} -> {args.dst}: {meta["detector"]} with '
          f'{meta["family"]} ResT ({variant}), {meta["num_classes"]} '
          f'classes, FPN on {", ".join(meta["fpn_inputs"])}' +
          (f'; dropped buffers: {meta["dropped"]}' if meta['dropped'] else ''))
    for warning in meta.get('config_check') or []:
        print(f'warning: {warning}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
