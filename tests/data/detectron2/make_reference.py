# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Make the detectron2 reference data of
``tests/test_detectron2_converter.py``.

Run ONLY in a scratch environment that has detectron2 and the authors'
``object_detection`` code (see ``README.md`` beside this file for how that
environment was built); the tests never import this file, and mmrest never
depends on detectron2.

    python make_reference.py --rest-code /path/to/ResT/object_detection \
        --out /path/to/tests/data/detectron2

For each of three small detectors with random weights (RetinaNet + ResT v1,
Mask R-CNN + ResT v1, Mask R-CNN + ResT v2, built by detectron2 from the
authors' base configs and backbone classes with narrower widths) it writes

* ``<name>.pth``: the detectron2 checkpoint, written by detectron2's own
  ``DetectionCheckpointer`` (a dict with ``model``), float32;
* ``<name>.npz``: for each image, the detections of detectron2's
  ``DefaultPredictor`` (boxes, scores, labels, masks bit-packed), the size
  it resized the image to and a SHA-256 of the resized uint8 pixels;

and once the images (``image{0,1,2}.png``, lossless, made from a seeded
generator) and ``reference.json`` (configs, versions, margins).
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import sys

import numpy as np
import torch

# torchvision's compiled ops did not load on the build machine: see
# torchvision_fallbacks.py (must run before torchvision is imported).
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from torchvision_fallbacks import install_torchvision_fallbacks  # noqa: E402

install_torchvision_fallbacks()

import detectron2  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

#: Small widths (the authors' variants use 64-512 or 96-768) so that the
#: committed checkpoints stay small; everything else is the authors'.
EMBED_DIMS = [8, 16, 32, 64]
DEPTHS = [1, 1, 1, 1]
NUM_CLASSES = 6
FPN_CHANNELS = 16
BOX_FC_DIM = 32
MASK_CONV_DIM = 8
MIN_SIZE_TEST = 320
MAX_SIZE_TEST = 480
#: (height, width): one upscaled by the shorter side, one whose longer side
#: hits MAX_SIZE_TEST, odd sizes throughout.
IMAGE_SIZES = [(97, 133), (150, 111), (61, 203)]


def _import_authors(rest_code):
    sys.path.insert(0, rest_code)
    import restv2  # noqa: F401  (registers the authors' backbones)
    from restv2.rest import ResT
    from restv2.restv2 import ResTV2
    return ResT, ResTV2


def register_small_backbones(ResT, ResTV2):
    """Backbone builders like the authors' ``build_*_fpn_backbone`` with
    :data:`EMBED_DIMS` / :data:`DEPTHS` instead of a named variant."""

    def bottom_up_v1(cfg):
        model = ResT(
            cfg,
            in_ch=3,
            embed_dims=EMBED_DIMS,
            qkv_bias=True,
            drop_path_rate=0.1,
            depths=DEPTHS,
            apply_transform=True,
            out_features=cfg.MODEL.REST.OUT_FEATURES)
        return _shapes(model)

    def bottom_up_v2(cfg):
        model = ResTV2(
            embed_dims=EMBED_DIMS,
            depths=DEPTHS,
            drop_path_rate=0.1,
            out_features=cfg.MODEL.RESTV2.OUT_FEATURES)
        return _shapes(model)

    def _shapes(model):
        names = ['stage1', 'stage2', 'stage3', 'stage4']
        model._out_feature_channels = dict(zip(names, EMBED_DIMS))
        model._out_feature_strides = dict(zip(names, [4, 8, 16, 32]))
        return model

    def fpn(cfg, bottom_up, retina):
        if retina:
            top = LastLevelP6P7(
                bottom_up.output_shape()['stage4'].channels,
                cfg.MODEL.FPN.OUT_CHANNELS,
                in_feature='stage4')
        else:
            top = LastLevelMaxPool()
        return FPN(
            bottom_up=bottom_up,
            in_features=cfg.MODEL.FPN.IN_FEATURES,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            top_block=top,
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE)

    @BACKBONE_REGISTRY.register()
    def build_small_rest_fpn_backbone(cfg, input_shape: ShapeSpec):
        return fpn(cfg, bottom_up_v1(cfg), retina=False)

    @BACKBONE_REGISTRY.register()
    def build_small_retinanet_rest_fpn_backbone(cfg, input_shape: ShapeSpec):
        return fpn(cfg, bottom_up_v1(cfg), retina=True)

    @BACKBONE_REGISTRY.register()
    def build_small_restv2_fpn_backbone(cfg, input_shape: ShapeSpec):
        return fpn(cfg, bottom_up_v2(cfg), retina=False)


def make_cfg(rest_code, name):
    from restv2 import add_restv1_config, add_restv2_config
    cfg = get_cfg()
    configs = osp.join(rest_code, 'configs')
    if name == 'retinanet_rest_v1':
        add_restv1_config(cfg)
        cfg.merge_from_file(
            osp.join(configs, 'ResTv1', 'retinanet_rest_small_FPN_1x.yaml'))
        cfg.MODEL.BACKBONE.NAME = 'build_small_retinanet_rest_fpn_backbone'
        cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    elif name == 'mask_rcnn_rest_v1':
        add_restv1_config(cfg)
        cfg.merge_from_file(
            osp.join(configs, 'ResTv1', 'mask_rcnn_rest_small_FPN_1x.yaml'))
        cfg.MODEL.BACKBONE.NAME = 'build_small_rest_fpn_backbone'
    elif name == 'mask_rcnn_rest_v2':
        add_restv2_config(cfg)
        cfg.merge_from_file(
            osp.join(configs, 'ResTv2', 'mask_rcnn_restv2_tiny_FPN_3x.yaml'))
        cfg.MODEL.BACKBONE.NAME = 'build_small_restv2_fpn_backbone'
    else:
        raise ValueError(name)
    cfg.MODEL.WEIGHTS = ''
    cfg.MODEL.DEVICE = 'cpu'
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.FPN.OUT_CHANNELS = FPN_CHANNELS
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = BOX_FC_DIM
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = MASK_CONV_DIM
    cfg.INPUT.MIN_SIZE_TEST = MIN_SIZE_TEST
    cfg.INPUT.MAX_SIZE_TEST = MAX_SIZE_TEST
    cfg.SOLVER.AMP.ENABLED = False
    cfg.freeze()
    return cfg


def randomize(model, seed, cls_bias):
    """Non-trivial values for every parameter and buffer (BatchNorm
    statistics and LayerNorm affines included): convolution and linear
    weights N(0, 1/fan_in) (activations stay of order one), biases
    N(0, 0.1^2), norm weights 1 + N(0, 0.1^2). ``cls_bias`` scales the
    class-score weights (``scale``), shifts their biases (``shift``) and
    the background logit of the box predictor (``background``), so that
    some, not all, scores pass the 0.05 threshold and fewer than 100
    detections per image remain (the cut at 100 is not tested near a tie).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            layers = (torch.nn.Conv2d, torch.nn.Linear,
                      torch.nn.ConvTranspose2d)
            if isinstance(module, layers):
                w = module.weight
                fan_in = w[0].numel() if not isinstance(
                    module, torch.nn.ConvTranspose2d) else w.shape[0]
                w.copy_(torch.randn(w.shape, generator=g) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(
                        0.1 * torch.randn(module.bias.shape, generator=g))
            elif isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm,
                                     torch.nn.GroupNorm)) or \
                    type(module).__name__ == 'LayerNorm':
                if getattr(module, 'weight', None) is not None:
                    module.weight.copy_(
                        1 +
                        0.1 * torch.randn(module.weight.shape, generator=g))
                    module.bias.copy_(
                        0.1 * torch.randn(module.bias.shape, generator=g))
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.copy_(
                        0.1 *
                        torch.randn(module.running_mean.shape, generator=g))
                    module.running_var.copy_(
                        1 + 0.5 *
                        torch.rand(module.running_var.shape, generator=g))
        for name, p in model.named_parameters():
            # RetinaNet's head.cls_score and the box predictor's
            # roi_heads.box_predictor.cls_score: spread and shift
            if name.endswith('cls_score.weight'):
                p.mul_(cls_bias['scale'])
            elif name.endswith('cls_score.bias'):
                p.add_(cls_bias['shift'])
                if 'box_predictor' in name:  # the background logit (last)
                    p[-1] += cls_bias['background']


def make_images(out):
    rng = np.random.RandomState(0)
    paths = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        img = np.zeros((h, w, 3))
        for c in range(3):
            fx, fy, ph = rng.uniform(0.02, 0.15, 3)
            img[..., c] = 128 + 60 * np.sin(fx * xx + fy * yy + 6 * ph)
        for _ in range(4):  # rectangles and discs: something to detect
            cy, cx = rng.randint(0, h), rng.randint(0, w)
            r = rng.randint(6, max(8, min(h, w) // 3))
            colour = rng.randint(0, 256, 3)
            if rng.rand() < 0.5:
                img[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = colour
            else:
                img[(yy - cy)**2 + (xx - cx)**2 < r * r] = colour
        img += rng.normal(0, 8, img.shape)
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
        path = osp.join(out, f'image{i}.png')
        from PIL import Image
        Image.fromarray(img).save(path)  # RGB, lossless
        paths.append(path)
    return paths


def run(cfg, paths):
    predictor = DefaultPredictor(cfg)  # eval mode, DefaultPredictor's resize
    results, margins = {}, {}
    for i, path in enumerate(paths):
        bgr = read_image(path, format='BGR')
        aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2,
                                   cfg.INPUT.MAX_SIZE_TEST)
        resized = aug.get_transform(bgr).apply_image(bgr)  # as the predictor
        with torch.no_grad():
            inst = predictor(bgr)['instances'].to('cpu')
        scores = inst.scores.numpy()
        results[f'image{i}_boxes'] = inst.pred_boxes.tensor.numpy()
        results[f'image{i}_scores'] = scores
        results[f'image{i}_labels'] = inst.pred_classes.numpy()
        if inst.has('pred_masks'):
            masks = inst.pred_masks.numpy().astype(bool)
            results[f'image{i}_masks'] = np.packbits(masks.reshape(-1))
        results[f'image{i}_resized_hw'] = np.array(resized.shape[:2])
        results[f'image{i}_resized_sha256'] = np.frombuffer(
            hashlib.sha256(np.ascontiguousarray(resized)).digest(), np.uint8)
        gaps = np.diff(np.sort(scores)) if len(scores) > 1 else np.array([1])
        margins[f'image{i}'] = dict(
            count=int(len(scores)),
            min_score=float(scores.min()) if len(scores) else None,
            max_score=float(scores.max()) if len(scores) else None,
            min_gap_between_scores=float(gaps.min()))
    return results, margins


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--rest-code',
        required=True,
        help="the authors' object_detection folder")
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    rest_code = osp.abspath(args.rest_code)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    ResT, ResTV2 = _import_authors(rest_code)
    register_small_backbones(ResT, ResTV2)
    paths = make_images(args.out)
    models = {
        # name: (seed, shifts of the class-logit biases)
        'retinanet_rest_v1': (1, dict(scale=2.0, shift=-6.6)),
        'mask_rcnn_rest_v1': (2, dict(scale=3.0, shift=0.0, background=8.5)),
        'mask_rcnn_rest_v2': (3, dict(scale=3.0, shift=0.0, background=7.0)),
    }
    meta = dict(
        torch=torch.__version__,
        detectron2=detectron2.__version__,
        numpy=np.__version__,
        embed_dims=EMBED_DIMS,
        depths=DEPTHS,
        num_classes=NUM_CLASSES,
        fpn_channels=FPN_CHANNELS,
        box_fc_dim=BOX_FC_DIM,
        mask_conv_dim=MASK_CONV_DIM,
        min_size_test=MIN_SIZE_TEST,
        max_size_test=MAX_SIZE_TEST,
        image_sizes_hw=IMAGE_SIZES,
        models={})
    for name, (seed, cls_bias) in models.items():
        cfg = make_cfg(rest_code, name)
        torch.manual_seed(seed)
        predictor_cfg = cfg
        from detectron2.modeling import build_model
        model = build_model(predictor_cfg)
        randomize(model, seed, cls_bias)
        DetectionCheckpointer(model, save_dir=args.out).save(name)
        cfg2 = cfg.clone()
        cfg2.defrost()
        cfg2.MODEL.WEIGHTS = osp.join(args.out, name + '.pth')
        cfg2.freeze()
        results, margins = run(cfg2, paths)
        np.savez_compressed(osp.join(args.out, name + '.npz'), **results)
        meta['models'][name] = dict(
            seed=seed,
            cls_bias=cls_bias,
            margins=margins,
            input_format=cfg.INPUT.FORMAT,
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            config=cfg.dump())
        print(name, json.dumps(margins))
    with open(osp.join(args.out, 'reference.json'), 'w') as f:
        json.dump(meta, f, indent=1)


if __name__ == '__main__':
    main()
