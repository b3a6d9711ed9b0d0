"""tools/train.py, tools/test.py, tools/get_flops.py and mmdet's own
tools/train.py on the COCO configs: option handling, and tiny real runs on
a COCO-format set the test writes."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import ROOT, run_program

PY = sys.executable
RETINANET = 'configs/retinanet/retinanet_rest-lite_fpn_1x_coco.py'
MASK_RCNN = 'configs/mask_rcnn/mask-rcnn_rest-lite_fpn_1x_coco.py'


def flat_options(options, validate=True):
    """``key=value`` strings; without validation, no val_* entries and
    none of the val/test data overrides."""
    if not validate:
        options = {
            k: v
            for k, v in options.items() if not k.startswith(('val', 'test'))
        }
        options.update(val_cfg=None, val_dataloader=None, val_evaluator=None)
    return [f'{k}={v}' for k, v in options.items()]


def run(args, cwd=ROOT, timeout=900, env=None):
    """A program run to success; its output (stdout, then stderr)."""
    return run_program(args, cwd=cwd, timeout=timeout, env=env).output


def scalars(work_dir):
    """The records of mmengine's LocalVisBackend log of the latest run."""
    (path, ) = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))[-1:]
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------- option handling
def train_args(*argv):
    from mmrest_tools.launch import parse_args, train_parser
    return parse_args(train_parser(), [str(a) for a in argv])


@pytest.fixture
def no_data_check(monkeypatch):
    """Option handling only: the data under data/coco is not here (the
    check that names missing data is tested in test_bad_data.py)."""
    monkeypatch.setattr('mmrest_tools.launch.check_data_paths',
                        lambda *args, **kwargs: None)


def test_train_options(tmp_path, monkeypatch, no_data_check):
    from mmrest_tools.launch import setup_train_cfg
    monkeypatch.chdir(ROOT)
    scratch = ['--cfg-options', 'model.backbone.init_cfg=None']
    cfg = setup_train_cfg(train_args(MASK_RCNN, *scratch))
    assert cfg.model.backbone.init_cfg is None
    assert cfg.work_dir == './work_dirs/mask-rcnn_rest-lite_fpn_1x_coco'
    assert cfg.launcher == 'none' and not cfg.resume
    assert not cfg.auto_scale_lr.enable
    assert cfg.optim_wrapper.type == 'OptimWrapper'

    # --amp needs a GPU (test_train_precision_options): pretend there is one
    monkeypatch.setattr('mmengine.device.get_device', lambda: 'cuda')
    cfg = setup_train_cfg(
        train_args(MASK_RCNN, '--amp', '--auto-scale-lr', '--resume',
                   '--work-dir', tmp_path, '--launcher', 'pytorch', *scratch,
                   'train_dataloader.batch_size=4'))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    # the authors' Mask R-CNN clipping, kept
    assert cfg.optim_wrapper.clip_grad.max_norm == 0.01
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    assert cfg.resume is True and cfg.load_from is None  # latest in work dir
    assert cfg.work_dir == str(tmp_path)
    assert cfg.launcher == 'pytorch'
    assert cfg.train_dataloader.batch_size == 4

    checkpoint = tmp_path / 'epoch_3.pth'
    checkpoint.write_bytes(b'')
    cfg = setup_train_cfg(
        train_args(MASK_RCNN, '--resume', checkpoint, *scratch))
    assert cfg.resume is True and cfg.load_from == str(checkpoint)
    with pytest.raises(FileNotFoundError, match='epoch_9.pth'):
        setup_train_cfg(
            train_args(MASK_RCNN, '--resume', tmp_path / 'epoch_9.pth',
                       *scratch))


def test_test_dumps_detections_only_when_asked(monkeypatch, tmp_path):
    """``tools/test.py --out FILE`` adds mmdet's DumpDetResults to the
    test metrics of a detector; without ``--out``, and for a segmentor
    (whose ``--out`` is a folder of label maps, see setup_seg_test_cfg),
    the metrics stay as configured."""
    from mmdet.evaluation import DumpDetResults
    from mmengine.config import Config

    from mmrest_tools import launch

    class Runner:

        def __init__(self):
            self.test_evaluator = type('Evaluator', (), {})()
            self.test_evaluator.metrics = []

        def test(self):
            return {'metric': 1.0}

    for scope in ('mmdet', 'mmseg'):
        for out in (None, str(tmp_path / 'out.pkl')):
            runner = Runner()
            monkeypatch.setattr(launch, 'setup_test_cfg',
                                lambda args: Config(dict(default_scope=scope)))
            monkeypatch.setattr(launch, 'build_runner', lambda cfg: runner)
            argv = ['config.py', 'model.pth'
                    ] + ([] if out is None else ['--out', out])
            assert launch.test(argv) == {'metric': 1.0}
            dumps = runner.test_evaluator.metrics
            if scope == 'mmdet' and out is not None:
                assert len(dumps) == 1 and isinstance(dumps[0], DumpDetResults)
                assert dumps[0].out_file_path == out
            else:
                assert dumps == [], (scope, out)


def test_set_precision_without_options_changes_nothing():
    """``set_precision`` with neither ``--amp`` nor ``--no-amp`` keeps the
    config's wrapper: a plain one on the CPU, an AMP one on a GPU."""
    from mmengine.config import Config

    from mmrest_tools.launch import set_precision
    for wrapper, accelerator in ((dict(type='OptimWrapper'), False), (dict(
            type='AmpOptimWrapper', loss_scale=512.), True)):
        cfg = Config(dict(optim_wrapper=dict(wrapper)))
        set_precision(cfg, accelerator=accelerator)
        assert cfg.optim_wrapper == wrapper


def test_train_precision_options(monkeypatch, no_data_check):
    """A config with AmpOptimWrapper (the ResT v2 3x ones) fails at once
    on a machine without a GPU, naming --no-amp; --no-amp gives a plain
    OptimWrapper without the AMP-only keys, its other settings kept."""
    from mmengine.config import Config

    from mmrest_tools.launch import setup_train_cfg
    monkeypatch.chdir(ROOT)
    v2 = 'configs/mask_rcnn/mask-rcnn_restv2-tiny_fpn_3x_coco.py'
    scratch = ['--cfg-options', 'model.backbone.init_cfg=None']
    monkeypatch.setattr('mmengine.device.get_device', lambda: 'cpu')
    with pytest.raises(RuntimeError, match='--no-amp'):
        setup_train_cfg(train_args(v2, *scratch))
    with pytest.raises(RuntimeError, match='--no-amp'):
        setup_train_cfg(train_args(MASK_RCNN, '--amp', *scratch))
    with pytest.raises(SystemExit):  # argparse: not both
        train_args(v2, '--amp', '--no-amp')
    amp = Config.fromfile(v2).optim_wrapper
    cfg = setup_train_cfg(train_args(v2, '--no-amp', *scratch))
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer == amp.optimizer
    assert cfg.optim_wrapper.clip_grad == amp.clip_grad
    assert cfg.optim_wrapper.get('paramwise_cfg') == amp.get('paramwise_cfg')
    # the wrapper that mmengine builds from it takes every key left
    from mmengine.optim import build_optim_wrapper
    model = torch.nn.Linear(2, 2)
    wrapper_cfg = dict(cfg.optim_wrapper)
    wrapper_cfg.pop('paramwise_cfg', None)
    assert type(build_optim_wrapper(model, wrapper_cfg)).__name__ == \
        'OptimWrapper'
    # with a GPU, the config's AMP stays
    monkeypatch.setattr('mmengine.device.get_device', lambda: 'cuda')
    cfg = setup_train_cfg(train_args(v2, *scratch))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'


def test_train_options_bad_input(tmp_path, monkeypatch):
    from mmrest_tools.launch import setup_train_cfg
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match='no_such_config.py'):
        setup_train_cfg(train_args('no_such_config.py'))
    config = tmp_path / 'no_scaling.py'
    config.write_text(f"_base_ = '{ROOT / RETINANET}'\nauto_scale_lr = None\n")
    with pytest.raises(RuntimeError, match='auto_scale_lr'):
        setup_train_cfg(train_args(config, '--auto-scale-lr'))
    with pytest.raises(SystemExit):  # argparse: not a launcher
        train_args(RETINANET, '--launcher', 'ssh')


def test_train_stops_at_once_without_pretrained_weights(
        tmp_path, monkeypatch, no_data_check):
    """Before anything is built: the error names the missing file, says
    where to get it and how to train from scratch instead."""
    from mmrest_tools.launch import setup_train_cfg
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        setup_train_cfg(train_args(ROOT / MASK_RCNN))
    message = str(error.value)
    assert "'checkpoints/rest_lite.pth'" in message
    assert str(tmp_path / 'checkpoints/rest_lite.pth') in message
    assert 'https://github.com/wofmanaf/ResT' in message
    assert '--cfg-options model.backbone.init_cfg=None' in message
    # with the file in place the check passes
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints/rest_lite.pth').write_bytes(b'')
    setup_train_cfg(train_args(ROOT / MASK_RCNN))


def test_local_rank_option(monkeypatch):
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    assert train_args(RETINANET).local_rank == 0  # a single process
    assert os.environ['LOCAL_RANK'] == '0'
    monkeypatch.delenv('LOCAL_RANK')
    args = train_args(RETINANET, '--local-rank', '3')
    assert args.local_rank == 3 and os.environ['LOCAL_RANK'] == '3'
    monkeypatch.setenv('LOCAL_RANK', '1')  # set by torchrun: kept
    train_args(RETINANET, '--local_rank', '0')
    assert os.environ['LOCAL_RANK'] == '1'


def test_test_options(tmp_path, monkeypatch, no_data_check):
    from mmrest_tools.launch import parse_args, setup_test_cfg, test_parser
    monkeypatch.chdir(ROOT)
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')

    def cfg_of(config, *argv):
        return setup_test_cfg(
            parse_args(test_parser(),
                       [config, str(checkpoint), *map(str, argv)]))

    cfg = cfg_of(MASK_RCNN, '--show-dir', 'vis', '--work-dir', tmp_path)
    assert cfg.load_from == str(checkpoint)
    assert cfg.work_dir == str(tmp_path)
    hook = cfg.default_hooks.visualization
    assert hook.draw and hook.test_out_dir == 'vis'
    cfg = cfg_of(RETINANET, '--show', '--wait-time', '0.5')
    assert cfg.default_hooks.visualization.show
    assert cfg.default_hooks.visualization.wait_time == 0.5
    cfg = cfg_of(RETINANET, '--show')
    assert cfg.default_hooks.visualization.wait_time == 2  # mmdet's default

    cfg = cfg_of(RETINANET, '--tta')
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.model.module.backbone.type == 'ResT'
    tta = cfg.test_dataloader.dataset.pipeline[-1]
    assert tta.type == 'TestTimeAug'
    # mmdet's RetinaNet base config brings its own TTA: 3 scales x 2 flips
    assert [t.get('prob') for t in tta.transforms[1]] == [1., 0.]
    assert len(tta.transforms[0]) == 3
    with pytest.raises(ValueError, match='masks'):
        cfg_of(MASK_RCNN, '--tta')
    with pytest.raises(ValueError, match='results.json'):
        cfg_of(RETINANET, '--out', 'results.json')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        setup_test_cfg(
            parse_args(test_parser(),
                       [RETINANET, str(tmp_path / 'missing.pth')]))


def test_tta_for_a_config_without_its_own():
    """``--tta`` on a detection config that brings no ``tta_model`` /
    ``tta_pipeline``: mmdet's DetTTAModel around the model (boxes merged by
    NMS at IoU 0.5, 100 per image), each image flipped and as is, the test
    pipeline's own steps before, its packing last with the flip recorded;
    found inside a dataset wrapper, whose pipeline is left alone."""
    from mmengine.config import Config

    from mmrest_tools.launch import add_flip_tta
    raw = Config.fromfile(ROOT / RETINANET).to_dict()
    raw.pop('tta_model'), raw.pop('tta_pipeline')
    cfg = Config(raw)
    pipeline = [dict(t) for t in cfg.test_dataloader.dataset.pipeline]
    cfg.test_dataloader.dataset = dict(
        type='RepeatDataset', times=1, dataset=cfg.test_dataloader.dataset)
    cfg = add_flip_tta(cfg)
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.model.module.backbone.type == 'ResT'
    assert cfg.model.tta_cfg == dict(
        nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
    tta = cfg.test_dataloader.dataset.pipeline
    assert tta == cfg.tta_pipeline
    assert tta[:-1] == pipeline[:-1]
    assert tta[-1].type == 'TestTimeAug'
    flips, (pack, ) = tta[-1].transforms
    assert [(f.type, f.prob) for f in flips] == [('RandomFlip', 1.),
                                                 ('RandomFlip', 0.)]
    assert pack.type == pipeline[-1]['type'] == 'PackDetInputs'
    assert {'flip', 'flip_direction', 'scale_factor'} <= set(pack.meta_keys)
    assert cfg.test_dataloader.dataset.dataset.pipeline == pipeline


def test_cpu_distributed_needs_torchrun():
    from mmengine.config import Config

    from mmrest_tools.launch import setup_cpu_distributed
    if torch.cuda.is_available():
        pytest.skip('only without CUDA')
    cfg = Config(
        dict(launcher='slurm', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    with pytest.raises(RuntimeError, match='--launcher pytorch'):
        setup_cpu_distributed(cfg)
    cfg = Config(dict(launcher='none'))
    setup_cpu_distributed(cfg)  # nothing to do
    assert 'model_wrapper_cfg' not in cfg


# ------------------------------------------------------------------ FLOPs
def test_flop_count_of_the_attention_matches_the_literal_emsa():
    """The FLOP handles added for EMSA (fused attention, head mixing)
    count what the literal computation's matmuls and 1x1 conv count."""
    from mmengine.analysis import FlopAnalyzer

    from mmrest import ResT
    from mmrest.backbones import to_literal
    from mmrest_tools.analysis import EXTRA_FLOP_HANDLES
    model = ResT(arch='lite').eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ours = FlopAnalyzer(model, x).set_op_handle(**EXTRA_FLOP_HANDLES)
        literal = FlopAnalyzer(to_literal(model), x)
        for analyzer in (ours, literal):
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
        # the literal model's InstanceNorm is element-wise work, which
        # neither count includes otherwise
        expected = literal.total() - literal.by_operator()['instance_norm']
        assert ours.total() == expected
        assert not {'aten::scaled_dot_product_attention', 'aten::baddbmm'
                    } & set(ours.unsupported_ops())


def retinanet_params_by_hand(official_shapes):
    """Parameters of RetinaNet + ResT-Lite, counted independently: the
    backbone from the authors' state-dict shapes (classifier head and
    BatchNorm buffers dropped;
    plus the LayerNorms norm2 and norm3 that the detector backbone adds for
    its outputs of stages 2 and 3), FPN and RetinaHead from their layer
    formulas (the config's FPN on stages 2-4: 3 lateral 1x1 and 3 output
    3x3 convs, two extra 3x3 convs from the last input; mmdet's RetinaHead:
    4 + 4 stacked 3x3 convs, 9 anchors, 80 classes; every conv with a
    bias)."""
    from math import prod
    dims = (64, 128, 256, 512)
    buffers = ('.running_mean', '.running_var', '.num_batches_tracked')
    backbone = sum(
        prod(shape) for key, shape in official_shapes['rest_lite'].items()
        if not key.startswith('head.') and not key.endswith(buffers))
    backbone += 2 * dims[1] + 2 * dims[2]

    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    fpn = sum(conv(c, 256, 1) for c in dims[1:]) + 3 * conv(256, 256, 3) + \
        conv(512, 256, 3) + conv(256, 256, 3)
    head = 8 * conv(256, 256, 3) + conv(256, 9 * 80, 3) + conv(256, 9 * 4, 3)
    return backbone, backbone + fpn + head


def test_get_flops_tool(tmp_path, official_shapes):
    out = tmp_path / 'flops.json'
    text = run([
        PY, 'tools/get_flops.py', RETINANET, '--shape', '128', '192', '--json',
        out
    ])
    result = json.loads(out.read_text())
    assert result['shape'] == [128, 192]
    backbone, total = retinanet_params_by_hand(official_shapes)
    assert result['backbone_params'] == backbone
    assert result['params'] == total
    assert 0 < result['backbone_flops'] < result['flops']
    counted = {
        'aten::_convolution', 'aten::linear', 'aten::matmul',
        'aten::scaled_dot_product_attention', 'aten::baddbmm'
    }
    assert not counted & set(result['unsupported_ops'])
    assert f'FLOPs: {result["flops"] / 1e9:.1f} G' in text
    assert 'input shape (H, W): (128, 192)' in text


# --------------------------------------------------------------- real runs
def test_train_test_and_resume(tiny_coco, tmp_path):
    """tools/train.py trains an iteration (the paper configs count
    detectron2's iterations) and validates it with CocoMetric at the end;
    tools/test.py evaluates the checkpoint, dumps and draws the results;
    --resume continues from the latest checkpoint."""
    work = tmp_path / 'work'
    scratch = {
        'model.backbone.init_cfg': None,
        # from scratch no score reaches 0.05: keep all for CocoMetric
        'model.test_cfg.score_thr': 0.0,
    }
    options = flat_options({**tiny_coco, **scratch})
    # mmengine validates after the last iteration whatever val_interval says
    no_validation = flat_options({**tiny_coco, **scratch}, validate=False)
    run([
        PY, 'tools/train.py', RETINANET, '--work-dir', work, '--cfg-options',
        'train_cfg.max_iters=1', *options
    ])
    assert (work / 'iter_1.pth').is_file()
    assert not list(work.glob('epoch_*.pth'))
    train, val = scalars(work)
    assert train['iter'] == 1
    assert train['lr'] == pytest.approx(1e-7)  # warm-up from 0.001
    assert 'loss_cls' in train
    # the authors clip no RetinaNet gradient: no clipping, no logged norm
    assert 'grad_norm' not in train
    assert 0 <= val['coco/bbox_mAP'] <= 1

    preds = tmp_path / 'preds.pkl'
    text = run([
        PY, 'tools/test.py', RETINANET, work / 'iter_1.pth', '--work-dir',
        work, '--out', preds, '--show-dir', 'vis', '--cfg-options', *options
    ])
    assert 'coco/bbox_mAP' in text and 'Load checkpoint from' in text
    with open(preds, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 1 and len(results[0]['pred_instances']['bboxes'])
    assert len(list(work.glob('*/vis/*.png'))) == 1

    text = run([
        PY,
        'tools/train.py',
        RETINANET,
        '--work-dir',
        work,
        '--resume',
        '--cfg-options',
        'train_cfg.max_iters=2',
        # by iteration, the log comes every `interval` iterations
        'default_hooks.logger.interval=1',
        *no_validation
    ])
    assert 'resumed epoch: 0, iter: 1' in text
    assert (work / 'iter_2.pth').is_file()
    records = scalars(work)
    assert [r['iter'] for r in records if 'loss' in r][-1:] == [2], records
    assert max(r['iter'] for r in records) == 2
    shutil.rmtree(work)  # checkpoints of 240 MB each


def test_subprocesses_import_this_clone(tmp_path):
    """A program run from another folder, as the tests run tools (mmdet's
    packaged train tool included), imports this clone's mmrest and
    mmrest_tools, not those of another clone that an editable install
    names (tests/conftest.py sets PYTHONPATH)."""
    out = run([
        PY, '-c', 'import mmrest, mmrest_tools\n'
        'for m in (mmrest, mmrest_tools): print("FROM", m.__file__)'
    ],
              cwd=tmp_path)
    paths = [line[5:] for line in out.splitlines() if line.startswith('FROM ')]
    assert len(paths) == 2, out
    for path in paths:
        assert Path(path).resolve().is_relative_to(ROOT), path


_SHARE_TEST = '''
import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def test_threads():
    child = subprocess.run(
        [sys.executable, '-c', 'import torch; print(torch.get_num_threads())'],
        capture_output=True, text=True, check=True).stdout.strip()
    Path(__file__).with_name('seen.json').write_text(json.dumps([
        os.environ.get('PYTEST_XDIST_WORKER_COUNT', '-'),
        str(torch.get_num_threads()), os.environ.get('OMP_NUM_THREADS', '-'),
        child]))
'''


@pytest.mark.parametrize('workers', [0, 2])
def test_test_workers_share_the_cpus(workers, tmp_path):
    """`make test` runs the suite in two pytest-xdist workers: each takes
    its share of the CPUs' intra-op threads, and so do the programs its
    tests start (OMP_NUM_THREADS); without workers nothing is changed.
    The repository's tests/conftest.py runs a test printing what it sees."""
    shutil.copy(ROOT / 'tests' / 'conftest.py', tmp_path)
    (tmp_path / 'test_share.py').write_text(_SHARE_TEST)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith('PYTEST_') and k != 'OMP_NUM_THREADS'
    }
    default = subprocess.run(
        [PY, '-c', 'import torch; print(torch.get_num_threads())'],
        env=env,
        capture_output=True,
        text=True,
        check=True).stdout.strip()
    proc = subprocess.run([
        PY, '-m', 'pytest', '-p', 'no:cacheprovider', '-n',
        str(workers), 'test_share.py'
    ],
                          cwd=tmp_path,
                          env=env,
                          capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads((tmp_path / 'seen.json').read_text())
    if workers:
        share = str(max(1, len(os.sched_getaffinity(0)) // workers))
        assert seen == [str(workers), share, share, share]
    else:
        assert seen == ['-', default, '-', default]


def test_run_program_reports_the_childs_status_and_output(tmp_path):
    """The tests' runner of programs: the variables given over this
    environment, the working folder, stdout and stderr apart and together,
    the exit status; a failure asserted with the end of the output."""
    code = ('import os, sys; print(os.environ["MMREST_T"], os.getcwd()); '
            'print("late", file=sys.stderr); sys.exit(int(sys.argv[1]))')
    ran = run_program([PY, '-c', code, 0],
                      cwd=tmp_path,
                      env={'MMREST_T': 'seen'})
    assert ran.returncode == 0
    assert ran.stdout.split() == ['seen', str(tmp_path)]
    assert (ran.stderr, ran.output) == ('late\n', ran.stdout + 'late\n')
    failed = run_program([PY, '-c', code, 3], env={'MMREST_T': 'x'}, ok=False)
    assert failed.returncode == 3 and failed.stdout.startswith('x ')
    with pytest.raises(AssertionError, match=r'(?s)exited with 3:\n.*late'):
        run_program([PY, '-c', code, 3], env={'MMREST_T': 'x'})


def test_mmdet_packaged_train_tool(tiny_coco, tmp_path):
    """mmdet's own tools/train.py, shipped inside the mmdet package,
    trains our Mask R-CNN config (mmrest comes in by custom_imports)."""
    import mmdet
    tool = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py'
    assert tool.is_file()
    work = tmp_path / 'work'
    run([
        PY, tool, ROOT / MASK_RCNN, '--work-dir', work, '--cfg-options',
        'model.backbone.init_cfg=None', 'train_cfg.max_iters=1',
        *flat_options(tiny_coco, validate=False)
    ],
        cwd=tmp_path)
    assert (work / 'iter_1.pth').is_file()
    (record, ) = scalars(work)
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox',
            'loss_mask'} <= set(record)
    shutil.rmtree(work)


# What setup.py builds a distribution from (its README, version, model index,
# configs and tools), copied apart so that the build leaves this clone as it is
DIST_SOURCES = ('setup.py', 'setup.cfg', 'MANIFEST.in', 'README.md', 'LICENSE',
                'CITATION.cff', 'model-index.yml', 'requirements', 'configs',
                'tools', 'mmrest', 'mmrest_tools')


def test_wheel_install_under_mim(tiny_coco, tmp_path):
    """A wheel of mmrest (``pip install .``, not editable) carries the
    model index, the configs and the tools in mmrest/.mim, where
    OpenMMLab's mim looks: installed, ``mim search mmrest`` lists every
    model of the metafiles with its measured size, and ``mim train mmrest
    <config name>`` (README, docs/detection.md) trains from the installed
    copy's config and tool."""
    import yaml
    src = tmp_path / 'src'
    src.mkdir()
    for name in DIST_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                src / name,
                ignore=shutil.ignore_patterns('__pycache__', '.mim'))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [PY, '-m', 'pip', '--disable-pip-version-check']
    run([
        *pip, 'wheel', src, '--no-deps', '--no-build-isolation', '--no-index',
        '-w', tmp_path / 'dist'
    ])
    (wheel, ) = (tmp_path / 'dist').glob('mmrest-*.whl')
    site = tmp_path / 'site'
    run([*pip, 'install', '--no-deps', '--no-index', '--target', site, wheel])
    # the installed copy in place of this clone (conftest's PYTHONPATH)
    env = {'PYTHONPATH': str(site)}
    out = run([
        PY, '-c', 'import mmrest, mmrest_tools\n'
        'for m in (mmrest, mmrest_tools): print("FROM", m.__file__)'
    ],
              cwd=tmp_path,
              env=env)
    paths = [line[5:] for line in out.splitlines() if line.startswith('FROM ')]
    assert len(paths) == 2 and all(
        Path(p).is_relative_to(site) for p in paths), out

    mim = [PY, '-m', 'mim']
    models = {}
    for metafile in sorted(ROOT.glob('configs/*/metafile.yml')):
        for model in yaml.safe_load(metafile.read_text())['Models']:
            models[model['Name']] = model
    listed = run([*mim, 'search', 'mmrest'], cwd=tmp_path, env=env)
    ids = [
        line.split(':', 1)[1].strip() for line in listed.splitlines()
        if line.startswith('config id:')
    ]
    assert sorted(ids) == sorted(models)
    name = 'retinanet_rest-lite_fpn_1x_coco'
    shown = run([*mim, 'search', 'mmrest', '--config', name],
                cwd=tmp_path,
                env=env)
    size = models[name]['Metadata']['Parameters (M)']
    assert f'parameters(M)         {size:.2f}' in shown, shown

    installed = site / 'mmrest' / '.mim'
    work = tmp_path / 'work'
    out = run([
        *mim, 'train', 'mmrest', f'{name}.py', '--work-dir', work,
        '--cfg-options', 'model.backbone.init_cfg=None',
        'train_cfg.max_iters=1', *flat_options(tiny_coco, validate=False)
    ],
              cwd=tmp_path,
              env=env)
    command = next(line for line in out.splitlines()
                   if line.startswith('Training command is '))
    assert command.split()[4:6] == [
        str(installed / 'tools' / 'train.py'),
        str(installed / 'configs' / 'retinanet' / f'{name}.py')
    ], command
    assert (work / 'iter_1.pth').is_file()
    (record, ) = scalars(work)
    assert {'loss_cls', 'loss_bbox'} <= set(record)
    shutil.rmtree(work)
