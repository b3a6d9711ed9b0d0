"""UperNet on ADE20K with ResT and ResT v2 (configs/upernet): the configs
build through mmseg's registries with only ``custom_imports``, the v2
models have the paper's parameter counts, the recipe is the authors', a
segmentor trains a step, the small config's optimiser decays the learning
rate stage by stage, and SyncBN is handled where torch cannot run it."""
import logging
import os
import socket
import sys
from pathlib import Path

import mmseg  # noqa: F401  (the set-up installs it: missing fails)
import pytest
import torch
from _helpers import run_program
from mmengine.config import Config

from mmrest.checkpoint import WEIGHTS_FILES

CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'upernet'
NAME = '{}_upernet_8xb2-160k_ade20k-512x512.py'
# Millions of parameters of the whole segmentor (backbone, UPerHead and the
# FCN auxiliary head, 150 classes): network.md's "measured here with mmseg's
# UperNet", which round to the paper's 62.1 / 72.9 / 87.6 M.
PAPER_PARAMS = {
    'restv2-tiny': 62.09,
    'restv2-small': 72.86,
    'restv2-base': 87.62
}
V1 = ('rest-small', 'rest-base')
ALL = tuple(PAPER_PARAMS) + V1
# Set in the fresh process that runs a test needing one.
FRESH_PROCESS = 'MMREST_TEST_IN_FRESH_PROCESS'


def metafile_models() -> dict:
    import yaml
    meta = yaml.safe_load((CONFIGS / 'metafile.yml').read_text())
    return {m['Name'].split('_upernet')[0]: m for m in meta['Models']}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load(name: str) -> Config:
    return Config.fromfile(CONFIGS / NAME.format(name))


def build_segmentor(model_cfg):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(model_cfg)


_BUILT = {}


def built(name: str):
    """The segmentor of a config (without its pretrained weights); the two
    that several tests use are built once."""
    if name in _BUILT:
        return _BUILT[name]
    cfg = load(name)
    cfg.model.backbone.init_cfg = None
    model = build_segmentor(cfg.model)
    if name in ('restv2-tiny', 'restv2-small'):
        _BUILT[name] = model
    return model


def narrow(cfg: Config) -> Config:
    """The config with a narrow ResT v2 backbone and heads (fast)."""
    cfg.model.backbone.type = 'ResTV2'
    cfg.model.backbone.arch = dict(
        embed_dims=[16, 32, 64, 128],
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8])
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.in_channels = [16, 32, 64, 128]
    cfg.model.decode_head.channels = 16
    cfg.model.auxiliary_head.in_channels = 64
    cfg.model.auxiliary_head.channels = 8
    return cfg


def seg_batch(num=2, size=(64, 64), classes=150):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(num):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, classes, (1, ) + size))
        sample.set_metainfo(
            dict(img_shape=size, ori_shape=size, pad_shape=size))
        samples.append(sample)
    return dict(
        inputs=[
            torch.randint(0, 256, (3, ) + size).float() for _ in range(num)
        ],
        data_samples=samples)


def test_the_configs_are_these():
    """The ADE20K configs (the segmentation demo's is in configs/demo,
    tested in test_demo_seg.py)."""
    found = {p.name for p in CONFIGS.glob('*.py')}
    assert found == {NAME.format(n) for n in ALL}


@pytest.mark.parametrize('name', ALL)
def test_config_builds_the_paper_model(name):
    cfg = load(name)
    assert cfg.custom_imports == dict(
        imports=['mmrest'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmseg'
    arch = name.split('-')[1]
    backbone = cfg.model.backbone
    assert backbone.type == ('ResTV2' if name.startswith('restv2') else 'ResT')
    assert backbone.arch == arch
    assert backbone.out_indices == (0, 1, 2, 3)
    checkpoint = Path(backbone.init_cfg.checkpoint)
    assert backbone.init_cfg.type == 'Pretrained'
    assert checkpoint.name in WEIGHTS_FILES and arch in checkpoint.name
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert cfg.model.auxiliary_head.norm_cfg.type == 'SyncBN'
    model = built(name)
    assert type(model.backbone).__name__ == backbone.type
    assert type(model.decode_head).__name__ == 'UPerHead'
    assert model.decode_head.num_classes == 150
    params = sum(p.numel() for p in model.parameters())
    if name in PAPER_PARAMS:
        assert round(params / 1e6, 2) == PAPER_PARAMS[name]
    assert params == metafile_models()[name]['Metadata']['Parameters']
    # The heads take what the backbone gives.
    assert list(cfg.model.decode_head.in_channels) == \
        model.backbone.embed_dims
    assert cfg.model.auxiliary_head.in_channels == \
        model.backbone.embed_dims[2]


@pytest.mark.parametrize('name', ALL)
def test_recipe(name):
    """Batch 16 = 8 x 2, crop 512, 160k iterations, AdamW, poly times a
    1500-iteration linear warm-up; tiny (and v1, Swin-T's) lr 6e-5 / wd 0.01 /
    no decay on norms; small and base lr 1.5e-4 / wd 0.05 / stage-wise 0.9;
    mmseg's multi-scale + flip TTA."""
    cfg = load(name)
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.crop_size == (512, 512)
    assert cfg.model.data_preprocessor.size == (512, 512)
    crop = [t for t in cfg.train_pipeline if t.type == 'RandomCrop']
    assert crop[0].crop_size == (512, 512)
    assert cfg.train_cfg.max_iters == 160000
    warmup, poly = cfg.param_scheduler
    # mmengine's schedulers span end - begin - 1 iterations: warm-up over
    # 1500, poly over 160k from 0 (mmcv 0.x's; values: test_recipe.py)
    assert (warmup.type, warmup.begin, warmup.end) == ('LinearLR', 0, 1501)
    assert (poly.type, poly.begin, poly.end, poly.power,
            poly.eta_min) == ('PolyLR', 0, 160001, 1.0, 0.0)
    optim = cfg.optim_wrapper
    assert optim.optimizer.type == 'AdamW'
    if name in ('restv2-small', 'restv2-base'):
        assert (optim.optimizer.lr, optim.optimizer.weight_decay) == (1.5e-4,
                                                                      0.05)
        assert optim.constructor == 'ResTLayerDecayOptimizerConstructor'
        assert optim.paramwise_cfg == dict(
            decay_rate=0.9, decay_type='stage_wise')
    else:
        assert (optim.optimizer.lr, optim.optimizer.weight_decay) == (6e-5,
                                                                      0.01)
        assert optim.paramwise_cfg == dict(
            custom_keys=dict(norm=dict(decay_mult=0.)))
    assert cfg.tta_model.type == 'SegTTAModel'
    (tta, ) = [t for t in cfg.tta_pipeline if t.type == 'TestTimeAug']
    scales = [t.scale_factor for t in tta.transforms[0]]
    assert scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert sorted(t.prob for t in tta.transforms[1]) == [0., 1.]
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'


def test_loss_and_predict_on_a_tiny_batch():
    """The ResT v2-Tiny config as it is (SyncBN included: torch falls back
    to BatchNorm without a process group) trains a step on 2 images of
    32 x 32 and predicts."""
    model = built('restv2-tiny')
    data = model.data_preprocessor(seg_batch(), True)
    assert data['inputs'].shape == (2, 3, 512, 512)  # padded to the crop
    data = model.data_preprocessor(seg_batch(size=(32, 32)), False)
    model.train()
    losses = model(**data, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    total = losses['decode.loss_ce'] + losses['aux.loss_ce']
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stem.proj[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(data['inputs'], mode='tensor')
    assert logits.shape == (2, 150, 8, 8)


def test_small_config_optimiser_decays_by_stage():
    """The optim_wrapper the Runner builds from the v2-Small config: lr
    1.5e-4 * 0.9 ** (5 - id) with ids stem 0, stage s s, heads 5."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    cfg = load('restv2-small')
    model = built('restv2-small')
    with DefaultScope.overwrite_default_scope('mmseg'):
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    setting = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            setting[id(p)] = (group['lr'], group['weight_decay'])
    named = dict(model.named_parameters())
    assert len(setting) == len(named)
    expected = {
        'backbone.stem.proj.0.weight': (1.5e-4 * 0.59049, 0.05),
        'backbone.stem.norm.bias': (1.5e-4 * 0.59049, 0.),
        'backbone.stage1.0.attn.kv.weight': (1.5e-4 * 0.6561, 0.05),
        'backbone.patch_2.proj.weight': (1.5e-4 * 0.729, 0.05),
        'backbone.stage2.1.mlp.fc2.weight': (1.5e-4 * 0.729, 0.05),
        'backbone.patch_3.norm.weight': (1.5e-4 * 0.81, 0.),
        'backbone.stage3.11.attn.up.0.weight': (1.5e-4 * 0.81, 0.05),
        'backbone.stage4.1.mlp.fc1.bias': (1.5e-4 * 0.9, 0.),
        'backbone.norm_2.weight': (1.5e-4, 0.),
        'decode_head.fpn_bottleneck.conv.weight': (1.5e-4, 0.05),
        'decode_head.fpn_bottleneck.bn.weight': (1.5e-4, 0.),
        'auxiliary_head.conv_seg.bias': (1.5e-4, 0.),
    }
    for name, (lr, wd) in expected.items():
        assert setting[id(named[name])] == (pytest.approx(lr,
                                                          rel=1e-12), wd), name


def _sync_bn_layers(model):
    return [
        m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)
    ]


def test_runner_turns_sync_bn_into_bn_when_not_distributed(tmp_path):
    """tools/train.py on one GPU or the CPU: mmengine's Runner reverts the
    heads' SyncBN to BatchNorm and logs it."""
    from mmrest_tools.launch import build_runner
    cfg = narrow(load('restv2-tiny'))
    cfg.work_dir = str(tmp_path)
    cfg.launcher = 'none'
    assert _sync_bn_layers(build_segmentor(cfg.model))
    runner = build_runner(cfg)
    assert not _sync_bn_layers(runner.model)
    assert runner.model.decode_head.fpn_bottleneck.bn.__class__.__name__ \
        == '_BatchNormXd'
    (log, ) = tmp_path.glob('*/*.log')
    assert 'SyncBatchNorm (SyncBN) layers in the model will be ' \
        'automatically reverted' in log.read_text()


def test_cpu_distributed_run_replaces_sync_bn(tmp_path, monkeypatch):
    """tools/dist_train.sh without CUDA: torch's SyncBatchNorm raises on CPU
    tensors in a process group, so mmrest_tools.launch builds BatchNorm instead
    and warns; the segmentor then trains a step in the (gloo) group.

    Run in a fresh Python process (this test, through pytest), so that it
    starts its own process group whatever state other tests left in this
    one."""
    from mmrest_tools import launch
    if torch.cuda.is_available():
        pytest.skip('the CPU-only path')
    if not os.environ.get(FRESH_PROCESS):
        node = f'{__file__}::test_cpu_distributed_run_replaces_sync_bn'
        output = run_program([
            sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
            node
        ],
                             cwd=CONFIGS.parents[1],
                             env={
                                 FRESH_PROCESS: '1'
                             }).output
        assert '1 passed' in output, output[-4000:]
        return
    assert not torch.distributed.is_initialized()  # a fresh process
    cfg = narrow(load('restv2-tiny'))
    cfg.launcher = 'pytorch'
    original = build_segmentor(cfg.model)
    logs = []
    monkeypatch.setattr(
        launch,
        'print_log',
        lambda msg, logger=None, level=logging.INFO: logs.append((level, msg)))
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    data = original.data_preprocessor(seg_batch(size=(32, 32)), False)
    try:
        launch.setup_cpu_distributed(cfg)
        assert torch.distributed.get_backend() == 'gloo'
        original.train()
        with pytest.raises(
                ValueError,
                match='SyncBatchNorm expected input '
                'tensor to be on GPU'):
            original(**data, mode='loss')  # what a user would get
        model = build_segmentor(cfg.model)
        assert not _sync_bn_layers(model)
        model.train()
        losses = model(**data, mode='loss')
        assert torch.isfinite(losses['decode.loss_ce'])
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.model.auxiliary_head.norm_cfg.type == 'BN'
    # mmengine's wrapper for the CPU (no device ids), its usual settings
    assert cfg.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=False,
        device_ids=None)
    assert (logging.INFO, "No CUDA: distributed backend 'nccl' replaced "
            "by 'gloo'") in logs  # mmseg's default backend
    warnings = [msg for level, msg in logs if level == logging.WARNING]
    assert len(warnings) == 1
    assert 'model.decode_head.norm_cfg, model.auxiliary_head.norm_cfg' in \
        warnings[0] and 'using BatchNorm instead' in warnings[0]


def test_replace_sync_bn_names_what_it_changed():
    from mmrest_tools.launch import replace_sync_bn
    cfg = dict(
        backbone=dict(norm_cfg=dict(type='BN')),
        heads=[
            dict(norm_cfg=dict(type='SyncBN')),
            dict(norm_cfg=dict(type='MMSyncBN', eps=1e-3))
        ])
    assert replace_sync_bn(cfg) == [
        'model.heads[0].norm_cfg', 'model.heads[1].norm_cfg'
    ]
    assert cfg['heads'][1]['norm_cfg'] == dict(type='BN', eps=1e-3)
    assert cfg['backbone']['norm_cfg'] == dict(type='BN')


def test_metafile():
    """configs/upernet/metafile.yml lists every config, with the published
    mIoU (multi-scale + flip only: no single-scale number was published)
    and the parameters of the built segmentor."""
    import yaml
    meta = yaml.safe_load((CONFIGS / 'metafile.yml').read_text())
    models = {m['Name']: m for m in meta['Models']}
    assert set(models) == {NAME.format(n)[:-3] for n in ALL}
    published = {
        'restv2-tiny': 47.3,
        'restv2-small': 49.2,
        'restv2-base': 49.6
    }
    root = CONFIGS.parents[1]
    for name in ALL:
        model = models[NAME.format(name)[:-3]]
        assert (root / model['Config']).is_file()
        assert model['In Collection'] == meta['Collections'][0]['Name']
        params = model['Metadata']['Parameters']
        if name in published:
            assert model['Results']['Metrics'] == {
                'mIoU(ms+flip)': published[name]
            }
            assert round(params / 1e6, 2) == PAPER_PARAMS[name]
            assert model['Weights'].startswith('https://pan.baidu.com/')
        else:
            assert 'Results' not in model and 'Weights' not in model
    tiny = built('restv2-tiny')
    assert models[NAME.format('restv2-tiny')
                  [:-3]]['Metadata']['Parameters'] == sum(
                      p.numel() for p in tiny.parameters())


def test_test_tool_options_for_segmentation(tmp_path, monkeypatch):
    """tools/test.py on a segmentation config does what mmseg's does:
    --tta wraps the model in SegTTAModel with the multi-scale + flip
    pipeline, --show-dir draws through SegVisualizationHook, --out is a
    folder for the label maps."""
    from mmrest_tools.launch import (is_segmentation, parse_args,
                                     setup_test_cfg, test_parser)

    # Option handling only: ADE20K is not here (the data check is tested
    # in test_bad_data.py).
    monkeypatch.setattr('mmrest_tools.launch.check_data_paths',
                        lambda *args, **kwargs: None)
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    config = str(CONFIGS / NAME.format('restv2-tiny'))

    def cfg_of(*argv):
        return setup_test_cfg(
            parse_args(test_parser(),
                       [config, str(checkpoint), *map(str, argv)]))

    cfg = cfg_of('--tta', '--show-dir', 'vis', '--out', tmp_path / 'pred')
    assert is_segmentation(cfg)
    assert cfg.load_from == str(checkpoint)
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.type == 'EncoderDecoder'
    assert cfg.model.module.backbone.type == 'ResTV2'
    assert cfg.test_dataloader.dataset.pipeline == cfg.tta_pipeline
    assert cfg.default_hooks.visualization.type == 'SegVisualizationHook'
    assert cfg.default_hooks.visualization.draw
    assert cfg.default_hooks.visualization.interval == 1
    assert cfg.visualizer.save_dir == 'vis'
    assert cfg.test_evaluator.output_dir == str(tmp_path / 'pred')
    assert cfg.test_evaluator.keep_results
    cfg = cfg_of('--show', '--wait-time', '0.5')
    assert cfg.model.type == 'EncoderDecoder'  # single scale
    assert cfg.default_hooks.visualization.show
    assert cfg.default_hooks.visualization.wait_time == 0.5
    assert cfg.test_evaluator.type == 'IoUMetric'
    assert 'output_dir' not in cfg.test_evaluator
    with pytest.raises(ValueError, match='no tta_model'):
        cfg_of('--tta', '--cfg-options', 'tta_model=None')
