# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Export a whole detector or segmentor to ONNX Runtime with mmdeploy and
check it.

    python tools/deploy.py \
        configs/retinanet/retinanet_rest-small_fpn_1x_coco.py \
        work_dirs/retinanet_rest-small_fpn_1x_coco/iter_90000.pth \
        --out deploy/retinanet
    python tools/deploy.py \
        configs/mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py \
        work_dirs/mask-rcnn_rest-small_fpn_1x_coco/iter_90000.pth \
        --deploy-cfg instance-seg \
        --image data/coco/val2017/000000000139.jpg --out deploy/mask_rcnn
    python tools/deploy.py \
        configs/upernet/rest-small_upernet_8xb2-160k_ade20k-512x512.py \
        work_dirs/rest-small_upernet_8xb2-160k_ade20k-512x512/iter_160000.pth \
        --deploy-cfg segmentation-logits \
        --image ADE_val_00000001.jpg \
        --out deploy/upernet

Writes ``DIR/end2end.onnx`` with mmdeploy's ONNX Runtime deploy config with
dynamic shapes (``--deploy-cfg detection``, boxes, or ``instance-seg``, boxes
and masks, the default for a detector with a mask head; ``panoptic-seg``,
MaskFormer's and Mask2Former's class and mask logits, whose fusion head
mmdeploy's backend model runs in PyTorch, their default; ``segmentation``, a
label map, or ``segmentation-logits``, the logits, the default for an mmseg
config; or the path of an mmdeploy deploy-config file), then checks it
twice on the image: the graph's outputs against the model with mmdeploy's
rewrites run in PyTorch, which the graph should compute
(:func:`mmrest.deploy.graph_matches`), and ONNX Runtime's detections or
label map (mmdeploy's backend model) against the PyTorch model's own,
mmdet's or mmseg's (:func:`mmrest.deploy.agrees`, see ``--box-iou``). The
command fails if either differs. The RPN's, the box head's, RetinaNet's,
FCOS's, ATSS's, TOOD's and the cascade's post-processing are mmdet's in the
graph (:mod:`mmrest.deploy_rewrites`, which also makes TOOD's head
exportable and GroupNorm as accurate as torch's);
with ``--mmdeploy-nms`` they are mmdeploy's, whose detections of a trained
detector differ from mmdet's (docs/deployment.md). UperNet's pyramid
pooling is torch's at every size (mmdeploy's is fixed at the export size).
A label map is resized to the original image by mmdeploy (nearest), which
differs from mmseg's resizing of the logits where the test pipeline
resized the image; ``segmentation-logits`` gives mmseg's. Without a
checkpoint the weights are random and no box scores above the threshold:
no detections are compared (but DINO and Mask2Former keep their 300 and
100 best at any score: these are, and random masks, whose logits lie near
0, can differ). Graphs with mmdeploy's own operators (DINO's
``mmdeploy::grid_sampler``) run with the operator library of the mmdeploy
wheel. Needs ``mmdeploy``, ``onnx`` and
``onnxruntime``; see :mod:`mmrest.deploy` for the two torch compatibility
shims it applies.
"""
import argparse
import os.path as osp
import sys

import torch
from mmengine.config import DictAction

from mmrest.deploy import (DEPLOY_TASKS, GRAPH_TOLERANCE, MIN_OPSET, agrees,
                           binary_threshold, build_detector, build_ort_model,
                           compare, compare_maps, export_detector,
                           graph_matches, graph_report, load_deploy_cfg,
                           logits_graph_report, make_input, onnx_outputs,
                           predict, rewritten_logits, rewritten_outputs,
                           seg_graph_report, synthetic_image)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a detector or segmentor to ONNX Runtime with '
        'mmdeploy and check it against PyTorch')
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument(
        'checkpoint', nargs='?', help='detector or segmentor checkpoint')
    parser.add_argument(
        '--deploy-cfg',
        help=f'one of {DEPLOY_TASKS} (mmdeploy\'s ONNX '
        'Runtime dynamic configs) or a deploy-config file (default: '
        'instance-seg for a detector whose RoI head has a mask head, '
        'panoptic-seg for MaskFormer and Mask2Former, detection for '
        'another, segmentation-logits for an mmseg config)')
    parser.add_argument(
        '--opset',
        type=int,
        help='ONNX opset (default: the deploy config\'s, 11 for the task '
        'names, 13 for panoptic-seg); 16 or higher exports RoIAlign '
        'with half-pixel coordinates, exact for RoIs under one feature pixel '
        '(docs/deployment.md)')
    parser.add_argument(
        '--mmdeploy-nms',
        action='store_true',
        help='keep mmdeploy\'s own post-processing of the RPN, the box '
        'head, RetinaNet, FCOS, ATSS, TOOD and the cascade (one NMS over '
        'all FPN levels, one box per RoI, candidates by their best class, '
        'TOOD\'s probabilities and boxes taken for logits and deltas, '
        'class-agnostic cascades only), which is not mmdet\'s; by default '
        'the graph computes mmdet\'s (docs/deployment.md)')
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
        'IoU (and mask IoU), and ONNX has no other; for a segmentor, '
        'unless each label\'s pixels in the two maps have this IoU')
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
    from mmrest.deploy import max_opset  # torch's, after the lower bound
    if args.opset is not None and args.opset > max_opset():
        parser.error(f'--opset must be at most {max_opset()} (the highest '
                     'of this torch\'s TorchScript ONNX exporter), got '
                     f'{args.opset}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.image is not None and not osp.isfile(args.image):
        raise FileNotFoundError(f'Image not found: {args.image!r}')
    image = args.image if args.image else synthetic_image((480, 640))
    deploy_cfg = load_deploy_cfg(
        args.deploy_cfg or _default_task(args.config), args.opset)
    processor, model = build_detector(args.config, deploy_cfg, args.checkpoint,
                                      args.device, args.cfg_options)
    mmdet_nms = not args.mmdeploy_nms
    onnx_file = export_detector(processor, model, image, args.out, deploy_cfg,
                                mmdet_nms)
    print(f'wrote {onnx_file}')
    data, inputs = make_input(processor, model, image)
    segmentor = deploy_cfg.codebase_config.type == 'mmseg'
    # the graph against what mmdeploy meant it to compute
    if segmentor:
        graph = seg_graph_report(
            rewritten_logits(processor, model, data, inputs),
            onnx_outputs(onnx_file, inputs)[0], binary_threshold(model))
    elif deploy_cfg.codebase_config.get('model_type') == 'panoptic_end2end':
        graph = logits_graph_report(
            rewritten_outputs(processor, model, data, inputs),
            onnx_outputs(onnx_file, inputs))
    else:
        graph = graph_report(
            rewritten_outputs(processor, model, data, inputs, mmdet_nms),
            onnx_outputs(onnx_file, inputs), max(inputs.shape[-2:]))
    faithful = graph_matches(graph)
    print('graph: ' + _listed(graph))
    print(f'The ONNX graph {"computes" if faithful else "DIFFERS FROM"} '
          "mmdeploy's rewritten model run in PyTorch (tolerance "
          f'{GRAPH_TOLERANCE:g})')
    # ONNX Runtime's predictions against the model's own (mmdet's, mmseg's)
    ref = predict(model, data)
    got = predict(build_ort_model(processor, onnx_file), data)
    if isinstance(ref, torch.Tensor):  # a label or panoptic segment map
        return _check_maps(
            compare_maps(ref, got), faithful, args.box_iou, segmentor)
    report = compare(ref, got)
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


def _check_maps(report: dict,
                faithful: bool,
                bound: float,
                segmentor: bool = True) -> int:
    print('label maps: ' + _listed(report))
    ok = agrees(report, bound)
    print(f'ONNX Runtime {"agrees with" if ok else "DIFFERS FROM"} the '
          f'PyTorch {"segmentor" if segmentor else "detector"}: '
          f'{report["pixel_agreement"]:.2%} of the pixels '
          f'labelled alike, lowest IoU of a label\'s pixels '
          f'{report["min_label_iou"]:.3g} (bound {bound:g})')
    if faithful and not ok and segmentor:
        print("The graph computes what mmdeploy meant: mmdeploy's backend "
              'model resizes the label map to the original image (nearest), '
              'mmseg the logits (bilinear) before the argmax; '
              '--deploy-cfg segmentation-logits exports the logits and '
              'resizes them as mmseg (docs/deployment.md)')
    return 0 if ok and faithful else 1


def _default_task(config: str) -> str:
    """``segmentation-logits`` for an mmseg config, ``panoptic-seg`` for
    MaskFormer and Mask2Former, ``instance-seg`` for a detector whose RoI
    head has a mask head (Mask R-CNN, Cascade Mask R-CNN), else
    ``detection`` (a missing file is build_detector's error to
    report)."""
    if osp.isfile(config):
        from mmengine.config import Config
        cfg = Config.fromfile(config)
        if cfg.get('default_scope') == 'mmseg':
            return 'segmentation-logits'
        if cfg.get('model', {}).get('type') in ('MaskFormer', 'Mask2Former'):
            return 'panoptic-seg'
        if (cfg.get('model', {}).get('roi_head') or {}).get('mask_head'):
            return 'instance-seg'
    return 'detection'


def _listed(report: dict) -> str:
    return ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                     for k, v in report.items())


if __name__ == '__main__':
    sys.exit(main())
