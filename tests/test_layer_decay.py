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
from _helpers import settings_by_param
from mmengine.optim import build_optim_wrapper
from torch.nn.modules.batchnorm import _BatchNorm

from mmrest import ResT, ResTV2

BASE_LR = 1e-3
BASE_WD = 0.05
NARROW = {ResT: [8, 16, 32, 64], ResTV2: [16, 32, 64, 128]}
VARIANTS = [(ResT, a) for a in ('lite', 'small', 'base', 'large')
            ] + [(ResTV2, a) for a in ('tiny', 'small', 'base', 'large')]


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
        paramwise_cfg=dict(
            decay_rate=rate, decay_type=decay_type, **paramwise))
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
@pytest.mark.parametrize(
    'cls,arch', VARIANTS, ids=[f'{c.__name__}-{a}' for c, a in VARIANTS])
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
        assert lr == pytest.approx(
            BASE_LR * 0.9**(max_id - layer_id), rel=1e-12), name
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
    assert lr('backbone.stage2.0.attn.q.weight') == pytest.approx(1e-3 / 2**10)
    assert lr('backbone.stage3.5.attn.kv.weight') == pytest.approx(1e-3 / 2**3)
    assert lr('backbone.stage4.1.attn.proj.weight') == pytest.approx(1e-3 / 2)
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
    (dict(decay_rate=0), r'decay_rate must be a number in \(0, 1\]'),
    (dict(decay_type='stage_wise'), 'decay_rate must be'),
    (dict(decay_rate=0.9, lr_mult=2.), "unknown paramwise_cfg keys"),
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
        assert got[id(p)] == (pytest.approx(
            BASE_LR * 0.9**(5 - layer_id),
            rel=1e-12), 0. if name in no_decay else BASE_WD), name
    stem = model.backbone.stem.proj[0].weight
    assert not stem.requires_grad
    before = stem.detach().clone()
    out = model.backbone(torch.rand(1, 3, 64, 64))[-1]
    wrapper.update_params(model.decode_head(out).square().mean())
    assert torch.equal(stem, before)


# ------------------------------------------- mmengine's paramwise options
# How they combine with the decay (mmrest/engine/layer_decay.py's
# docstring), written out again here from the parameter's name and module:
# the longest custom key contained in '<module>.<param>' (ties: the
# alphabetically first) multiplies the layer-decayed lr by its lr_mult and,
# if it has a decay_mult, sets the weight decay to weight_decay *
# decay_mult; otherwise the rule's weight decay stays. Without a custom
# key: bias_lr_mult multiplies the lr of biases outside norm layers; the
# weight decay is weight_decay times norm_decay_mult (norm layers), else
# bias_decay_mult (biases), else dwconv_decay_mult (depth-wise convs, when
# given), else flat_decay_mult (1-D), else 1; the first three default to 0.
NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


def expected_settings(model, depths, decay_type, rate, paramwise):
    """{parameter name: (lr, weight decay)} by the rule above."""
    max_id = (4 if decay_type == 'stage_wise' else sum(depths)) + 1
    custom = paramwise.get('custom_keys', {})
    mults = dict(
        norm=paramwise.get('norm_decay_mult', 0.),
        bias=paramwise.get('bias_decay_mult', 0.),
        dwconv=paramwise.get('dwconv_decay_mult'),
        flat=paramwise.get('flat_decay_mult', 0.))
    out = {}
    for mod_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            name = f'{mod_name}.{p_name}'
            lr = BASE_LR * rate**(
                max_id - expected_layer_id(name, depths, decay_type))
            is_norm = isinstance(module, NORMS)
            if is_norm:
                decay = mults['norm']
            elif p_name == 'bias':
                decay = mults['bias']
            elif (isinstance(module, nn.Conv2d)
                  and module.groups == module.in_channels
                  and mults['dwconv'] is not None):
                decay = mults['dwconv']
            elif param.dim() == 1:
                decay = mults['flat']
            else:
                decay = 1.
            matches = [k for k in custom if k in name]
            if matches:
                longest = max(len(k) for k in matches)
                key = min(k for k in matches if len(k) == longest)
                lr *= custom[key].get('lr_mult', 1.)
                decay = custom[key].get('decay_mult', decay)
            elif p_name == 'bias' and not is_norm:
                lr *= paramwise.get('bias_lr_mult', 1.)
            out[name] = (lr, BASE_WD * decay)
    return out


CUSTOM_KEYS = {
    'decode_head': dict(lr_mult=10.),
    'pos.pa_conv': dict(decay_mult=0.),
    'attn': dict(lr_mult=0.5),
    'attn.q': dict(lr_mult=2., decay_mult=2.),  # longer than 'attn'
    # both in 'backbone.stage*.*.attn.kv.bias', equally long: 'attn.kv'
    'attn.kv': dict(lr_mult=3.),
    'kv.bias': dict(lr_mult=5., decay_mult=1.),
    'norm1': dict(decay_mult=1.),  # norms decayed after all
}
OPTION_CASES = {
    'custom_keys':
    dict(custom_keys=CUSTOM_KEYS),
    'decay_mults':
    dict(
        norm_decay_mult=1.,
        bias_decay_mult=0.5,
        dwconv_decay_mult=0.1,
        bias_lr_mult=2.),
    'both':
    dict(
        custom_keys=CUSTOM_KEYS,
        norm_decay_mult=0.3,
        dwconv_decay_mult=0.,
        bias_lr_mult=4.,
        bypass_duplicate=True),
    # norms and biases both without weight decay: only the lr tells a
    # bias's group from a norm's
    'bias_lr_mult':
    dict(bias_lr_mult=2.),
}


@pytest.mark.parametrize('case', list(OPTION_CASES))
@pytest.mark.parametrize('decay_type', ['stage_wise', 'layer_wise'])
@pytest.mark.parametrize(
    'cls,arch', [(ResT, 'small'), (ResTV2, 'small')],
    ids=['ResT-small', 'ResTV2-small'])
def test_mmengine_options_with_the_decay(cls, arch, decay_type, case):
    """Every parameter's lr and weight decay with custom_keys and the
    decay multipliers, against the rule written out above."""
    paramwise = OPTION_CASES[case]
    model = narrow_model(cls, arch)
    depths = cls.arch_zoo[arch]['depths']
    got = settings_by_param(build(model, decay_type, rate=0.8, **paramwise))
    want = expected_settings(model, depths, decay_type, 0.8, paramwise)
    assert len(got) == len(want) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        lr, wd = got[id(param)]
        assert lr == pytest.approx(want[name][0], rel=1e-12), name
        assert wd == pytest.approx(want[name][1], rel=1e-12, abs=0), name


def test_custom_keys_literal_values():
    """Hand-written values: ResT-Small stage-wise, decay 0.9 (ids 0..5)."""
    model = narrow_model(ResT, 'small')
    got = settings_by_param(
        build(model, 'stage_wise', rate=0.9, custom_keys=CUSTOM_KEYS))
    named = dict(model.named_parameters())

    def check(name, lr, wd):
        assert got[id(named[name])] == (pytest.approx(lr, rel=1e-12),
                                        pytest.approx(wd, rel=1e-12)), name

    # the head at 10x; its BatchNorm keeps no weight decay (no decay_mult)
    check('decode_head.0.weight', 1e-2, BASE_WD)
    check('decode_head.1.weight', 1e-2, 0.)
    # no decay for the positional encodings' kernels, lr still decayed
    check('backbone.stem.pos.pa_conv.weight', 1e-3 * 0.59049, 0.)
    check('backbone.patch_embed_3.pos.pa_conv.weight', 1e-3 * 0.81, 0.)
    # 'attn.q' (longest) over 'attn'
    check('backbone.stage2.0.attn.q.weight', 1e-3 * 0.729 * 2, 0.1)
    check('backbone.stage2.0.attn.proj.weight', 1e-3 * 0.729 * 0.5, BASE_WD)
    check('backbone.stage2.0.attn.proj.bias', 1e-3 * 0.729 * 0.5, 0.)
    # 'attn.kv' and 'kv.bias' tie: 'attn.kv' goes first alphabetically
    check('backbone.stage4.1.attn.kv.bias', 1e-3 * 0.9 * 3, 0.)
    check('backbone.stage4.1.attn.kv.weight', 1e-3 * 0.9 * 3, BASE_WD)
    # a norm decayed through its key
    check('backbone.stage3.5.norm1.weight', 1e-3 * 0.81, BASE_WD)
    check('backbone.norm1.bias', 1e-3, BASE_WD)
    check('backbone.stage3.5.norm2.weight', 1e-3 * 0.81, 0.)


def test_decay_multipliers_literal_values():
    model = narrow_model(ResTV2, 'tiny')
    got = settings_by_param(
        build(
            model,
            'stage_wise',
            rate=0.5,
            norm_decay_mult=1.,
            bias_decay_mult=0.5,
            dwconv_decay_mult=0.1,
            bias_lr_mult=2.))
    named = dict(model.named_parameters())

    def check(name, lr, wd):
        assert got[id(named[name])] == (pytest.approx(lr, rel=1e-12),
                                        pytest.approx(wd, rel=1e-12)), name

    check('backbone.stem.proj.1.weight', 1e-3 / 32, BASE_WD)  # BatchNorm
    check('backbone.stem.proj.1.bias', 1e-3 / 32, BASE_WD)  # not 2x lr
    check('backbone.stem.pos.pa_conv.weight', 1e-3 / 32, BASE_WD * 0.1)
    check('backbone.stem.pos.pa_conv.bias', 1e-3 / 16, BASE_WD * 0.5)
    check('backbone.stage1.0.attn.q.weight', 1e-3 / 16, BASE_WD)
    check('backbone.stage1.0.attn.q.bias', 1e-3 / 8, BASE_WD * 0.5)
    check('decode_head.2.bias', 2e-3, BASE_WD * 0.5)


def test_shared_parameters_are_in_one_group():
    """A module used twice (its parameters under two names) is in one
    group, with or without bypass_duplicate (torch refuses a parameter in
    two groups)."""
    model = narrow_model(ResTV2, 'tiny')
    model.aux_head = model.decode_head  # shared
    for bypass in (False, True):
        got = settings_by_param(
            build(
                model,
                'stage_wise',
                bypass_duplicate=bypass,
                custom_keys={'aux_head': dict(lr_mult=7.)}))
        # the first name (decode_head) decides
        assert got[id(model.decode_head[0].weight)][0] == \
            pytest.approx(BASE_LR)
        assert len(got) == len(list(model.parameters()))


def test_custom_keys_training_step():
    """The groups with custom entries make a working AdamW step; a key's
    other entries (here betas) reach its group."""
    model = narrow_model(ResTV2, 'tiny')
    wrapper = build(
        model,
        'stage_wise',
        custom_keys={'decode_head': dict(lr_mult=10., betas=(0.5, 0.6))})
    head = model.decode_head[0].weight
    (group, ) = [
        g for g in wrapper.optimizer.param_groups
        if any(p is head for p in g['params'])
    ]
    assert group['betas'] == (0.5, 0.6) and group['lr'] == pytest.approx(1e-2)
    before = head.detach().clone()
    out = model.backbone(torch.rand(1, 3, 64, 64))[-1]
    wrapper.update_params(model.decode_head(out).square().mean())
    assert not torch.equal(head, before)


@pytest.mark.parametrize('paramwise,error,match', [
    (dict(custom_keys=[('head', {})]), TypeError, 'custom_keys must be a'),
    (dict(custom_keys={'head': 10.}), TypeError,
     r"custom_keys\['head'\] must be a dict"),
    (dict(custom_keys={'head': dict(lr_mult=-1)}), ValueError,
     r"custom_keys\['head'\].lr_mult must be a number >= 0"),
    (dict(norm_decay_mult='0'), ValueError, 'norm_decay_mult must be'),
    (dict(dcn_offset_lr_mult=0.1), ValueError, 'not supported'),
    (dict(decay_multt=0.1), ValueError, r"unknown paramwise_cfg keys "
     r"\['decay_multt'\]"),
])
def test_bad_mmengine_options(paramwise, error, match):
    with pytest.raises(error, match=match):
        build(narrow_model(ResTV2, 'tiny'), 'stage_wise', **paramwise)


def test_decay_multipliers_need_a_weight_decay():
    """As mmengine: a decay multiplier with no optimizer weight_decay is an
    error, not a silent no-op."""
    cfg = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=BASE_LR),
        constructor='ResTLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.9, norm_decay_mult=1.))
    with pytest.raises(ValueError, match='base_wd should not be None'):
        build_optim_wrapper(narrow_model(ResTV2, 'tiny'), cfg)


def test_decay_rate_one_keeps_every_lr():
    """decay_rate=1 (allowed: the interval is (0, 1]) is no decay at all."""
    model = narrow_model(ResT, 'lite')
    got = settings_by_param(build(model, 'layer_wise', rate=1))
    assert {lr for lr, _ in got.values()} == {BASE_LR}


def test_optimizer_without_weight_decay():
    """With no weight_decay in the optimizer, norms and biases still get
    none: their groups say 0, the others keep the optimizer's default
    (AdamW's 0.01), as a group without the key does in torch."""
    model = narrow_model(ResTV2, 'tiny')
    cfg = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=BASE_LR),
        constructor='ResTLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.9))
    got = settings_by_param(build_optim_wrapper(model, cfg))
    adamw_default = torch.optim.AdamW([nn.Parameter(torch.zeros(1))
                                       ]).defaults['weight_decay']
    assert adamw_default == 0.01
    no_decay = no_decay_names(model)
    for name, p in model.named_parameters():
        assert got[id(p)][1] == (0. if name in no_decay else 0.01), name


def test_flat_parameters():
    """A 1-D or 0-D parameter outside norms and biases (none in the
    backbones; a head may have one) follows flat_decay_mult (default 0); a
    2-D one gets the optimizer's weight decay."""
    model = narrow_model(ResTV2, 'tiny')
    head = model.decode_head
    head.register_parameter('gain', nn.Parameter(torch.ones(3)))
    head.register_parameter('temperature', nn.Parameter(torch.tensor(1.)))
    head.register_parameter('table', nn.Parameter(torch.ones(3, 3)))
    for mult, paramwise in ((0., {}), (0.5, dict(flat_decay_mult=0.5))):
        got = settings_by_param(build(model, 'stage_wise', **paramwise))
        assert got[id(head.gain)] == (BASE_LR, BASE_WD * mult)
        assert got[id(head.temperature)] == (BASE_LR, BASE_WD * mult)
        assert got[id(head.table)] == (BASE_LR, BASE_WD)


def test_group_names_and_the_log(monkeypatch):
    """Each group is named by its layer id, decay, weight decay, custom
    key and bias lr, and rank 0 (only) logs one line per group."""
    from mmrest.engine import layer_decay
    logged = []
    monkeypatch.setattr(layer_decay, 'print_log',
                        lambda msg, **kw: logged.append(msg))
    model = narrow_model(ResTV2, 'tiny')
    wrapper = build(
        model,
        'stage_wise',
        norm_decay_mult=0.5,
        bias_lr_mult=2.,
        custom_keys={'decode_head': dict(lr_mult=10.)})
    names = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            names[id(p)] = group['group_name']
    named = dict(model.named_parameters())

    def name_of(param_name):
        return names[id(named[param_name])]

    assert name_of('backbone.stem.proj.0.weight') == 'layer_0_decay'
    assert name_of('backbone.stem.proj.1.weight') == 'layer_0_decay_wd0.025'
    assert name_of('backbone.stage1.0.attn.q.bias') == \
        'layer_1_no_decay_bias_lr'
    assert name_of('backbone.stage1.0.attn.q.weight') == 'layer_1_decay'
    assert name_of('decode_head.1.weight') == \
        'layer_5_decay_wd0.025_custom[decode_head]'
    assert name_of('decode_head.0.bias') == 'layer_5_no_decay_custom[' \
        'decode_head]'
    (message, ) = logged
    groups = wrapper.optimizer.param_groups
    assert message.count('\n') == len(groups)
    assert '  layer_1_no_decay_bias_lr: ' in message
    monkeypatch.setattr(layer_decay, 'get_dist_info', lambda: (1, 2))
    build(model, 'stage_wise')
    assert len(logged) == 1  # nothing from rank 1
