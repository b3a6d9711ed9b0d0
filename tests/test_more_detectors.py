"""Cascade Mask R-CNN, DINO and Mask2Former with the ResT backbones
(configs/cascade_rcnn, configs/dino, configs/mask2former).

The expected values are mmdet's recipes, written here from mmdet 3.3's
configs (convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-
ms-crop-3x_coco.py, dino/dino-4scale_r50_8xb2-12e_coco.py,
mask2former/mask2former_{r50,swin-t-p4-w7-224}_8xb2-lsj-50e_coco.py), the
changes the configs' README pages document (the ResT Mask R-CNN
optimisation for Cascade Mask R-CNN, the ResT backbones), the authors'
ImageNet checkpoints' shapes (tests/data) and mmengine's documented
optimizer rules; they are checked on what the configs build. No value is
read from a config to be compared with itself.
"""
import ast
import copy
import json
import math
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _helpers import ROOT, CallCounter, run_program, settings_by_param
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

CONFIGS = ROOT / 'configs'
DATA = ROOT / 'tests' / 'data'

# (detector, backbone family, arch) of each config.
CASCADE_V1 = ('cascade_rcnn/cascade-mask-rcnn_rest-small_fpn_4conv1fc-giou_'
              'ms-crop-3x_coco.py')
CASCADE_V2T = ('cascade_rcnn/cascade-mask-rcnn_restv2-tiny_fpn_4conv1fc-giou_'
               'amp-ms-crop-3x_coco.py')
CASCADE_V2S = ('cascade_rcnn/cascade-mask-rcnn_restv2-small_fpn_4conv1fc-'
               'giou_amp-ms-crop-3x_coco.py')
DINO = 'dino/dino-4scale_restv2-tiny_8xb2-12e_coco.py'
MASK2FORMER = 'mask2former/mask2former_restv2-tiny_8xb2-lsj-50e_coco.py'
CONFIG = {
    CASCADE_V1: ('cascade', 'v1', 'small'),
    CASCADE_V2T: ('cascade', 'v2', 'tiny'),
    CASCADE_V2S: ('cascade', 'v2', 'small'),
    DINO: ('dino', 'v2', 'tiny'),
    MASK2FORMER: ('mask2former', 'v2', 'tiny'),
}
# The mmdet config each family is written on (its whole recipe but the
# differences listed in DIFFERENCES).
MMDET_BASE = {
    'cascade': 'convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-'
    'giou_amp-ms-crop-3x_coco.py',
    'dino': 'dino/dino-4scale_r50_8xb2-12e_coco.py',
    'mask2former': 'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
}
# What a config may change of its mmdet base: the plugin and its hooks, the
# backbone, the width of what reads the backbone, the optimisation
# (Cascade: the ResT Mask R-CNN one; Mask2Former: the backbone's norms as
# mmdet's Swin config lists Swin's), and the config's own variables.
OWN_VARIABLES = {
    'arch', 'pretrained', 'depths', 'backbone_norm_multi', 'custom_keys'
}
DIFFERENCES = {
    'cascade': {
        'custom_imports', 'default_hooks', 'custom_hooks', 'model',
        'optim_wrapper'
    },
    'dino': {'custom_imports', 'default_hooks', 'custom_hooks', 'model'},
    'mask2former': {
        'custom_imports', 'default_hooks', 'custom_hooks', 'model',
        'optim_wrapper'
    },
}
MODEL_DIFFERENCES = {
    'cascade': ('backbone', 'neck'),
    'dino': ('backbone', 'neck'),
    'mask2former': ('backbone', 'panoptic_head')
}
# The stages each detector reads: Cascade (FPN) and Mask2Former (pixel
# decoder) all four, DINO stages 2-4 (mmdet's DINO recipe with a
# transformer backbone).
OUT_INDICES = {
    'cascade': (0, 1, 2, 3),
    'dino': (1, 2, 3),
    'mask2former': (0, 1, 2, 3)
}
STRIDES = (4, 8, 16, 32)
# The authors' stochastic depth per variant (their detection backbones).
DROP_PATH = {('v1', 'small'): 0.1, ('v2', 'tiny'): 0.1, ('v2', 'small'): 0.2}
RGB_IMAGENET = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])

# Optimisation. Cascade: the ResT papers' Mask R-CNN (AdamW lr 1e-4, weight
# decay 0.05, none on any norm but ResT v2's output norms, total gradient
# norm clipped at 0.01; AMP for v2 as the v2 runs). DINO: mmdet's (AdamW
# lr 1e-4, weight decay 1e-4 on everything, backbone lr x 0.1, clipping at
# 0.1). Mask2Former: mmdet's Swin one (AdamW lr 1e-4, weight decay 0.05,
# backbone lr x 0.1, no decay on norms or on the query / level embeddings,
# clipping at 0.01).
LR = 1e-4
OPTIM = {
    'cascade': dict(wd=0.05, backbone_lr=LR, clip=0.01, norm_wd=0.0),
    'dino': dict(wd=1e-4, backbone_lr=0.1 * LR, clip=0.1, norm_wd=1e-4),
    'mask2former': dict(wd=0.05, backbone_lr=0.1 * LR, clip=0.01, norm_wd=0.0),
}
AMP = {
    CASCADE_V1: False,
    CASCADE_V2T: True,
    CASCADE_V2S: True,
    DINO: False,
    MASK2FORMER: False
}
# Mask2Former's embeddings without weight decay (mmdet's custom keys).
M2F_EMBEDDINGS = ('query_embed', 'query_feat', 'level_embed')
# torch's norm layers, as mmengine's norm_decay_mult recognises them.
NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm,
              nn.LocalResponseNorm)
# Schedules: (loop, length, lr steps).
SCHEDULE = {
    'cascade': ('EpochBasedTrainLoop', 36, [27, 33]),
    'dino': ('EpochBasedTrainLoop', 12, [11]),
    'mask2former': ('IterBasedTrainLoop', 368750, [327778, 355092]),
}

_built = {}


def load(path: str) -> Config:
    return Config.fromfile(str(CONFIGS / path))


def mmdet_config(rel: str) -> Path:
    import mmdet
    path = Path(mmdet.__file__).parent / '.mim' / 'configs' / rel
    assert path.is_file(), path
    return path


def build(path: str):
    """``(cfg, model)``, backbone from scratch, SyncBN as BN (as mmengine's
    Runner does without a distributed launch)."""
    if path not in _built:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.model import revert_sync_batchnorm
        register_all_modules()
        cfg = load(path)
        cfg.model.backbone.init_cfg = None
        _built[path] = cfg, revert_sync_batchnorm(MODELS.build(cfg.model))
    return _built[path]


def build_optimizer(cfg, model):
    """The config's optimizer wrapper (AmpOptimWrapper needs a GPU: on a
    CPU the same groups and clipping through OptimWrapper)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    if optim_cfg.type == 'AmpOptimWrapper' and not torch.cuda.is_available():
        optim_cfg.type = 'OptimWrapper'
        optim_cfg.pop('loss_scale', None)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return build_optim_wrapper(model, optim_cfg)


def authors_widths_and_params(family, arch, out_indices):
    """Stage widths and the backbone's parameter count from the authors'
    ImageNet checkpoint shapes (tests/data): the classifier's head dropped
    (and ResT v2's final norm), buffers not counted, plus the dense output
    norms the detection backbone adds for the returned stages (a LayerNorm,
    2 x C; ResT v1's stage 4 has the classifier's final ``norm``)."""
    name = f'rest_{arch}' if family == 'v1' else f'restv2_{arch}'
    shapes = json.loads(
        (DATA / f'rest_v{family[1]}_state_dict_shapes.json').read_text())[name]
    embed = 'patch_embed_' if family == 'v1' else 'patch_'
    # each stage's width: the bias of its pixel attention
    widths = [shapes['stem.pos.pa_conv.bias'][0]] + [
        shapes[f'{embed}{i}.pos.pa_conv.bias'][0] for i in (2, 3, 4)
    ]
    dropped = ('head.', ) if family == 'v1' else ('head.', 'norm.')
    total = sum(
        math.prod(shape) for key, shape in shapes.items()
        if not key.startswith(dropped) and not key.endswith(
            ('running_mean', 'running_var', 'num_batches_tracked')))
    # v1 keeps the classifier's final norm for stage 4 and adds norm1..3
    # for returned stages 1-3; v2 adds norm_1..norm_4 for returned stages
    added = [i for i in out_indices if family == 'v2' or i < 3]
    total += sum(2 * widths[i] for i in added)
    return widths, total


def _unscoped(node):
    """A config dict without the ``_scope_`` keys mmengine adds to what a
    config inherits through ``mmdet::``."""
    if isinstance(node, dict):
        return {k: _unscoped(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(_unscoped(v) for v in node)
    return node


def _base_chain(path: Path):
    """The ``_base_`` files a config inherits, up to the mmdet one."""
    chain = []
    while True:
        tree = ast.parse(path.read_text())
        (base, ) = [
            ast.literal_eval(n.value) for n in tree.body
            if isinstance(n, ast.Assign) and any(
                getattr(t, 'id', '') == '_base_' for t in n.targets)
        ]
        assert isinstance(base, str), f'{path}: one base expected'
        chain.append(base)
        if base.startswith('mmdet::'):
            return chain
        path = (path.parent / base).resolve()


# ----------------------------------------------------- written on mmdet
@pytest.mark.parametrize('path', list(CONFIG))
def test_written_on_mmdet_bases_with_only_the_differences(path):
    """Each config inherits mmdet's recipe (not the repository's paper
    configs or schedules) and changes only the documented items: the
    pipelines, schedule, heads, losses, assigners and test settings are
    mmdet's."""
    det, family, arch = CONFIG[path]
    chain = _base_chain(CONFIGS / path)
    assert chain[-1] == f'mmdet::{MMDET_BASE[det]}'
    assert not any('mask_rcnn' in b or 'schedules' in b for b in chain)
    ours = _unscoped(load(path).to_dict())
    base = Config.fromfile(
        str(mmdet_config(MMDET_BASE[det])),
        import_custom_modules=False).to_dict()
    changed = {k
               for k in set(ours) | set(base)
               if ours.get(k) != base.get(k)} - OWN_VARIABLES
    assert changed <= DIFFERENCES[det], changed - DIFFERENCES[det]
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader',
                'val_evaluator', 'param_scheduler', 'train_cfg',
                'auto_scale_lr'):
        assert ours[key] == base[key], key
    model, base_model = ours['model'], base['model']
    reader = MODEL_DIFFERENCES[det][1]
    changed = {
        k
        for k in set(model) | set(base_model)
        if model.get(k) != base_model.get(k)
    }
    assert changed <= set(MODEL_DIFFERENCES[det]), changed
    # what reads the backbone: only its input widths
    ours_reader = dict(model[reader], in_channels=None)
    assert ours_reader == dict(base_model[reader], in_channels=None)
    assert model['data_preprocessor'] == base_model['data_preprocessor']
    mean, std = RGB_IMAGENET
    preprocessor = model['data_preprocessor']
    assert preprocessor['bgr_to_rgb'] is True
    assert preprocessor['mean'] == mean and preprocessor['std'] == std


@pytest.mark.parametrize('path', list(CONFIG))
def test_backbone_and_plugin(path):
    det, family, arch = CONFIG[path]
    cfg = load(path)
    assert cfg.custom_imports == dict(
        imports=['mmrest'], allow_failed_imports=False)
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert [h.type for h in cfg.custom_hooks
            ] == ['CheckInvalidLossHook', 'IterSeedHook']
    backbone = cfg.model.backbone
    assert backbone.type == {'v1': 'ResT', 'v2': 'ResTV2'}[family]
    assert backbone.arch == arch
    assert tuple(backbone.out_indices) == OUT_INDICES[det]
    assert backbone.drop_path_rate == DROP_PATH[family, arch]
    assert backbone.frozen_stages == -1
    checkpoint = (f'checkpoints/rest_{arch}.pth'
                  if family == 'v1' else f'checkpoints/restv2_{arch}_224.pth')
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=checkpoint)
    if family == 'v1':  # as the authors' v1 detection backbone
        assert backbone.out_norms_feed_next_stage is True


# -------------------------------------------- backbone into neck / head
@pytest.mark.parametrize('path', list(CONFIG))
def test_backbone_outputs_match_what_reads_them(path):
    """The backbone returns the stages the neck or pixel decoder is built
    for: their number, widths (the authors' checkpoints') and strides;
    DINO's ChannelMapper adds the fourth level its transformer expects."""
    det, family, arch = CONFIG[path]
    cfg, model = build(path)
    widths, _ = authors_widths_and_params(family, arch, OUT_INDICES[det])
    expected = [widths[i] for i in OUT_INDICES[det]]
    h, w = 96, 160
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, h, w))
    assert [f.shape[1] for f in feats] == expected
    strides = [STRIDES[i] for i in OUT_INDICES[det]]
    assert [tuple(f.shape[2:]) for f in feats
            ] == [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    if det == 'cascade':
        assert list(model.neck.in_channels) == expected
        with torch.no_grad():
            outs = model.neck(feats)
        assert len(outs) == 5  # P2-P6, the RPN's five anchor strides
        assert len(model.rpn_head.prior_generator.strides) == 5
    elif det == 'dino':
        assert [c.conv.in_channels for c in model.neck.convs] == expected
        (extra, ) = model.neck.extra_convs
        assert extra.conv.in_channels == expected[-1]
        assert extra.conv.stride == (2, 2)
        with torch.no_grad():
            outs = model.neck(feats)
        # strides 8, 16, 32 and the extra stride-2 conv's 64
        assert len(outs) == 4 == model.num_feature_levels
        assert [o.shape[1] for o in outs] == [256] * 4
        assert tuple(outs[3].shape[2:]) == (math.ceil(outs[2].shape[2] / 2),
                                            math.ceil(outs[2].shape[3] / 2))
        for layer in model.encoder.layers:
            assert layer.self_attn.num_levels == 4
        for layer in model.decoder.layers:
            assert layer.cross_attn.num_levels == 4
    else:
        decoder = model.panoptic_head.pixel_decoder
        assert [conv.conv.in_channels for conv in decoder.input_convs] == \
            expected[::-1][:3]  # the three coarsest levels, coarse first
        assert decoder.lateral_convs[0].conv.in_channels == expected[0]
        assert list(decoder.strides) == strides
        with torch.no_grad():
            mask_feature, multi_scale = decoder(feats)
        assert len(multi_scale) == 3 == \
            model.panoptic_head.num_transformer_feat_level
        assert tuple(mask_feature.shape[2:]) == tuple(feats[0].shape[2:])


@pytest.mark.parametrize('path', list(CONFIG))
def test_parameters_are_the_authors_backbone_and_mmdets_heads(path):
    """Independent count: the backbone has the parameters of the authors'
    ImageNet checkpoint (classifier head and norm dropped, the dense output
    norms added); the rest is what mmdet's own base config builds with the
    neck / pixel decoder widened for these widths, its ResNet backbone
    subtracted."""
    from mmdet.registry import MODELS
    from mmengine.model import revert_sync_batchnorm
    det, family, arch = CONFIG[path]
    cfg, model = build(path)
    widths, backbone_params = authors_widths_and_params(
        family, arch, OUT_INDICES[det])
    assert sum(p.numel() for p in model.backbone.parameters()) == \
        backbone_params
    base = Config.fromfile(
        str(mmdet_config(MMDET_BASE[det])), import_custom_modules=False)
    if det == 'cascade':  # ConvNeXt needs mmpretrain: any backbone will do
        base.model.backbone = dict(type='ResNet', depth=18)
    else:
        base.model.backbone.init_cfg = None
    reader = MODEL_DIFFERENCES[det][1]
    base.model[reader].in_channels = [widths[i] for i in OUT_INDICES[det]]
    reference = revert_sync_batchnorm(MODELS.build(base.model))
    heads = sum(p.numel() for p in reference.parameters()) - sum(
        p.numel() for p in reference.backbone.parameters())
    assert sum(p.numel() for p in model.parameters()) == \
        backbone_params + heads


# ------------------------------------------------------------ optimizer
def expected_settings(det, family, model):
    """{parameter name: (lr, weight decay)} from each parameter's module
    type and place, by the recipe (OPTIM)."""
    recipe = OPTIM[det]
    output_norms = set()
    if det == 'cascade' and family == 'v2':
        # the authors' v2 output norms, not a torch norm in their code
        output_norms = {
            f'backbone.norm_{i + 1}'
            for i in model.backbone.out_indices
        }
    expected = {}
    for name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            in_backbone = name.startswith('backbone.')
            lr = recipe['backbone_lr'] if in_backbone else LR
            no_decay = isinstance(module, NORM_TYPES) and \
                name not in output_norms
            if det == 'mask2former' and name.split('.')[-1] in M2F_EMBEDDINGS:
                no_decay = True
            wd = recipe['norm_wd'] if no_decay else recipe['wd']
            expected[f'{name}.{p_name}' if name else p_name] = (lr, wd)
    return expected


@pytest.mark.parametrize('path', list(CONFIG))
def test_every_parameter_lr_and_weight_decay(path):
    det, family, arch = CONFIG[path]
    cfg, model = build(path)
    wrapper = build_optimizer(cfg, model)
    assert type(wrapper.optimizer) is torch.optim.AdamW
    assert wrapper.optimizer.defaults['betas'] == (0.9, 0.999)
    got = settings_by_param(wrapper)
    expected = expected_settings(det, family, model)
    named = dict(model.named_parameters())
    assert len(got) == len(named) == len(expected)
    for name, p in named.items():
        lr, wd = got[id(p)]
        assert lr == pytest.approx(expected[name][0]), name
        assert wd == pytest.approx(expected[name][1]), name
    # every kind of norm of the backbone is there to be checked
    kinds = {
        type(m)
        for m in model.backbone.modules() if isinstance(m, NORM_TYPES)
    }
    assert {nn.BatchNorm2d, nn.LayerNorm} <= kinds
    if det != 'dino':  # the recipe's zero decay reaches every backbone norm
        norms = [
            p for m in model.backbone.modules() if isinstance(m, NORM_TYPES)
            for p in m.parameters(recurse=False)
        ]
        zero = [p for p in norms if got[id(p)][1] == 0.0]
        output = 8 if (det == 'cascade' and family == 'v2') else 0
        assert len(zero) == len(norms) - output > 50


@pytest.mark.parametrize('path', list(CONFIG))
def test_gradient_clipping_and_precision(path):
    """The total gradient 2-norm is clipped to the recipe's value, one
    factor for all parameters; AMP where the recipe has it."""
    det = CONFIG[path][0]
    cfg, model = build(path)
    wrapper = build_optimizer(cfg, model)
    max_norm = OPTIM[det]['clip']
    assert wrapper.clip_grad_kwargs == dict(max_norm=max_norm, norm_type=2)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    before = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    wrapper._clip_grad()
    after = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
    assert before > 100 * max_norm
    assert after == pytest.approx(max_norm, rel=1e-3)
    for p, g in zip(params[:20], grads[:20]):
        torch.testing.assert_close(
            p.grad.double(),
            g.double() * max_norm / before,
            rtol=1e-3,
            atol=1e-12)
    for p in params:
        p.grad = None
    optim = cfg.optim_wrapper
    if AMP[path]:
        assert optim.type == 'AmpOptimWrapper'
        assert optim.loss_scale == 'dynamic'
    else:
        assert optim.type == 'OptimWrapper'


@pytest.mark.parametrize('path', list(CONFIG))
def test_schedule(path):
    """mmdet's schedules: epochs for Cascade Mask R-CNN (36, steps 27 and
    33, 1000-iteration linear warm-up) and DINO (12, step 11), iterations
    for Mask2Former; batch 16 (8 x 2) for --auto-scale-lr."""
    det = CONFIG[path][0]
    cfg = load(path)
    loop, length, steps = SCHEDULE[det]
    assert cfg.train_cfg.type == loop
    assert cfg.train_cfg[
        'max_epochs' if loop == 'EpochBasedTrainLoop' else 'max_iters'] == \
        length
    schedulers = cfg.param_scheduler
    schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
    (step, ) = [s for s in schedulers if s.type == 'MultiStepLR']
    assert list(step.milestones) == steps and step.gamma == 0.1
    assert step.by_epoch == (loop == 'EpochBasedTrainLoop')
    warmups = [s for s in schedulers if s.type == 'LinearLR']
    if det == 'cascade':
        (warmup, ) = warmups
        assert (warmup.start_factor, warmup.begin, warmup.end,
                warmup.by_epoch) == (0.001, 0, 1000, False)
    else:
        assert not warmups
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16


# ------------------------------------ deformable attention on the CPU
def test_deformable_attention_falls_back_to_pytorch_on_cpu(monkeypatch):
    """mmcv's MultiScaleDeformableAttention runs its compiled kernel only on
    CUDA / MLU tensors; on the CPU it computes with
    ``multi_scale_deformable_attn_pytorch`` (grid_sample). With zero
    offsets, one level and one point, each query at a pixel's centre reads
    exactly that pixel's value (through the value and output projections,
    set to the identity here)."""
    from mmcv.ops import multi_scale_deform_attn as msda
    counter = CallCounter(monkeypatch, msda,
                          'multi_scale_deformable_attn_pytorch')
    dims, heads, h, w = 8, 2, 5, 7
    attn = msda.MultiScaleDeformableAttention(
        embed_dims=dims,
        num_heads=heads,
        num_levels=1,
        num_points=1,
        batch_first=True).eval()  # eval: no dropout
    with torch.no_grad():
        for layer in (attn.sampling_offsets, attn.attention_weights):
            layer.weight.zero_()
            layer.bias.zero_()
        for layer in (attn.value_proj, attn.output_proj):
            layer.weight.copy_(torch.eye(dims))
            layer.bias.zero_()
    value = torch.randn(1, h * w, dims)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ref = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h],
                      -1)[None, :, None, :]  # (1, queries, levels, 2)
    out = attn(
        query=torch.zeros(1, h * w, dims),
        value=value,
        identity=torch.zeros(1, h * w, dims),
        reference_points=ref,
        spatial_shapes=torch.tensor([[h, w]]),
        level_start_index=torch.tensor([0]))
    assert counter.count == 1
    torch.testing.assert_close(out, value, rtol=1e-5, atol=1e-5)


# ---------------------------------- training and evaluation, tiny COCO
# The recipes' image sizes are divided by this in the tests (1333 x 800
# becomes 166 x 100 with 8). DINO selects its 900 queries among the
# encoder's tokens (strides 8-64): its images need 900 of them, 240 pixels
# a side at least, so its sizes are only halved.
SHRINK = {'cascade': 8, 'dino': 2, 'mask2former': 8}


def shrink_sizes(node, factor):
    """The config's pipelines and batch padding with every image size
    divided by ``factor``, in place: the same transforms, seconds on a CPU
    instead of minutes."""
    if isinstance(node, list):
        for item in node:
            shrink_sizes(item, factor)
    elif isinstance(node, dict):
        for key in ('scale', 'scales', 'crop_size', 'size'):
            if key in node and node.get('type') in ('Resize', 'RandomResize',
                                                    'RandomChoiceResize',
                                                    'RandomCrop',
                                                    'BatchFixedSizePad'):
                node[key] = _divided(node[key], factor)
        for value in node.values():
            if isinstance(value, (list, dict)):
                shrink_sizes(value, factor)


def _divided(size, factor):
    if isinstance(size, (list, tuple)) and size and isinstance(
            size[0], (list, tuple)):
        return [_divided(s, factor) for s in size]
    return tuple(max(1, int(s) // factor) for s in size)


def tiny_cfg(path, tiny_coco):
    """The config on the tiny COCO set, sizes shrunk, backbone from
    scratch."""
    factor = SHRINK[CONFIG[path][0]]
    cfg = load(path)
    cfg.merge_from_dict(tiny_coco)
    cfg.model.backbone.init_cfg = None
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        shrink_sizes(cfg[key].dataset.pipeline, factor)
    shrink_sizes(
        cfg.model.data_preprocessor.get('batch_augments') or [], factor)
    return cfg


LOSSES = {
    # three stages, each with class, box and mask losses, and the RPN
    'cascade': {
        f's{i}.{k}'
        for i in range(3)
        for k in ('loss_cls', 'loss_bbox', 'loss_mask')
    }
    | {'loss_rpn_cls', 'loss_rpn_bbox'},
    # the last decoder layer, five earlier ones (d0-d4), the encoder's
    # proposals, and the denoising queries of every layer
    'dino': {
        'loss_cls', 'loss_bbox', 'loss_iou', 'enc_loss_cls', 'enc_loss_bbox',
        'enc_loss_iou', 'dn_loss_cls', 'dn_loss_bbox', 'dn_loss_iou'
    }
    | {
        f'd{i}.{k}'
        for i in range(5)
        for k in ('loss_cls', 'loss_bbox', 'loss_iou', 'dn_loss_cls',
                  'dn_loss_bbox', 'dn_loss_iou')
    },
    # the last of the 9 decoder layers and the 9 predictions before it
    # (from the learned queries, d0, to layer 8, d8)
    'mask2former': {'loss_cls', 'loss_mask', 'loss_dice'}
    | {
        f'd{i}.{k}'
        for i in range(9)
        for k in ('loss_cls', 'loss_mask', 'loss_dice')
    },
}
# Deformable attention layers run in one training forward: DINO's 6
# encoder and 6 decoder layers; Mask2Former's pixel decoder, 6.
DEFORMABLE_CALLS = {'cascade': 0, 'dino': 12, 'mask2former': 6}
# Detections per image at test time (mmdet's test_cfg).
MAX_PER_IMAGE = {'dino': 300, 'mask2former': 100}
METRICS = {
    'cascade': ['bbox', 'segm'],
    'dino': ['bbox'],
    'mask2former': ['bbox', 'segm']
}


def _cascade_for_a_short_run(cfg) -> None:
    """Cascade Mask R-CNN trained a step from scratch: every detection kept
    (no score reaches 0.05), fewer RoIs through the three 4-conv box heads
    (the recipe's 2000 / 1000 proposals and 512 RoIs a stage, mmdet's:
    ``test_written_on_mmdet_bases_with_only_the_differences``): a minute
    less on two CPU cores."""
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    cfg.model.train_cfg.rpn_proposal.max_per_img = 100
    for stage in cfg.model.train_cfg.rcnn:
        stage.sampler.num = 64
    cfg.model.test_cfg.rpn.max_per_img = 100
    cfg.model.test_cfg.rcnn.max_per_img = 20


@pytest.mark.parametrize(
    'path', [CASCADE_V1, CASCADE_V2T, CASCADE_V2S, DINO, MASK2FORMER])
def test_train_steps_and_coco_evaluation(path, tiny_coco, monkeypatch):
    """A training step through the config's own pipeline (sizes shrunk),
    optimizer and clipping, then a COCO evaluation by the config's
    CocoMetric."""
    from mmcv.ops import multi_scale_deform_attn as msda
    from mmdet.registry import METRICS as METRIC_REGISTRY
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.evaluator import Evaluator
    from mmengine.logging import MessageHub
    from mmengine.model import revert_sync_batchnorm
    from mmengine.runner import Runner
    register_all_modules()
    det = CONFIG[path][0]
    cfg = tiny_cfg(path, tiny_coco)
    if det == 'cascade':
        _cascade_for_a_short_run(cfg)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    hub = MessageHub.get_instance(f'test_more_detectors_{uuid.uuid4().hex}')
    optim = build_optimizer(cfg, model)
    assert optim.message_hub is hub
    counter = CallCounter(monkeypatch, msda,
                          'multi_scale_deformable_attn_pytorch')

    batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
    shape = batch['inputs'][0].shape[1:]
    assert max(shape) <= 1333 // SHRINK[det] + 32  # the shrunk pipeline
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    losses = model.train_step(batch, optim)
    assert LOSSES[det] <= set(losses), LOSSES[det] - set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # logged by the clipping: the gradient norm before it
    assert hub.get_scalar('train/grad_norm').current() > 0
    assert counter.count == DEFORMABLE_CALLS[det]
    changed = [
        n for n, p in model.named_parameters()
        if not torch.equal(p, before[n])
    ]
    assert any(n.startswith('backbone.stage1.') for n in changed)
    assert any(not n.startswith('backbone.') for n in changed)

    model.eval()
    loader = Runner.build_dataloader(cfg.val_dataloader)
    evaluator = Evaluator(METRIC_REGISTRY.build(cfg.val_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    for batch in loader:
        with torch.no_grad():
            outputs = model.val_step(batch)
        pred = outputs[0].pred_instances
        assert len(pred) > 0
        if det in MAX_PER_IMAGE:
            assert len(pred) == MAX_PER_IMAGE[det]
        if 'segm' in METRICS[det]:
            assert tuple(pred.masks.shape[1:]) == outputs[0].ori_shape
        evaluator.process(outputs, batch)
    results = evaluator.evaluate(len(loader.dataset))
    assert list(evaluator.metrics[0].metrics) == METRICS[det]
    for kind in METRICS[det]:
        for key in ('mAP', 'mAP_50', 'mAP_75'):
            assert 0 <= results[f'coco/{kind}_{key}'] <= 1


# ------------------------------------------------ the training tools
@pytest.mark.parametrize('tool,path',
                         [('mmrest', CASCADE_V2T), ('mmdet', DINO),
                          ('mmrest', MASK2FORMER)])
def test_training_tools(tool, path, tiny_coco, tmp_path):
    """The repository's tools/train.py (on the CPU with --no-amp: the v2
    Cascade config asks for AMP; SyncBN turned into BN by mmengine's Runner
    without a distributed launch) and mmdet's own packaged tools/train.py
    train one epoch (Mask2Former, by iteration: one iteration) and
    validate it with CocoMetric. The run's config is
    the test's shrunk one (tiny_cfg), dumped to a file."""
    import sys

    import mmdet
    det = CONFIG[path][0]
    cfg = tiny_cfg(path, tiny_coco)
    by_iteration = cfg.train_cfg.type == 'IterBasedTrainLoop'
    if by_iteration:
        cfg.train_cfg.max_iters = 1
        cfg.default_hooks.logger.interval = 1
    else:
        cfg.train_cfg.max_epochs = 1
    if det == 'cascade':
        _cascade_for_a_short_run(cfg)
    config = tmp_path / 'config.py'
    cfg.dump(str(config))
    work = tmp_path / 'work'
    if tool == 'mmrest':
        args = [ROOT / 'tools' / 'train.py', config, '--no-amp']
    else:
        args = [
            Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py', config
        ]
    output = run_program([sys.executable, *args, '--work-dir', work],
                         cwd=tmp_path).output
    assert (work / ('iter_1.pth' if by_iteration else 'epoch_1.pth')).is_file()
    (log, ) = work.glob('*/vis_data/scalars.json')
    train, val = [json.loads(line) for line in log.read_text().splitlines()]
    assert LOSSES[det] <= set(train)
    assert train['grad_norm'] > 0  # clipped
    if det == 'cascade':  # warm-up from 0.001 x lr
        assert train['lr'] == pytest.approx(0.001 * LR)
        assert 'SyncBatchNorm' in output  # reverted to BatchNorm
    elif det == 'mask2former':  # no warm-up; mmengine logs the first
        # parameter group's lr: the backbone's (lr_mult 0.1)
        assert train['lr'] == pytest.approx(0.1 * LR)
    else:  # DINO has no warm-up
        assert train['lr'] == pytest.approx(LR)
    for kind in METRICS[det]:
        assert 0 <= val[f'coco/{kind}_mAP'] <= 1
