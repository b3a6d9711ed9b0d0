# Copyright (c) mmrest contributors. Licensed under the Apache License 2.0.
"""Make the mmseg 0.x UperNet reference of ``tests/test_mmseg0_upernet.py``.

Run ONLY in a scratch environment with mmsegmentation 0.x, mmcv 1.x and the
authors' ``semantic_segmentation`` code (see README.md beside this file);
the tests never import this file.

    python make_reference.py --rest-code /path/to/ResT/semantic_segmentation \
        --out /path/to/tests/data/mmseg0

A small UperNet + ResT v2 (the authors' model config
``configs/_base_/models/upernet_restv2.py`` with their ``ResTV2`` backbone,
narrower widths, 7 classes, BN for SyncBN) with random weights, saved by
mmcv 1.x's ``save_checkpoint`` (``state_dict`` and ``meta``, as mmseg 0.x
training writes it), and its ``inference`` output (softmax over classes,
whole-image mode, resized back to the input size) on one normalised input
tensor, which is saved too.
"""
import argparse
import json
import os
import os.path as osp
import sys

import numpy as np
import torch

sys.path.insert(
    0, osp.join(osp.dirname(osp.abspath(__file__)), '..', 'detectron2'))
from torchvision_fallbacks import install_torchvision_fallbacks  # noqa: E402

install_torchvision_fallbacks()


def _stub_mmcv_ops():
    """mmcv 1.x was installed without its compiled ops (MMCV_WITH_OPS=0),
    but mmseg 0.x imports ``mmcv.ops`` when it loads (its focal loss and
    some heads use them). A stand-in ``mmcv._ext`` whose functions raise
    when called lets it load; UperNet, FCNHead and ResT v2 call none of
    them (a call would raise and stop this script)."""
    import types
    ext = types.ModuleType('mmcv._ext')

    def missing(name):

        def op(*args, **kwargs):
            raise RuntimeError(f'mmcv op {name} is not built here')

        return op

    def getattr_(name):
        if name.startswith('__'):
            raise AttributeError(name)
        return missing(name)

    ext.__getattr__ = getattr_
    ext.__file__ = '<stub>'
    sys.modules['mmcv._ext'] = ext


_stub_mmcv_ops()

import mmcv  # noqa: E402
import mmseg  # noqa: E402
from mmcv.runner import save_checkpoint  # noqa: E402

EMBED_DIMS = [8, 16, 32, 64]
DEPTHS = [1, 1, 1, 1]
NUM_CLASSES = 7
CHANNELS = 16
AUX_CHANNELS = 8
INPUT_HW = (96, 128)  # a multiple of 32, as the authors' AlignResize makes
ORI_HW = (75, 101)  # the "original" size the output is resized to


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rest-code', required=True)
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    sys.path.insert(0, osp.abspath(args.rest_code))
    import backbone  # noqa: F401  (registers the authors' ResTV2)
    from mmseg.models import build_segmentor
    cfg = mmcv.Config.fromfile(
        osp.join(args.rest_code, 'configs/_base_/models/upernet_restv2.py'))
    m = cfg.model
    m.backbone.update(embed_dims=EMBED_DIMS, depths=DEPTHS, drop_path_rate=0.1)
    for head, channels in ((m.decode_head, CHANNELS), (m.auxiliary_head,
                                                       AUX_CHANNELS)):
        head.update(
            channels=channels,
            num_classes=NUM_CLASSES,
            norm_cfg=dict(type='BN', requires_grad=True))
    m.decode_head.in_channels = EMBED_DIMS
    m.auxiliary_head.in_channels = EMBED_DIMS[2]
    model = build_segmentor(m)
    model.init_weights()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                w.copy_(torch.randn(w.shape, generator=g) / w[0].numel()**0.5)
                if module.bias is not None:
                    module.bias.copy_(
                        0.1 * torch.randn(module.bias.shape, generator=g))
            elif hasattr(module, 'weight') and hasattr(module, 'bias') and \
                    isinstance(getattr(module, 'weight'),
                               torch.nn.Parameter) and \
                    module.weight.dim() == 1:  # BN, LN, channels-first LN
                module.weight.copy_(
                    1 + 0.1 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 *
                                  torch.randn(module.bias.shape, generator=g))
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.copy_(
                        0.1 *
                        torch.randn(module.running_mean.shape, generator=g))
                    module.running_var.copy_(
                        1 + 0.5 *
                        torch.rand(module.running_var.shape, generator=g))
    model.eval()
    classes = tuple(f'class{i}' for i in range(NUM_CLASSES))
    palette = [[i * 30, 255 - i * 30, i * 10] for i in range(NUM_CLASSES)]
    model.CLASSES, model.PALETTE = classes, palette
    meta = dict(
        mmseg_version=mmseg.__version__,
        config=cfg.pretty_text,
        env_info='made by tests/data/mmseg0/make_reference.py',
        seed=0,
        exp_name='upernet_restv2_small_test.py',
        CLASSES=classes,
        PALETTE=palette,
        iter=160000,
        epoch=1)
    path = osp.join(args.out, 'upernet_restv2_mmseg0.pth')
    save_checkpoint(model, path, meta=meta)

    x = torch.randn((1, 3) + INPUT_HW, generator=g)
    h, w = INPUT_HW
    img_meta = dict(
        ori_shape=ORI_HW + (3, ),
        img_shape=INPUT_HW + (3, ),
        pad_shape=INPUT_HW + (3, ),
        flip=False,
        scale_factor=np.array(
            [w / ORI_HW[1], h / ORI_HW[0]] * 2, dtype=np.float32))
    with torch.no_grad():
        probs = model.inference(x, [img_meta], rescale=True)
    torch.save(
        dict(input=x, probs=probs, ori_hw=list(ORI_HW)),
        osp.join(args.out, 'upernet_restv2_mmseg0_output.pt'))
    with open(osp.join(args.out, 'reference.json'), 'w') as f:
        json.dump(
            dict(
                torch=torch.__version__,
                mmcv=mmcv.__version__,
                mmseg=mmseg.__version__,
                embed_dims=EMBED_DIMS,
                depths=DEPTHS,
                num_classes=NUM_CLASSES,
                channels=CHANNELS,
                aux_channels=AUX_CHANNELS,
                input_hw=INPUT_HW,
                ori_hw=ORI_HW,
                config=cfg.pretty_text),
            f,
            indent=1)
    print({
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
    }.__len__(), 'tensors;', probs.shape)


if __name__ == '__main__':
    main()
