"""Graphs: a trace, an ONNX export or a torch.compile graph made at one input
size gives the eager outputs at any other size."""
import os
import re
from pathlib import Path

import pytest
import torch
from _helpers import (ROOT, assert_float32_close, assert_gradients_close,
                      float64_literal, golden_model, load_tool, stage_depths)

from mmrest.backbones import to_literal
from mmrest.utils import torch_compat

GOLDEN = Path(__file__).resolve().parent / 'data' / 'rest_v1_tiny_golden.pt'
TINY = dict(embed_dims=[16, 32, 64, 128])  # the golden model's widths
SIZES = [(96, 128), (64, 96), (97, 131), (33, 47)]  # the first is traced


def tiny_model():
    """The tiny ResT of the reference data with the authors' non-trivial
    weights (random initialisation makes every attention map nearly
    uniform, which hides errors in the normalisation)."""
    return golden_model(torch.load(GOLDEN, weights_only=True)).eval()


def assert_matches_float64(outs, model, x):
    """Float32 outputs of a graph as accurate as float32 allows: against the
    float64 literal model, within the bound of the literal float32 error."""
    with torch.no_grad():
        reference = float64_literal(model)(x.double())
        literal = to_literal(model)(x)
    assert len(outs) == len(reference)
    for i, (a, b, c, depth) in enumerate(
            zip(outs, literal, reference, stage_depths(model))):
        assert tuple(a.shape) == tuple(c.shape), f'stage {i + 1}'
        assert_float32_close(a, b, c, depth=depth, name=f'stage {i + 1}')


def test_a_trace_holds_at_every_size():
    model = tiny_model()
    with torch.no_grad():
        traced = torch.jit.trace(
            model, torch.randn(1, 3, *SIZES[0]), check_trace=False)
    for size in SIZES:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert_matches_float64(traced(x), model, x)


#: The exporters this torch has (the dynamo one needs torch >= 2.5; before,
#: asking for it is the error of test_dynamo_exporter_needs_torch_2_5).
EXPORTERS = [
    'torchscript',
    pytest.param(
        'dynamo',
        marks=pytest.mark.skipif(
            not torch_compat.ONNX_EXPORT_HAS_DYNAMO,
            reason='torch < 2.5: no torch.onnx.export(dynamo=True)'))
]


@pytest.mark.parametrize('exporter', EXPORTERS)
def test_onnx_export_runs_in_onnxruntime_at_other_sizes(exporter, tmp_path):
    from mmrest.onnx_export import check_onnx, export_onnx, onnx_matches
    model = tiny_model()
    path = str(tmp_path / 'rest.onnx')
    assert export_onnx(model, path, SIZES[0],
                       exporter) == ['out0', 'out1', 'out2', 'out3']
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for size in SIZES:
        x = torch.randn(2, 3, *size)
        outs = session.run(None, {'input': x.numpy()})
        assert_matches_float64([torch.from_numpy(o) for o in outs], model, x)
    errors = check_onnx(path, model, SIZES[1:2])  # the tool's own check
    assert list(errors) == ['{}x{}'.format(*SIZES[1])]
    errs = errors['{}x{}'.format(*SIZES[1])]
    assert len(errs) == 4 and all(onnx_matches(*e) for e in errs)


def test_check_onnx_reports_both_errors_against_float64(tmp_path):
    """check_onnx's figures, recomputed here on its input (one image, the
    model's channels, drawn after the same seed): for each output, the
    relative error ||y - y64|| / ||y64|| of onnxruntime's output and of
    the eager literal float32 path, both against the model in float64."""
    import onnxruntime as ort

    from mmrest.backbones import kernels
    from mmrest.onnx_export import check_onnx, export_onnx
    model = tiny_model()
    path = str(tmp_path / 'rest.onnx')
    export_onnx(model, path, SIZES[0])
    h, w = SIZES[3]
    torch.manual_seed(5)
    errors = check_onnx(path, model, [(h, w)])[f'{h}x{w}']
    torch.manual_seed(5)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        with kernels.literal():
            eager = model(x)
        exact = to_literal(model).double()(x.double())
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    outs = session.run(None, {'input': x.numpy()})
    assert len(errors) == 4
    for (err_onnx, err_eager), got, mine, ref in zip(errors, outs, eager,
                                                     exact):
        norm = float(ref.norm())
        assert err_onnx == pytest.approx(
            float((torch.from_numpy(got).double() - ref).norm()) / norm,
            rel=1e-6)
        assert err_eager == pytest.approx(
            float((mine.double() - ref).norm()) / norm, rel=1e-6)
        assert 0 < err_eager < 1e-4  # a float32 error


@pytest.mark.parametrize('opset', [11, 17])
def test_onnx_export_with_sdpa_written_out(monkeypatch, tmp_path, opset):
    """The one-head attention's SDPA (an explicit scale) is written out
    while exporting (torch's SDPA with a scale fails in torch 2.1's
    exporter and before opset 14, mmdeploy's ONNX Runtime opset): at
    opset 11 and 17 the ONNX graph gives the eager accuracy, and eager
    calls still use the fused SDPA."""
    import onnxruntime  # noqa: F401 (installed by the set-up)
    import torch.nn.functional as F

    from mmrest.onnx_export import export_onnx
    model = tiny_model()
    exporting = []  # for each fused SDPA call: whether ONNX export ran
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, 'scaled_dot_product_attention', lambda *a, **k: exporting.append(
            torch.onnx.is_in_onnx_export()) or sdpa(*a, **k))
    path = str(tmp_path / 'rest.onnx')
    export_onnx(model, path, SIZES[0], opset_version=opset)
    # the eager run that counts the outputs used the fused kernel; the
    # export wrote the formula out
    assert exporting and not any(exporting)
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    x = torch.randn(2, 3, *SIZES[1])
    outs = session.run(None, {'input': x.numpy()})
    assert_matches_float64([torch.from_numpy(o) for o in outs], model, x)


def test_dynamo_exporter_needs_torch_2_5(monkeypatch, tmp_path):
    """Without torch.onnx.export(dynamo=...) (torch < 2.5), the dynamo
    exporter is an error naming the torch it needs and the exporter that
    works, before anything is exported."""
    from mmrest.onnx_export import export_onnx
    monkeypatch.setattr(torch_compat, 'ONNX_EXPORT_HAS_DYNAMO', False)
    called = []
    monkeypatch.setattr(torch.onnx, 'export', lambda *a, **k: called.append(k))
    with pytest.raises(
            RuntimeError, match=r"dynamo=True.*torch >= 2\.5.*torchscript"):
        export_onnx(tiny_model(), str(tmp_path / 'x.onnx'), (64, 96), 'dynamo')
    assert not called


@pytest.mark.parametrize('shape', [(64, ), (64, 96, 3), (0, 96), (64, -1)])
def test_export_refuses_a_bad_shape_before_exporting(monkeypatch, tmp_path,
                                                     shape):
    from mmrest.onnx_export import export_onnx
    called = []
    monkeypatch.setattr(torch.onnx, 'export', lambda *a, **k: called.append(k))
    with pytest.raises(ValueError, match=r'shape must be \(height, width\)'):
        export_onnx(tiny_model(), str(tmp_path / 'x.onnx'), shape)
    assert not called


@pytest.mark.parametrize('has_dynamo', [True, False])
def test_torchscript_export_passes_dynamo_only_where_torch_has_it(
        monkeypatch, tmp_path, has_dynamo):
    """torch >= 2.5 gets dynamo=False (its default is the dynamo exporter
    since 2.9); an older torch, whose export has no such argument, none."""
    from mmrest.onnx_export import export_onnx
    monkeypatch.setattr(torch_compat, 'ONNX_EXPORT_HAS_DYNAMO', has_dynamo)
    called = []
    monkeypatch.setattr(torch.onnx, 'export', lambda *a, **k: called.append(k))
    export_onnx(tiny_model(), str(tmp_path / 'x.onnx'), (64, 96))
    assert len(called) == 1
    assert called[0].get('dynamo',
                         'absent') == (False if has_dynamo else 'absent')


def test_export_tool_backbone_and_neck(tmp_path, capsys):
    out = tmp_path / 'lite_fpn.onnx'
    code = load_tool('export_onnx').main([
        str(ROOT / 'configs/retinanet/retinanet_rest-lite_fpn_1x_coco.py'),
        '--with-neck', '--out',
        str(out), '--shape', '128', '160', '--check', '96x128', '65x97'
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert out.is_file()
    assert '65x97' in printed and 'matches' in printed


@pytest.mark.parametrize('text, expected', [('1x1', (1, 1)),
                                            ('97X131', (97, 131))])
def test_export_tool_reads_a_size(text, expected):
    assert load_tool('export_onnx').size(text) == expected


@pytest.mark.parametrize('text', ['0x5', '5x0', '-3x4', '320', '3x4x5', 'ax4'])
def test_export_tool_refuses_a_bad_size(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        load_tool('export_onnx').size(text)


@pytest.mark.parametrize('shape', [['0', '96'], ['64', '-1']])
def test_export_tool_refuses_a_bad_shape(capsys, shape):
    tool = load_tool('export_onnx')
    with pytest.raises(SystemExit) as e:
        tool.parse_args(['config.py', '--shape', *shape])
    assert e.value.code == 2
    assert '--shape must be positive' in capsys.readouterr().err
    assert tool.parse_args(['config.py', '--shape', '1', '1']).shape == [1, 1]


def test_export_tool_fails_when_one_output_at_one_size_differs(
        monkeypatch, capsys):
    """The verdict over every output and size: one error above the bar
    (4 x the eager error + 1e-5) fails the command and is marked; the
    errors here are written out, the export itself is tested above."""
    tool = load_tool('export_onnx')
    monkeypatch.setattr(tool, 'build_feature_extractor', lambda *a: None)
    monkeypatch.setattr(tool, 'export_onnx', lambda *a: ['out0', 'out1'])
    checked = {}

    def check_onnx(path, model, sizes):
        checked['sizes'] = sizes
        return {
            '64x96': [(1e-6, 1e-6), (2e-6, 1e-6)],
            '32x48': [(3e-6, 1e-6), (4 * 1e-6 + 1e-5 + 1e-7, 1e-6)],
        }

    monkeypatch.setattr(tool, 'check_onnx', check_onnx)
    args = ['config.py', '--shape', '64', '96', '--check', '32x48']
    assert tool.main(args) == 1
    assert checked['sizes'] == [(64, 96), (32, 48)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith('onnxruntime DIFFERS FROM PyTorch')
    assert '(!)' not in lines[1] and lines[2].count('(!)') == 1
    assert lines[2].endswith('1.4e-05/1.0e-06 (!)')
    # at the bar itself it passes
    monkeypatch.setattr(tool, 'check_onnx',
                        lambda *a: {'64x96': [(4 * 1e-6 + 1e-5, 1e-6)]})
    assert tool.main(args) == 0
    assert 'onnxruntime matches PyTorch' in capsys.readouterr().out


def test_compile_has_no_graph_break():
    explanation = torch._dynamo.explain(tiny_model())(
        torch.randn(1, 3, 64, 96))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_graph_holds_at_other_sizes():
    """Dynamic shapes through dynamo and AOTAutograd (the ``aot_eager``
    backend: Inductor's C++ compilation takes minutes on two cores; ``make
    bench`` runs Inductor)."""
    model = tiny_model()
    compiled = torch.compile(model, backend='aot_eager', dynamic=True)
    for size in SIZES[1:]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert_matches_float64(compiled(x), model, x)


def test_inductor_gives_the_eager_outputs():
    model = tiny_model()
    compiled = torch.compile(model, dynamic=False)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        assert_matches_float64(compiled(x), model, x)


INDUCTOR_TRAINING = pytest.param(
    'inductor',
    marks=pytest.mark.skipif(
        not os.environ.get('MMREST_INDUCTOR_TRAINING'),
        reason='Inductor compiles the forward and backward graphs to C++: '
        '5 to 20 minutes on two cores; set MMREST_INDUCTOR_TRAINING=1'))


@pytest.mark.parametrize('backend', ['aot_eager', INDUCTOR_TRAINING])
def test_compiled_training_step_matches_eager(backend):
    """Outputs and every parameter's gradient of a compiled training step,
    against the float64 literal model (the bar of the eager tests).
    ``aot_eager`` with dynamic shapes, in every run; Inductor (the default
    backend) at one static size, when ``MMREST_INDUCTOR_TRAINING`` is set
    (docs/testing.md lists its runs)."""
    model = tiny_model().train()
    literal = to_literal(model)
    reference = float64_literal(model)
    dynamic = backend == 'aot_eager'
    compiled = torch.compile(model, backend=backend, dynamic=dynamic)
    x = torch.randn(2, 3, 64, 96)
    g = [
        torch.randn(2, c, *s)
        for c, s in zip(TINY['embed_dims'], [(16, 24), (8, 12), (4, 6), (2,
                                                                         3)])
    ]
    results = []
    for m, inp in ((compiled, x), (literal, x), (reference, x.double())):
        outs = m(inp)
        sum((o * gi.to(o.dtype)).sum() for o, gi in zip(outs, g)).backward()
        results.append([o.detach() for o in outs])
    for i, (a, b, c, depth) in enumerate(zip(*results, stage_depths(model))):
        assert_float32_close(a, b, c, depth=depth, name=f'stage {i + 1}')
    assert_gradients_close(
        model, literal, reference, depth=sum(stage_depths(model)))


def test_onnx_matches_compares_with_the_eager_error():
    from mmrest.onnx_export import onnx_matches
    assert onnx_matches(4e-4, 1e-4)  # 4x the eager error
    assert onnx_matches(1e-5, 0.)  # the floor
    assert not onnx_matches(5e-4, 1e-4)
    assert not onnx_matches(0.5, 1e-6)  # a wrong graph


def test_export_tool_defaults_are_the_documented_ones(capsys):
    """The sizes exported and checked without --shape / --check are those
    docs/precision_and_export.md and --help name."""
    tool = load_tool('export_onnx')
    args = tool.parse_args(['config.py'])
    docs = ' '.join(
        (ROOT / 'docs/precision_and_export.md').read_text().split())
    stated = re.search(
        r'Without `--shape` it exports at (\d+) (\d+), and '
        r'without `--check` it checks ([\dx ]+?) \(', docs)
    assert stated, 'the sentence on the defaults is gone from the docs'
    assert args.shape == [int(stated[1]), int(stated[2])]
    assert args.check == [tool.size(t) for t in stated[3].split()]
    with pytest.raises(SystemExit):
        tool.parse_args(['--help'])
    helped = ' '.join(capsys.readouterr().out.split())
    assert f'(default: {stated[1]} {stated[2]})' in helped
    assert f'(default: {stated[3]}:' in helped
