"""The authors' mmseg 0.x UperNet checkpoints load unchanged in mmrest's
UperNet configs (mmseg 1.x) and give mmseg 0.x's output.

``tests/data/mmseg0`` holds a small UperNet + ResT v2 built by mmseg 0.30
from the authors' model config and backbone (``semantic_segmentation/``),
with random weights, saved by mmcv 1.x's ``save_checkpoint`` as their
training saved checkpoints (``state_dict`` + ``meta``), and mmseg 0.x's
whole-image inference on one input tensor (how it was made: README there).
Here the checkpoint is loaded, strictly and with no key renamed, into the
model of ``configs/upernet/restv2-tiny_upernet_8xb2-160k_ade20k-512x512.py``
narrowed to the same widths, and its output on the same tensor is compared
with mmseg 0.x's. mmseg 0.x is not needed to run this test.
"""
import json

import mmseg  # noqa: F401 (installed by the set-up: missing is a failure)
import torch
from _helpers import ROOT
from mmengine.config import Config

DATA = ROOT / 'tests/data/mmseg0'
META = json.loads((DATA / 'reference.json').read_text())
CONFIG = (
    ROOT / 'configs/upernet/'
    'restv2-tiny_upernet_8xb2-160k_ade20k-512x512.py')
# Largest difference of a class probability measured on this data (float32,
# the same operators in another order: mmrest's fused attention and token
# layout, mmseg 1.x's resize): 2.1e-7; 1e-5 leaves room for
# other CPUs' rounding while a wrong or missing weight moves the
# probabilities by 1e-2 or more.
PROB_TOL = 1e-5


def _model():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(CONFIG)
    m = cfg.model
    m.backbone.update(
        arch=dict(
            embed_dims=META['embed_dims'],
            depths=META['depths'],
            num_heads=[1, 2, 4, 8]),
        init_cfg=None)
    m.decode_head.update(
        in_channels=META['embed_dims'],
        channels=META['channels'],
        num_classes=META['num_classes'],
        norm_cfg=dict(type='BN', requires_grad=True))
    m.auxiliary_head.update(
        in_channels=META['embed_dims'][2],
        channels=META['aux_channels'],
        num_classes=META['num_classes'],
        norm_cfg=dict(type='BN', requires_grad=True))
    m.test_cfg = dict(mode='whole')
    init_default_scope('mmseg')
    return MODELS.build(m).eval()


def test_mmseg0_checkpoint_loads_unchanged_and_matches():
    from mmengine.runner import load_checkpoint
    from mmseg.structures import SegDataSample
    model = _model()
    # As tools/test.py loads it (mmengine's load_checkpoint), strictly: every
    # key of the mmseg 0.x file is a key of the mmseg 1.x model, none missing.
    load_checkpoint(
        model,
        str(DATA / 'upernet_restv2_mmseg0.pth'),
        map_location='cpu',
        strict=True)
    ref = torch.load(
        DATA / 'upernet_restv2_mmseg0_output.pt', weights_only=True)
    x = ref['input']
    h, w = x.shape[2:]
    sample = SegDataSample(
        metainfo=dict(
            ori_shape=tuple(ref['ori_hw']), img_shape=(h, w), pad_shape=(h,
                                                                         w)))
    with torch.no_grad():
        out = model.predict(x, [sample])[0]
    probs = out.seg_logits.data.softmax(dim=0)
    assert probs.shape == ref['probs'][0].shape
    err = (probs - ref['probs'][0]).abs().max().item()
    print('largest probability difference', err)
    assert err <= PROB_TOL
    # the predicted class of every pixel is the reference's, but where the
    # reference's best two classes are closer than the tolerance allows
    # (a near tie, decided by rounding): there it is one of the tied ones
    pred = out.pred_sem_seg.data[0]
    ref_probs = ref['probs'][0]
    best = ref_probs.max(dim=0).values
    chosen = ref_probs.gather(0, pred[None].long())[0]
    assert (best - chosen <= 2 * PROB_TOL).all()
    assert (pred == ref_probs.argmax(0)).float().mean() > 0.99
