"""ResTLayerDecayOptimizerConstructor: which parameter gets which learning
rate and weight decay, for every ResT and ResT v2 variant (their real
depths, narrow widths to stay fast), against the rule written out here
independently (mmrest/engine/layer_decay.py's docstring):

- layer ids: stem 0; stage s (1-4) patch embedding + blocks s (stage-wise),
  or blocks 1..sum(depths) counted from the input with each patch
  embedding on its stage's first block (layer-wise); everything else
  (output norms, heads) max id; lr = base_lr * rate ** (max_id - id);
- weight decay 0 for the parameters of norm layers and for biases, the
  optimizer's weight decay for all others.
"""
import copy
import re

import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper
from torch.nn.modules.batchnorm import _BatchNorm

from mmrest import ResT, ResTV2

from _helpers import settings_by_param

BASE_LR = 1e-3
BASE_WD = 0.05
NARROW = {ResT: [8, 16, 32, 64], ResTV2: [16, 32, 64, 128]}
VARIANTS = [(ResT, a) for a in ('lite', 'small', 'base', 'large')] + [
    (ResTV2, a) for a in ('tiny', 'small', 'base', 'large')
]


class Segmentor(nn.Module):
    """A backbone and a head, named as mmseg's EncoderDecoder names them."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        width = backbone.embed_dims[-1]
        self.decode_head = nn.Sequential(
            nn.Conv2d(width, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1))


def narrow_model(cls, arch: str, **kwargs) -> Segmentor:
    """The variant's depths, heads and ratios with narrow embed dims."""
    settings = copy.deepcopy(cls.arch_zoo[arch])
    settings['embed_dims'] = NARROW[cls]
    if cls is ResTV2 and arch == 'large':
        settings['embed_dims'] = [32, 64, 128, 256]  # heads 2, 4, 8, 16
    return Segmentor(cls(arch=settings, **kwargs))


def build(model, decay_type, rate=0.9, **paramwise):
    cfg = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        constructor='ResTLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=rate, decay_type=decay_type,
                           **paramwise))
    return build_optim_wrapper(model, cfg)


def expected_layer_id(name: str, depths, decay_type: str) -> int:
    """The rule, from the parameter's name alone."""
    stage_wise = decay_type == 'stage_wise'
    max_id = (4 if stage_wise else sum(depths)) + 1
    if name.startswith('backbone.stem.'):
        return 0
    m = re.match(r'backbone\.patch(?:_embed)?_([234])\.', name)
    if m:
        s = int(m.group(1))
        return s if stage_wise else 1 + sum(depths[:s - 1])
    m = re.match(r'backbone\.stage([1234])\.(\d+)\.', name)
    if m:
        s, j = int(m.group(1)), int(m.group(2))
        assert j < depths[s - 1]
        return s if stage_wise else 1 + sum(depths[:s - 1]) + j
    return max_id


def no_decay_names(model: nn.Module):
    """Parameters of norm layers, and biases, by module type."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f'{mod_name}.{p_name}' if mod_name else p_name
            if isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                names.add(full)
            elif p_name == 'bias':
                names.add(full)
    return names


@pytest.mark.parametrize('decay_type', ['stage_wise', 'layer_wise'])
@pytest.mark.parametrize('cls,arch', VARIANTS,
                         ids=[f'{c.__name__}-{a}' for c, a in VARIANTS])
def test_every_parameter_gets_the_rule(cls, arch, decay_type):
    model = narrow_model(cls, arch)
    depths = cls.arch_zoo[arch]['depths']
    max_id = (4 if decay_type == 'stage_wise' else sum(depths)) + 1
    got = settings_by_param(build(model, decay_type, rate=0.9))
    no_decay = no_decay_names(model)
    ids_seen = set()
    for name, p in model.named_parameters():
        layer_id = expected_layer_id(name, depths, decay_type)
        ids_seen.add(layer_id)
        lr, wd = got[id(p)]
        assert lr == pytest.approx(BASE_LR * 0.9**(max_id - layer_id),
                                   rel=1e-12), name
        assert wd == (0. if name in no_decay else BASE_WD), name
    assert len(got) == len(list(model.parameters()))
    # Every id from the stem to the head is used.
    assert ids_seen == set(range(max_id + 1))


def test_literal_values_v2_small_stage_wise():
    """Hand-written values: ResT v2-Small, decay 0.9 over ids 0..5."""
    model = narrow_model(ResTV2, 'small')
    got = settings_by_param(build(model, 'stage_wise', rate=0.9))
    named = dict(model.named_parameters())

    def check(name, lr, wd):
        assert got[id(named[name])] == (pytest.approx(lr, rel=1e-12), wd)

    check('backbone.stem.proj.0.weight', 1e-3 * 0.59049, BASE_WD)
    check('backbone.stem.proj.1.weight', 1e-3 * 0.59049, 0.)  # BatchNorm
    check('backbone.stem.pos.pa_conv.weight', 1e-3 * 0.59049, BASE_WD)
    check('backbone.stem.norm.weight', 1e-3 * 0.59049, 0.)
    check('backbone.stage1.0.attn.q.weight', 1e-3 * 0.6561, BASE_WD)
    check('backbone.stage1.0.attn.q.bias', 1e-3 * 0.6561, 0.)
    check('backbone.patch_2.proj.weight', 1e-3 * 0.729, BASE_WD)
    check('backbone.stage2.1.norm1.weight', 1e-3 * 0.729, 0.)
    check('backbone.stage3.11.mlp.fc1.weight', 1e-3 * 0.81, BASE_WD)
    check('backbone.stage4.1.attn.up_norm.weight', 1e-3 * 0.9, 0.)
    check('backbone.patch_4.pos.pa_conv.bias', 1e-3 * 0.9, 0.)
    check('backbone.norm_4.weight', 1e-3, 0.)
    check('decode_head.0.weight', 1e-3, BASE_WD)
    check('decode_head.1.weight', 1e-3, 0.)


def test_literal_values_v1_small_layer_wise():
    """Hand-written values: ResT-Small (depths 2, 2, 6, 2), ids 0..13."""
    model = narrow_model(ResT, 'small')
    got = settings_by_param(build(model, 'layer_wise', rate=0.5))
    named = dict(model.named_parameters())

    def lr(name):
        return got[id(named[name])][0]

    assert lr('backbone.stem.conv1.weight') == pytest.approx(1e-3 / 2**13)
    assert lr('backbone.stage1.0.mlp.fc1.weight') == pytest.approx(1e-3 /
                                                                  2**12)
    assert lr('backbone.stage1.1.mlp.fc1.weight') == pytest.approx(1e-3 /
                                                                  2**11)
    # Stage 2's patch embedding with stage 2's first block (id 3).
    assert lr('backbone.patch_embed_2.conv.weight') == pytest.approx(1e-3 /
                                                                    2**10)
    assert lr('backbone.stage2.0.attn.q.weight') == pytest.approx(1e-3 /
                                                                 2**10)
    assert lr('backbone.stage3.5.attn.kv.weight') == pytest.approx(1e-3 /
                                                                  2**3)
    assert lr('backbone.stage4.1.attn.proj.weight') == pytest.approx(1e-3 /
                                                                    2)
    assert lr('backbone.norm1.weight') == pytest.approx(1e-3)
    assert lr('backbone.norm.weight') == pytest.approx(1e-3)
    assert got[id(named['backbone.stem.norm1.weight'])][1] == 0.
    assert got[id(named['backbone.stem.conv1.weight'])][1] == BASE_WD


def test_num_layers_is_checked():
    model = narrow_model(ResTV2, 'small')
    build(model, 'stage_wise', num_layers=4)
    build(model, 'stage_wise', num_layers=(1, 2, 12, 2))  # the authors'
    build(model, 'layer_wise', num_layers=17)
    with pytest.raises(ValueError, match=r'num_layers=12 .*give 4'):
        build(model, 'stage_wise', num_layers=12)
    with pytest.raises(ValueError, match=r'num_layers=\(1, 3, 16, 3\)'):
        build(model, 'layer_wise', num_layers=(1, 3, 16, 3))


@pytest.mark.parametrize('paramwise,match', [
    (dict(decay_rate=0.9, decay_type='block_wise'), 'decay_type must be'),
    (dict(decay_rate=1.5), r'decay_rate must be a number in \(0, 1\]'),
    (dict(decay_type='stage_wise'), 'decay_rate must be'),
    (dict(decay_rate=0.9, custom_keys={}), "unknown paramwise_cfg keys"),
])
def test_bad_paramwise_cfg(paramwise, match):
    cfg = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        constructor='ResTLayerDecayOptimizerConstructor',
        paramwise_cfg=paramwise)
    with pytest.raises(ValueError, match=match):
        build_optim_wrapper(narrow_model(ResTV2, 'tiny'), cfg)


def test_other_backbone_is_a_clear_error():
    model = nn.Module()
    model.backbone = nn.Conv2d(3, 8, 3)
    with pytest.raises(TypeError, match='ResT or ResTV2 backbone.*Conv2d'):
        build(model, 'stage_wise')


def test_frozen_stages_and_a_training_step():
    """Frozen parameters keep their group: each is in the optimizer with
    the learning rate and weight decay the rule gives its name, as if it
    were not frozen (so that unfreezing it later needs no new groups), and
    gets no update; a step with the groups runs."""
    model = narrow_model(ResTV2, 'tiny', frozen_stages=1)
    wrapper = build(model, 'stage_wise')
    got = settings_by_param(wrapper)
    depths = ResTV2.arch_zoo['tiny']['depths']
    no_decay = no_decay_names(model)
    frozen = [(n, p) for n, p in model.named_parameters()
              if not p.requires_grad]
    # the stem (stage 1's embedding, id 0) and stage 1 (id 1) at least
    assert {expected_layer_id(n, depths, 'stage_wise')
            for n, _ in frozen} >= {0, 1}
    for name, p in frozen:
        assert id(p) in got, f'{name} is in no group'
        layer_id = expected_layer_id(name, depths, 'stage_wise')
        assert got[id(p)] == (
            pytest.approx(BASE_LR * 0.9**(5 - layer_id), rel=1e-12),
            0. if name in no_decay else BASE_WD), name
    stem = model.backbone.stem.proj[0].weight
    assert not stem.requires_grad
    before = stem.detach().clone()
    out = model.backbone(torch.rand(1, 3, 64, 64))[-1]
    wrapper.update_params(model.decode_head(out).square().mean())
    assert torch.equal(stem, before)
