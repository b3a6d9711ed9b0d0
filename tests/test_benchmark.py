"""The benchmark runs and reports what it measured (no timing asserts)."""
import os
import statistics
import subprocess
import time

import pytest
import torch
from _helpers import CallCounter

from mmrest_tools.benchmark import (BACKBONES, build_backbone, format_row,
                                    measure_speed)


def test_every_backbone_builds_and_is_measured():
    row = measure_speed(
        'rest_small_literal',
        repeats=1,
        batch=2,
        small=(64, 64),
        large=(72, 104))
    assert row['params_M'] == pytest.approx(13.17, abs=0.01)  # no head
    assert row['img_per_s_224_b16'] > 0 and row['s_per_img_800x1344'] > 0
    assert 'rest_small_literal' in format_row(row)
    # the others are built, and checked further, by
    # test_each_compared_backbone_is_the_network_it_names
    named = {n for c in CLASSIFIERS for n in (c, f'{c}_literal')}
    for name in sorted(set(BACKBONES) - named):
        assert sum(p.numel() for p in build_backbone(name).parameters())
    with pytest.raises(KeyError, match='resnet101'):
        build_backbone('resnet101')


# Published parameter counts (M) of each classifier, and its head's input
# features (1000 classes): the backbones of the table have no head.
# ResT: the authors' checkpoints (ResT paper, Table 1); ResT v2-T: the v2
# paper; ResNet-50: torchvision's 25.557 M; Swin-T: 28.29 M (Swin paper,
# timm); PVT-Small: 24.5 M (PVT paper, one decimal only).
CLASSIFIERS = {
    'rest_lite': (10.51, 512),
    'rest_small': (13.68, 512),
    'rest_base': (30.33, 768),
    'rest_large': (51.68, 768),
    'restv2_tiny': (30.43, 768),
    'resnet50': (25.557, 2048),
    'swin_t': (28.29, 768),
    'pvt_small': (24.5, 512),
}
# the last block's drop-path rate: the detection configs' (ResT: 0.1, 0.1,
# 0.2, 0.2; ResT v2: the authors' 3x config; Swin-T: mmdet's Mask R-CNN;
# PVT-Small: mmdet's RetinaNet, the class's default); ResNet-50 has none
DROP_PATH = dict(
    rest_lite=0.1,
    rest_small=0.1,
    rest_base=0.2,
    rest_large=0.2,
    restv2_tiny=0.1,
    swin_t=0.2,
    pvt_small=0.1)


@pytest.mark.parametrize('name', sorted(CLASSIFIERS))
def test_each_compared_backbone_is_the_network_it_names(name):
    """The table compares the networks its rows name: each backbone has
    its classifier's published parameters less the classification head (to
    0.01 M; PVT-Small's 24.5 M is published to 0.1 M) and the detection
    recipe's stochastic depth, frozen stages and outputs; the literal form
    is the same network."""
    published, features = CLASSIFIERS[name]
    head = (features * 1000 + 1000) / 1e6  # ImageNet's 1000 classes
    model = build_backbone(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(
        published - head, abs=0.05 if name == 'pvt_small' else 0.01)
    rates = [
        m.drop_prob for m in model.modules() if type(m).__name__ == 'DropPath'
    ]
    assert max(rates, default=0.) == pytest.approx(DROP_PATH.get(name, 0.))
    # mmdet's Mask R-CNN R-50 freezes the stem and the first stage
    frozen = {
        key.split('.')[0]
        for key, p in model.named_parameters() if not p.requires_grad
    }
    assert frozen == ({'conv1', 'bn1', 'layer1'}
                      if name == 'resnet50' else set())
    with torch.no_grad():  # four maps for an FPN, at strides 4 to 32
        outs = model(torch.zeros(1, 3, 64, 96))
    assert [out.shape[-2:] for out in outs] == [(16, 24), (8, 12), (4, 6),
                                                (2, 3)]
    model.train()
    if name == 'resnet50':  # its BatchNorms stay in eval mode (norm_eval)
        norms = [
            m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        assert norms and not any(m.training for m in norms)
    if name == 'swin_t':  # the recipe's patch_norm
        assert isinstance(model.patch_embed.norm, torch.nn.LayerNorm)
    if f'{name}_literal' in BACKBONES:
        literal = build_backbone(f'{name}_literal')
        assert sum(p.numel() for p in literal.parameters()) == \
            sum(p.numel() for p in model.parameters())


def _refuse_opening(monkeypatch, refused: str, error: type) -> None:
    """``open`` raises ``error`` for the path ``refused`` only."""
    import builtins
    real_open = builtins.open

    def fake(path, *args, **kwargs):
        if str(path) == refused:
            raise error(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, 'open', fake)


def test_peak_rss_reset_lowers_the_high_water_mark(monkeypatch):
    """Reset, the kernel's peak RSS of the process is its current RSS (a
    freed 300 MiB block no longer counts); refused, it says so."""
    from mmrest_tools.benchmark import (_peak_rss_bytes, _reset_peak_rss,
                                        _rss_bytes)
    block = bytearray(300 * 2**20)
    block[::4096] = b'\x01' * len(block[::4096])  # touch every page
    del block
    before = _peak_rss_bytes()
    if not os.access('/proc/self/clear_refs', os.W_OK):
        pytest.skip('no writable /proc/self/clear_refs here')
    assert _reset_peak_rss() is True
    assert before - _peak_rss_bytes() > 200 * 2**20
    assert _peak_rss_bytes() <= _rss_bytes() + 50 * 2**20
    _refuse_opening(monkeypatch, '/proc/self/clear_refs', PermissionError)
    assert _reset_peak_rss() is False


def test_memory_child_that_fails_or_says_nothing_is_an_error(monkeypatch):
    """The fresh process's result counts only when it exits with 0 and
    prints it: a failure after printing, or silence, is an error that
    quotes the end of its output."""
    from mmrest_tools import benchmark

    def child(code, out, err=''):
        monkeypatch.setattr(
            subprocess, 'run',
            lambda cmd, **kw: subprocess.CompletedProcess(cmd, code, out, err))
        return benchmark.train_step_peak_memory('rest_lite')

    assert child(1, '{"peak_rss": 1}\n',
                 'Killed') == dict(error='exit status 1: Killed')
    assert child(0, '') == dict(error='exit status 0: ')
    assert child(0, 'no result\n') == dict(error='exit status 0: no result')
    assert child(0, 'log\n{"peak_rss": 7}\n') == dict(peak_rss=7)


def test_report_helpers(monkeypatch, tmp_path):
    """The CPU's name falls back to the machine type; a ratio needs both
    figures (a variant measured without its literal form has none); the
    JSON report overwrites an earlier one in an existing folder; the
    memory child refuses other arguments."""
    import json
    import platform

    from mmrest_tools import benchmark
    monkeypatch.setattr(platform, 'processor', lambda: '')
    monkeypatch.setattr(platform, 'machine', lambda: 'x86_64')
    _refuse_opening(monkeypatch, '/proc/cpuinfo', OSError)
    assert benchmark.machine_info(2)['cpu'] == 'x86_64'
    rows = [dict(model='rest_lite', s_per_img_800x1344=2.0)]
    assert benchmark.compare(rows) == {}
    path = tmp_path / 'out' / 'bench.json'
    for value in (1, 2):
        benchmark.write_json(dict(value=value), str(path))
    assert json.loads(path.read_text()) == dict(value=2)
    for argv in (['train-memory',
                  'rest_lite'], ['memory', 'rest_lite', '64x64', '1']):
        with pytest.raises(SystemExit, match='usage'):
            benchmark._main(argv)


def test_run_reports_every_figure_and_ratio(monkeypatch, tmp_path):
    """The whole report at tiny sizes: speeds, memory from a fresh process,
    the ratios against the literal form and ResNet-50, the Markdown table
    and the JSON file."""
    import json

    from mmrest_tools import benchmark
    monkeypatch.setattr(benchmark, 'SIZE_224', (64, 64))
    monkeypatch.setattr(benchmark, 'BATCH_224', 2)
    monkeypatch.setattr(benchmark, 'SIZE_800', (64, 96))
    names = ['rest_lite', 'rest_lite_literal', 'resnet50']
    timed = CallCounter(monkeypatch, benchmark, 'time_interleaved', True)
    child = CallCounter(monkeypatch, benchmark, 'train_step_peak_memory', True)
    start = time.perf_counter()
    report = benchmark.run(
        names,
        repeats=2,
        threads=1,
        memory_names=['rest_lite', 'rest_lite_literal'],
        log=lambda line: None,
        repeats_224=3)
    elapsed = time.perf_counter() - start
    shapes = [tuple(args[1]) for args, _ in timed.calls]
    children = {
        args[0]: result
        for (args, _), result in zip(child.calls, child.results)
    }
    rows = {row['model']: row for row in report['rows']}
    assert list(rows) == names
    for row in rows.values():
        assert len(row['seconds_224_b16']) == 3
        assert len(row['seconds_800x1344']) == 2
        assert row['img_per_s_224_b16'] > 0 and row['s_per_img_800x1344'] > 0
        # each timed pass is a part of the whole run
        assert all(0 < t < elapsed
                   for t in row['seconds_224_b16'] + row['seconds_800x1344'])
        # the figures from the timings: a batch of 2, one image
        assert row['img_per_s_224_b16'] == pytest.approx(
            2 / statistics.median(row['seconds_224_b16']))
        assert row['s_per_img_800x1344'] == pytest.approx(
            statistics.median(row['seconds_800x1344']))
    assert shapes == [(2, 3, 64, 64), (1, 3, 64, 96)]
    assert rows['rest_lite']['params_M'] == \
        rows['rest_lite_literal']['params_M']
    assert rows['rest_lite']['train_peak_MB_800x1344'] > 0
    for name, child in children.items():  # the child's bytes, in MiB
        assert rows[name]['train_peak_MB_800x1344'] == \
            child['peak_increase'] / 2**20
    assert sorted(children) == ['rest_lite', 'rest_lite_literal']
    assert 0 < report['seconds'] <= elapsed + 0.05
    assert report['settings']['batch_800'] == shapes[1][0] == 1
    assert 'train_peak_MB_800x1344' not in rows['resnet50']
    ratios = report['comparisons']['rest_lite']
    lite, lit = rows['rest_lite'], rows['rest_lite_literal']
    assert ratios['speedup_800x1344_vs_literal'] == pytest.approx(
        lit['s_per_img_800x1344'] / lite['s_per_img_800x1344'])
    assert ratios['train_memory_vs_literal'] == pytest.approx(
        lite['train_peak_MB_800x1344'] / lit['train_peak_MB_800x1344'])
    assert set(ratios) == {
        'speedup_800x1344_vs_literal', 'speedup_224_b16_vs_literal',
        'train_memory_vs_literal', 'time_800x1344_vs_resnet50'
    }
    table = benchmark.format_table(report)
    assert table.count('\n| rest_lite') == 2 and '| resnet50 |' in table
    assert '| - |' in table  # ResNet-50's memory was not measured
    assert '3 rounds at 224x224, 2 at 800x1344' in table
    path = tmp_path / 'bench' / 'report.json'
    benchmark.write_json(report, str(path))
    assert json.loads(path.read_text())['rows'][0]['model'] == 'rest_lite'


def test_unknown_backbone_is_named_before_measuring():
    from mmrest_tools import benchmark
    with pytest.raises(KeyError, match='swin_b'):
        benchmark.run(['rest_lite', 'swin_b'], log=lambda line: None)


def test_training_memory_is_the_childs_own():
    """The child's peak is its own, not its parent's: a 1.5 GB parent and a
    tiny training step (getrusage's ru_maxrss would report the parent's
    size, since it survives execve)."""
    import numpy as np

    from mmrest_tools.benchmark import train_step_peak_memory
    ballast = np.ones(3 * 2**26)  # 1.5 GB, every page touched
    result = train_step_peak_memory('rest_lite', size=(64, 96), threads=1)
    assert 'error' not in result, result
    # peak_reset: whether /proc/self/clear_refs let the child reset its
    # high-water mark (some kernels refuse); either way the mark is its own
    assert result['malloc_mmap_threshold'] == '65536'
    assert 0 < result['peak_increase'] < 300 * 2**20
    assert result['peak_rss'] < ballast.nbytes


def test_training_memory_is_one_image_of_the_size(monkeypatch):
    """The memory figure is of one training step on one image of the size
    asked for, after a warm-up step; its increase is over the RSS before
    the step (measured here, in this process, for the shapes only)."""
    from mmrest_tools import benchmark
    steps = CallCounter(monkeypatch, benchmark, '_training_step', True)
    threads = torch.get_num_threads()
    try:
        result = benchmark.train_step_peak_memory_here(
            'rest_lite', size=(32, 48), threads=1)
    finally:
        torch.set_num_threads(threads)
    shapes = [tuple(args[1].shape) for args, _ in steps.calls]
    assert len(shapes) == 2 and shapes[-1] == (1, 3, 32, 48)
    assert result['size'] == [32, 48]
    assert result['peak_increase'] == \
        result['peak_rss'] - result['baseline_rss']
