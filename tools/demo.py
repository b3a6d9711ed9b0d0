# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Run a trained detector on one image and save the image with its
predicted masks, boxes, classes and scores drawn.

Example (after `make demo`)::

    python tools/demo.py data/shapes/val/000001.png \
        configs/demo/mask-rcnn_rest-lite_fpn_3e_shapes.py \
        work_dirs/demo/epoch_3.pth --out-file work_dirs/demo/000001_pred.png
"""
import argparse
import os.path as osp
import sys

# Run from a clone, the programs in mmrest_tools/ (beside tools/) are
# found without reinstalling.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmrest_tools.demo import predict_image  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(
        description='Draw a detector\'s predictions on an image')
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file of the detector')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out-file',
        default='work_dirs/demo/result.png',
        help='where the drawn image goes')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='draw predictions scoring at least this')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args()


def main():
    args = parse_args()
    preds = predict_image(
        args.image,
        args.config,
        args.checkpoint,
        args.out_file,
        score_thr=args.score_thr,
        device=args.device)
    for label, score, box in zip(preds['labels'], preds['scores'],
                                 preds['bboxes']):
        print(f'{label:10s} {score:.3f}  box ' + ' '.join(f'{v:.1f}'
                                                          for v in box))
    print(f'{len(preds["labels"])} predictions with score >= '
          f'{args.score_thr}; drawn to {args.out_file}')


if __name__ == '__main__':
    main()
