"""Detectors and segmentors built from config files that only name mmrest
in custom_imports, as a user writes them."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def test_mask_rcnn_from_config_trains_and_predicts():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules
    cfg = Config.fromfile(
        CONFIGS / 'mask_rcnn/mask-rcnn_rest-small_fpn_1x_coco.py')
    assert cfg.custom_imports == dict(imports=['mmrest'],
                                      allow_failed_imports=False)
    register_all_modules()
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'ResT'
    packed = demo_mm_inputs(2, [(3, 160, 224)] * 2, with_mask=True,
                            num_classes=80)
    data = model.data_preprocessor(packed, True)
    model.train()
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(
        losses)
    total = sum(v if torch.is_tensor(v) else sum(v) for k, v in
                losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stage1[0].attn.q.weight.grad is not None
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False),
                        mode='predict')
    assert len(results) == 2 and hasattr(results[0], 'pred_instances')


def test_upernet_from_config_forward():
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    from mmengine.structures import PixelData
    cfg = Config.fromfile(
        CONFIGS / 'upernet/rest_small_upernet_512x512_160k_ade20k.py')
    # SyncBN needs a process group; one CPU process uses plain BN.
    cfg.model.decode_head.norm_cfg = dict(type='BN')
    cfg.model.auxiliary_head.norm_cfg = dict(type='BN')
    register_all_modules()
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'ResT'
    samples = []
    for _ in range(2):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 150, (1, 96, 128)))
        sample.set_metainfo(dict(img_shape=(96, 128), ori_shape=(96, 128),
                                 pad_shape=(96, 128)))
        samples.append(sample)
    inputs = torch.rand(2, 3, 96, 128)
    model.train()
    losses = model(inputs, samples, mode='loss')
    assert torch.isfinite(losses['decode.loss_ce'])
    model.eval()
    with torch.no_grad():
        logits = model(inputs, mode='tensor')
    assert logits.shape == (2, 150, 24, 32)
