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
and masks; or the path of an mmdeploy deploy-config file), then checks it
twice on the image: the graph's outputs against the detector with
mmdeploy's rewrites run in PyTorch, which the graph should compute
(:func:`mmrest.deploy.graph_matches`), and ONNX Runtime's detections
(mmdeploy's backend model) against the PyTorch detector's own, mmdet's
(:func:`mmrest.deploy.agrees`, see ``--box-iou``). The command fails if
either differs. The RPN's, the box head's and RetinaNet's post-processing
are mmdet's in the graph (:mod:`mmrest.deploy_rewrites`); with
``--mmdeploy-nms`` they are mmdeploy's, whose detections of a trained
detector differ from mmdet's (docs/deployment.md). Without a checkpoint the
weights are random and no box scores above the threshold: no detections are
compared. Needs ``mmdeploy``, ``onnx`` and ``onnxruntime``; see
:mod:`mmrest.deploy` for the two torch compatibility shims it applies.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

from mmrest.deploy import (DEPLOY_TASKS, GRAPH_TOLERANCE, MIN_OPSET, agrees,
                           build_detector, build_ort_model, compare,
                           export_detector, graph_matches, graph_report,
                           load_deploy_cfg, make_input, onnx_outputs, predict,
                           rewritten_outputs, synthetic_image)


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
    parser.add_argument(
        '--opset',
        type=int,
        help='ONNX opset (default: the deploy config\'s, 11 for the two '
        'task names); 16 or higher exports RoIAlign with half-pixel '
        'coordinates, exact for RoIs under one feature pixel '
        '(docs/deployment.md)')
    parser.add_argument(
        '--mmdeploy-nms',
        action='store_true',
        help='keep mmdeploy\'s own post-processing of the RPN, the box '
        'head and RetinaNet (one NMS over all FPN levels, one box per RoI, '
        'candidates by their best class), which is not mmdet\'s; by '
        'default the graph computes mmdet\'s (docs/deployment.md)')
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
    if args.opset is not None and args.opset < MIN_OPSET:
        parser.error(f'--opset must be at least {MIN_OPSET} (mmdeploy '
                     f'1.3.1\'s lowest), got {args.opset}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.image is not None and not osp.isfile(args.image):
        raise FileNotFoundError(f'Image not found: {args.image!r}')
    image = args.image if args.image else synthetic_image((480, 640))
    deploy_cfg = load_deploy_cfg(args.deploy_cfg, args.opset)
    processor, model = build_detector(args.config, deploy_cfg, args.checkpoint,
                                      args.device, args.cfg_options)
    mmdet_nms = not args.mmdeploy_nms
    onnx_file = export_detector(processor, model, image, args.out, deploy_cfg,
                                mmdet_nms)
    print(f'wrote {onnx_file}')
    data, inputs = make_input(processor, model, image)
    # the graph against what mmdeploy meant it to compute
    graph = graph_report(
        rewritten_outputs(processor, model, data, inputs, mmdet_nms),
        onnx_outputs(onnx_file, inputs), max(inputs.shape[-2:]))
    faithful = graph_matches(graph)
    print('graph: ' + _listed(graph))
    print(f'The ONNX graph {"computes" if faithful else "DIFFERS FROM"} '
          "mmdeploy's rewritten detector run in PyTorch (tolerance "
          f'{GRAPH_TOLERANCE:g})')
    # ONNX Runtime's detections against the detector's own (mmdet's)
    report = compare(
        predict(model, data),
        predict(build_ort_model(processor, onnx_file), data))
    print('detections: ' + _listed(report))
    if report['num_ref'] == 0:
        print('nothing to compare: PyTorch finds no object on this image '
              '(with random weights no score reaches the threshold); give a '
              'checkpoint and an image with objects')
        return 0 if faithful else 1
    ok = agrees(report, args.box_iou)
    print(f'ONNX Runtime {"agrees with" if ok else "DIFFERS FROM"} the '
          f'PyTorch detector: {report["num_paired"]} of its '
          f'{report["num_ref"]} detections paired with one of the same label '
          f'among ONNX Runtime\'s {report["num_got"]}, lowest box IoU '
          f'{report["min_box_iou"]:.3g} (bound {args.box_iou:g})')
    if faithful and not ok:
        print('The graph computes what mmdeploy meant: the difference comes '
              "from mmdeploy's rewrites of the detector (docs/deployment.md)" +
              ("; its own post-processing is not mmdet's (--mmdeploy-nms)"
               if args.mmdeploy_nms else ''))
    return 0 if ok and faithful else 1


def _listed(report: dict) -> str:
    return ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                     for k, v in report.items())


if __name__ == '__main__':
    sys.exit(main())
