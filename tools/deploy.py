# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Export a whole detector to ONNX Runtime with mmdeploy and check it.

    python tools/deploy.py \
        configs/retinanet/retinanet_rest-small_fpn_1x_coco.py \
        work_dirs/retinanet_rest-small_fpn_1x_coco/iter_90000.pth \
        --out deploy/retinanet
    python tools/deploy.py \
        configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py \
        work_dirs/mask-rcnn_rest-small_fpn_1x_coco/iter_90000.pth \
        --deploy-cfg instance-seg \
        --image data/coco/val2017/000000000139.jpg --out deploy/mask_rcnn

Writes ``DIR/end2end.onnx`` with mmdeploy's ONNX Runtime deploy config with
dynamic shapes (``--deploy-cfg detection``, boxes, or ``instance-seg``, boxes
and masks; or the path of an mmdeploy deploy-config file), then runs the
image through the PyTorch detector and through the ONNX file (mmdeploy's
ONNX Runtime backend model) and compares the detections
(:func:`mmrest.deploy.agrees`); the command fails if they differ (see
``--box-iou``). Without a checkpoint the weights are
random and no box scores above the threshold: nothing is compared. Needs
``mmdeploy``, ``onnx`` and ``onnxruntime``; see
:mod:`mmrest.deploy` for the two torch compatibility shims it applies.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

from mmrest.deploy import (DEPLOY_TASKS, agrees, build_detector,
                           build_ort_model, compare, export_detector,
                           make_input, predict, synthetic_image)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a detector to ONNX Runtime with mmdeploy and '
        'check it against PyTorch')
    parser.add_argument('config', help='mmdet config file')
    parser.add_argument('checkpoint', nargs='?', help='detector checkpoint')
    parser.add_argument(
        '--deploy-cfg',
        default='detection',
        help=f'one of {DEPLOY_TASKS} (mmdeploy\'s ONNX '
        'Runtime dynamic configs) or a deploy-config file')
    parser.add_argument('--out', default='deploy', help='output folder')
    parser.add_argument(
        '--image',
        help='image to export with and check '
        'on (default: a synthetic 480x640 picture)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--box-iou',
        type=float,
        default=0.9,
        help='fail unless every PyTorch detection has an '
        'ONNX one of the same label with at least this box '
        'IoU (and mask IoU), and ONNX has no other')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value')
    args = parser.parse_args(argv)
    if not 0 <= args.box_iou <= 1:  # before the export, not after it
        parser.error(f'--box-iou must lie in [0, 1], got {args.box_iou}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.image is not None and not osp.isfile(args.image):
        raise FileNotFoundError(f'Image not found: {args.image!r}')
    image = args.image if args.image else synthetic_image((480, 640))
    processor, model = build_detector(args.config, args.deploy_cfg,
                                      args.checkpoint, args.device,
                                      args.cfg_options)
    onnx_file = export_detector(processor, model, image, args.out,
                                args.deploy_cfg)
    print(f'wrote {onnx_file}')
    data, _ = make_input(processor, model, image)
    report = compare(
        predict(model, data),
        predict(build_ort_model(processor, onnx_file), data))
    print(', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                    for k, v in report.items()))
    if report['num_ref'] == 0:
        print('nothing to compare: PyTorch finds no object on this image '
              '(with random weights no score reaches the threshold); give a '
              'checkpoint and an image with objects')
        return 0
    ok = agrees(report, args.box_iou)
    print(f'ONNX Runtime {"agrees with" if ok else "DIFFERS FROM"} PyTorch '
          f'({report["num_paired"]} of its {report["num_ref"]} detections '
          f'paired with box IoU >= {args.box_iou:g}, of ONNX Runtime\'s '
          f'{report["num_got"]})')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
